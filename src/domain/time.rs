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

/// RFC 3339 in UTC, e.g. `2026-12-01T00:00:00Z` or `2026-11-28T13:40:16.855659Z`
/// (microseconds only when there are any).
pub fn rfc3339(us: Micros) -> String {
    let mut buf = [0u8; 27];
    let len = write_rfc3339(us, &mut buf);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Formats into `buf` without allocating (the check path formats many instants per request)
/// and returns the length. Instants are clamped to years 0000–9999.
pub fn write_rfc3339(us: Micros, buf: &mut [u8; 27]) -> usize {
    const MIN: i64 = -62_167_219_200_000_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let us = us.clamp(MIN, MAX);
    let secs = us.div_euclid(MICROS_PER_SECOND);
    let micros = us.rem_euclid(MICROS_PER_SECOND);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    if micros != 0 {
        put(20, micros, 6);
    }
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    if micros == 0 {
        buf[19] = b'Z';
        20
    } else {
        buf[19] = b'.';
        buf[26] = b'Z';
        27
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
    let mut buf = [0u8; 27];
    let len = write_rfc3339(*us, &mut buf);
    s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or("invalid"))
}

/// serde helper: serialize an optional `Micros` field as RFC 3339 or null.
pub fn serialize_opt_rfc3339<S: Serializer>(us: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => serialize_rfc3339(us, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_jiff_across_the_calendar() {
        for us in [
            0,
            1,
            -1,
            951_782_400_000_000,    // 2000-02-29
            1_798_761_599_999_999,  // 2026-12-31T23:59:59.999999
            4_107_542_400_123_456,  // 2100-03-01
            -2_208_988_800_000_000, // 1900-01-01
        ] {
            let ts = jiff::Timestamp::from_microsecond(us).unwrap();
            let expected = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string()
                + &if us.rem_euclid(1_000_000) == 0 {
                    "Z".to_owned()
                } else {
                    format!(".{:06}Z", us.rem_euclid(1_000_000))
                };
            assert_eq!(rfc3339(us), expected);
            assert_eq!(parse_rfc3339(&rfc3339(us)), Some(us));
        }
    }

    #[test]
    fn formats_and_parses_rfc3339_in_utc() {
        let us = parse_rfc3339("2026-12-01T01:00:00+01:00").unwrap();
        assert_eq!(rfc3339(us), "2026-12-01T00:00:00Z");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
