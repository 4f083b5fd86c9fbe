//! Domain types of governance: money, durations and windows, limit specifications, validated
//! inputs. Pure: no HTTP, no SQL, no clock (time is passed in).

pub mod backend;
pub mod duration;
pub mod limits;
pub mod money;
pub mod patch;
pub mod time;
pub mod window;

pub use backend::Backend;
pub use duration::{CalendarUnit, DurationError, ResetDuration};
pub use limits::{BudgetSpec, LimitError, RateLimitSpec, TimeZoneName};
pub use money::Money;
pub use patch::Patch;
pub use time::Micros;
pub use window::WindowRule;
