//! Reset durations (`docs/semantics.md`): `30s`, `5m`, `1h30m`, `1d`, `2w`, `1M`, `1Y`, `daily`, … .
//! Case matters: `m` is a minute, `M` a month. Rolling windows count a month as 30 days and a
//! year as 365 days; calendar windows use the calendar unit itself.

use std::fmt;

use super::time::MICROS_PER_SECOND;

const SECOND: i64 = MICROS_PER_SECOND;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// Longer windows than this are certainly a typo (and would overflow instant arithmetic).
const MAX_MICROS: i64 = 1000 * 365 * DAY;

/// The calendar units a calendar-aligned budget may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarUnit {
    Day,
    Week,
    Month,
    Year,
}

/// A validated reset duration. Keeps the text the admin gave, so it is shown back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetDuration {
    text: String,
    micros: i64,
    calendar: Option<(u32, CalendarUnit)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty")]
    Empty,
    #[error("expected a number before '{unit}' in '{text}'")]
    MissingNumber { unit: char, text: String },
    #[error("missing unit after '{number}' in '{text}' (use s, m, h, d, w, M or Y)")]
    MissingUnit { number: String, text: String },
    #[error("unknown unit '{unit}' in '{text}'")]
    UnknownUnit { unit: char, text: String },
    #[error("duration must be greater than zero: '{0}'")]
    Zero(String),
    #[error("duration is too long: '{0}'")]
    TooLong(String),
}

impl ResetDuration {
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let canonical = match text {
            "daily" => "1d",
            "weekly" => "1w",
            "monthly" => "1M",
            "yearly" => "1Y",
            other => other,
        };
        if canonical.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut total: f64 = 0.0;
        let mut parts: Vec<(f64, char)> = Vec::new();
        let mut rest = canonical;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (number, tail) = rest.split_at(digits);
            let Some(unit) = tail.chars().next() else {
                return Err(DurationError::MissingUnit {
                    number: number.to_owned(),
                    text: text.to_owned(),
                });
            };
            if number.is_empty() {
                return Err(DurationError::MissingNumber {
                    unit,
                    text: text.to_owned(),
                });
            }
            let value: f64 = number.parse().map_err(|_| DurationError::MissingNumber {
                unit,
                text: text.to_owned(),
            })?;
            let unit_micros = match unit {
                's' => SECOND,
                'm' => MINUTE,
                'h' => HOUR,
                'd' => DAY,
                'w' => 7 * DAY,
                'M' => 30 * DAY,
                'Y' => 365 * DAY,
                other => {
                    return Err(DurationError::UnknownUnit {
                        unit: other,
                        text: text.to_owned(),
                    })
                }
            };
            total += value * unit_micros as f64;
            parts.push((value, unit));
            rest = &tail[unit.len_utf8()..];
        }
        if !total.is_finite() || total > MAX_MICROS as f64 {
            return Err(DurationError::TooLong(text.to_owned()));
        }
        let micros = total.round() as i64;
        if micros <= 0 {
            return Err(DurationError::Zero(text.to_owned()));
        }
        let calendar = match parts.as_slice() {
            [(n, unit)] if n.fract() == 0.0 && *n >= 1.0 && *n <= u32::MAX as f64 => {
                let unit = match unit {
                    'd' => Some(CalendarUnit::Day),
                    'w' => Some(CalendarUnit::Week),
                    'M' => Some(CalendarUnit::Month),
                    'Y' => Some(CalendarUnit::Year),
                    _ => None,
                };
                unit.map(|u| (*n as u32, u))
            }
            _ => None,
        };
        Ok(ResetDuration {
            text: text.to_owned(),
            micros,
            calendar,
        })
    }

    /// The text as the admin gave it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The rolling length (a month is 30 days, a year 365).
    pub fn micros(&self) -> i64 {
        self.micros
    }

    /// `Some((n, unit))` when the duration is a whole number of one calendar unit (`1d`, `3M`),
    /// the only durations a calendar-aligned budget may use.
    pub fn calendar(&self) -> Option<(u32, CalendarUnit)> {
        self.calendar
    }
}

impl fmt::Display for ResetDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(s: &str) -> i64 {
        ResetDuration::parse(s).unwrap().micros()
    }

    #[test]
    fn parses_every_unit_and_compounds() {
        assert_eq!(micros("30s"), 30 * SECOND);
        assert_eq!(micros("1m"), MINUTE);
        assert_eq!(micros("1h30m"), HOUR + 30 * MINUTE);
        assert_eq!(micros("1d"), DAY);
        assert_eq!(micros("2w"), 14 * DAY);
        assert_eq!(micros("1M"), 30 * DAY);
        assert_eq!(micros("1Y"), 365 * DAY);
        assert_eq!(micros("1.5h"), 90 * MINUTE);
    }

    #[test]
    fn aliases_mean_one_unit_and_keep_their_text() {
        let d = ResetDuration::parse("monthly").unwrap();
        assert_eq!(d.micros(), 30 * DAY);
        assert_eq!(d.as_str(), "monthly");
        assert_eq!(d.calendar(), Some((1, CalendarUnit::Month)));
        assert_eq!(micros("daily"), DAY);
        assert_eq!(micros("weekly"), 7 * DAY);
        assert_eq!(micros("yearly"), 365 * DAY);
    }

    #[test]
    fn case_matters_between_minutes_and_months() {
        assert_ne!(micros("1m"), micros("1M"));
        assert!(ResetDuration::parse("1D").is_err());
    }

    #[test]
    fn rejects_bad_durations_naming_the_value() {
        let err = ResetDuration::parse("1q").unwrap_err();
        assert_eq!(err.to_string(), "unknown unit 'q' in '1q'");
        for bad in [
            "", "0", "0s", "1", "h", "-1h", "1D", "1 h", "1h-", "1e3s", "1..2s",
        ] {
            assert!(
                ResetDuration::parse(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
        assert!(ResetDuration::parse("0")
            .unwrap_err()
            .to_string()
            .contains("'0'"));
        assert!(matches!(
            ResetDuration::parse("99999999Y"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn only_single_whole_calendar_units_can_align() {
        assert_eq!(
            ResetDuration::parse("3M").unwrap().calendar(),
            Some((3, CalendarUnit::Month))
        );
        assert_eq!(ResetDuration::parse("1h").unwrap().calendar(), None);
        assert_eq!(ResetDuration::parse("1d12h").unwrap().calendar(), None);
        assert_eq!(ResetDuration::parse("1.5d").unwrap().calendar(), None);
    }
}
