//! Where a limit sits in the governance hierarchy, and what it counts.

use serde::Serialize;

/// The level of a limit, in the order checks visit them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Provider,
    Model,
    User,
    ProviderConfig,
    VirtualKey,
    Team,
    Customer,
}

impl Level {
    /// The name used in decision messages, as Bifrost's messages name it (`VK budget exceeded`).
    pub fn label(self) -> &'static str {
        match self {
            Level::Provider => "Provider",
            Level::Model => "Model",
            Level::User => "User",
            Level::ProviderConfig => "Provider config",
            Level::VirtualKey => "VK",
            Level::Team => "Team",
            Level::Customer => "Customer",
        }
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Dollars (counted in nano-dollars).
    Budget,
    Tokens,
    Requests,
}

impl LimitKind {
    /// The name the API and the alerts use (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Budget => "budget",
            LimitKind::Tokens => "tokens",
            LimitKind::Requests => "requests",
        }
    }
}
