//! The in-memory governance state: entities with their limits, and the usage counters that the
//! hot path bumps. Pure and synchronous: no HTTP, no SQL, `now` passed in.

pub mod capture;
pub mod check;
pub mod counter;
pub mod decision;
pub mod dedup;
pub mod delta;
pub mod dirty;
pub mod entities;
pub mod holds;
pub mod level;
pub mod reserve;
pub mod rollup;
pub mod store;
pub mod trend;
pub mod usage;
pub mod watch;

pub use counter::{Counter, CounterView};
pub use entities::{
    Budget, Customer, Limits, ModelConfig, Prices, Provider, ProviderConfig, RateLimit, Team, User,
    VirtualKey,
};
pub use store::{ResolvedKey, Snapshot, Store};

#[cfg(test)]
mod tests;
