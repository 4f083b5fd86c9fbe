//! Instants as integer microseconds since the Unix epoch, and their RFC 3339 form.

use serde::Serializer;

/// Microseconds since 1970-01-01T00:00:00Z. Integers keep window arithmetic exact and make
/// instants cheap to keep in atomics and portable across both database backends.
pub type Micros = i64;

pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// The current instant. Only the edges (handlers, the worker) call this; the engine takes `now`.
pub fn now_micros() -> Micros {
    jiff::Timestamp::now().as_microsecond()
}

/// RFC 3339 in UTC, e.g. `2026-12-01T00:00:00Z`.
pub fn rfc3339(us: Micros) -> String {
    match jiff::Timestamp::from_microsecond(us) {
        Ok(ts) => ts.to_string(),
        Err(_) => jiff::Timestamp::MAX.to_string(),
    }
}

/// Parses an RFC 3339 instant (any offset) into microseconds.
pub fn parse_rfc3339(s: &str) -> Option<Micros> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_microsecond())
}

/// serde helper: serialize a `Micros` field as RFC 3339.
pub fn serialize_rfc3339<S: Serializer>(us: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*us))
}

/// serde helper: serialize an optional `Micros` field as RFC 3339 or null.
pub fn serialize_opt_rfc3339<S: Serializer>(us: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => s.serialize_str(&rfc3339(*us)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_rfc3339_in_utc() {
        let us = parse_rfc3339("2026-12-01T01:00:00+01:00").unwrap();
        assert_eq!(rfc3339(us), "2026-12-01T00:00:00Z");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
