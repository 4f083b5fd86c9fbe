//! The in-memory governance state: entities with their limits, and the usage counters that the
//! hot path bumps. Pure and synchronous: no HTTP, no SQL, `now` passed in.

pub mod counter;
pub mod entities;
pub mod store;

pub use counter::{Counter, CounterView};
pub use entities::{
    Budget, Customer, Limits, ModelConfig, Provider, ProviderConfig, RateLimit, Team, User,
    VirtualKey,
};
pub use store::{Snapshot, Store};
