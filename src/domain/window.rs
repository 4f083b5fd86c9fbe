//! Windows: when a budget or rate-limit window ends and where the next one starts. This is the
//! one expiry rule that the check path, the usage path, the admin views and the worker
//! all share.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use super::duration::{CalendarUnit, ResetDuration};
use super::time::Micros;

/// How the windows of one counter are laid out in time.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowRule {
    /// Back-to-back windows of a fixed length, the first starting at the first `last_reset`.
    Rolling { micros: i64 },
    /// Calendar periods of `n` units in a time zone, counted from the period that contains
    /// `anchor` (the budget's creation).
    Calendar {
        n: u32,
        unit: CalendarUnit,
        tz: TimeZone,
        anchor: Date,
    },
}

impl WindowRule {
    pub fn rolling(duration: &ResetDuration) -> Self {
        WindowRule::Rolling {
            micros: duration.micros(),
        }
    }

    /// A calendar rule; `None` when the duration is not a whole calendar unit.
    pub fn calendar(duration: &ResetDuration, tz: &TimeZone, created: Micros) -> Option<Self> {
        let (n, unit) = duration.calendar()?;
        let created = to_date(created, tz);
        Some(WindowRule::Calendar {
            n,
            unit,
            tz: tz.clone(),
            anchor: period_start(created, unit),
        })
    }

    /// The end (exclusive) of the window that starts at `start`.
    pub fn end_of(&self, start: Micros) -> Micros {
        match self {
            WindowRule::Rolling { micros } => start.saturating_add(*micros),
            WindowRule::Calendar {
                n,
                unit,
                tz,
                anchor,
            } => {
                let k = period_number(*anchor, *unit, *n, to_date(start, tz));
                boundary(*anchor, *unit, tz, (k + 1) * i64::from(*n))
            }
        }
    }

    /// If the window that starts at `start` has ended at `now`, the start of the window that
    /// contains `now`: rolling windows advance by whole multiples of their length (no drift
    /// from when the reset happens to run), calendar windows snap to their period.
    pub fn roll(&self, start: Micros, now: Micros) -> Option<Micros> {
        if now < self.end_of(start) {
            return None;
        }
        Some(match self {
            WindowRule::Rolling { micros } => start + (now - start) / micros * micros,
            WindowRule::Calendar {
                n,
                unit,
                tz,
                anchor,
            } => {
                let k = period_number(*anchor, *unit, *n, to_date(now, tz));
                boundary(*anchor, *unit, tz, k * i64::from(*n))
            }
        })
    }
}

fn to_date(us: Micros, tz: &TimeZone) -> Date {
    Timestamp::from_microsecond(us)
        .unwrap_or(Timestamp::MAX)
        .to_zoned(tz.clone())
        .date()
}

/// The first day of the calendar period that contains `date`.
fn period_start(date: Date, unit: CalendarUnit) -> Date {
    match unit {
        CalendarUnit::Day => date,
        CalendarUnit::Week => date
            .checked_sub(Span::new().days(i64::from(date.weekday().to_monday_zero_offset())))
            .unwrap_or(date),
        CalendarUnit::Month => date.first_of_month(),
        CalendarUnit::Year => date.first_of_year(),
    }
}

/// How many whole `unit`s lie between the anchor period and the period that contains `date`,
/// rounded down to a multiple of `n` and divided by it: the index of `date`'s window.
fn period_number(anchor: Date, unit: CalendarUnit, n: u32, date: Date) -> i64 {
    let units = match unit {
        CalendarUnit::Day => days_between(anchor, date),
        CalendarUnit::Week => days_between(anchor, period_start(date, unit)) / 7,
        CalendarUnit::Month => {
            (i64::from(date.year()) - i64::from(anchor.year())) * 12
                + (i64::from(date.month()) - i64::from(anchor.month()))
        }
        CalendarUnit::Year => i64::from(date.year()) - i64::from(anchor.year()),
    };
    units.div_euclid(i64::from(n))
}

fn days_between(from: Date, to: Date) -> i64 {
    from.until(to).map(|s| i64::from(s.get_days())).unwrap_or(0)
}

/// The instant at which the period `units` units after the anchor begins (local midnight).
fn boundary(anchor: Date, unit: CalendarUnit, tz: &TimeZone, units: i64) -> Micros {
    let span = match unit {
        CalendarUnit::Day => Span::new().try_days(units),
        CalendarUnit::Week => Span::new().try_weeks(units),
        CalendarUnit::Month => Span::new().try_months(units),
        CalendarUnit::Year => Span::new().try_years(units),
    };
    span.and_then(|span| anchor.checked_add(span))
        .and_then(|date| date.to_zoned(tz.clone()))
        .map(|z| z.timestamp().as_microsecond())
        .unwrap_or(Timestamp::MAX.as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::parse_rfc3339;

    fn at(s: &str) -> Micros {
        parse_rfc3339(s).unwrap()
    }

    fn calendar(d: &str, tz: &str, created: &str) -> WindowRule {
        let tz = TimeZone::get(tz).unwrap();
        WindowRule::calendar(&ResetDuration::parse(d).unwrap(), &tz, at(created)).unwrap()
    }

    #[test]
    fn rolling_windows_advance_by_whole_multiples_without_drift() {
        let rule = WindowRule::rolling(&ResetDuration::parse("1m").unwrap());
        let start = at("2026-01-01T00:00:00Z");
        assert_eq!(rule.roll(start, at("2026-01-01T00:00:59Z")), None);
        assert_eq!(
            rule.roll(start, at("2026-01-01T00:02:30Z")),
            Some(at("2026-01-01T00:02:00Z"))
        );
        assert_eq!(rule.end_of(start), at("2026-01-01T00:01:00Z"));
    }

    #[test]
    fn an_expired_window_is_detected_at_its_exact_end() {
        let rule = WindowRule::rolling(&ResetDuration::parse("1m").unwrap());
        let start = at("2026-01-01T00:00:00Z");
        assert_eq!(
            rule.roll(start, at("2026-01-01T00:01:00Z")),
            Some(at("2026-01-01T00:01:00Z"))
        );
    }

    #[test]
    fn monthly_calendar_windows_use_real_month_lengths() {
        let rule = calendar("1M", "UTC", "2026-01-15T10:00:00Z");
        let jan = at("2026-01-15T10:00:00Z");
        assert_eq!(rule.end_of(jan), at("2026-02-01T00:00:00Z"));
        assert_eq!(
            rule.end_of(at("2026-02-01T00:00:00Z")),
            at("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            rule.roll(jan, at("2026-03-10T00:00:00Z")),
            Some(at("2026-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn every_n_months_counts_from_the_creation_period() {
        let rule = calendar("3M", "UTC", "2026-02-20T00:00:00Z");
        // Windows: Feb–Apr, May–Jul, Aug–Oct.
        assert_eq!(
            rule.end_of(at("2026-02-20T00:00:00Z")),
            at("2026-05-01T00:00:00Z")
        );
        assert_eq!(
            rule.roll(at("2026-02-20T00:00:00Z"), at("2026-09-15T00:00:00Z")),
            Some(at("2026-08-01T00:00:00Z"))
        );
    }

    #[test]
    fn calendar_days_start_at_local_midnight_across_dst() {
        let rule = calendar("1d", "Europe/Berlin", "2026-03-28T12:00:00Z");
        // 29 March 2026 is 23 hours long in Berlin.
        assert_eq!(
            rule.end_of(at("2026-03-28T12:00:00Z")),
            at("2026-03-28T23:00:00Z")
        );
        assert_eq!(
            rule.end_of(at("2026-03-28T23:00:00Z")),
            at("2026-03-29T22:00:00Z")
        );
    }

    #[test]
    fn weeks_start_on_monday_and_years_on_january_first() {
        let week = calendar("1w", "UTC", "2026-11-26T08:00:00Z"); // a Thursday
        assert_eq!(
            week.end_of(at("2026-11-26T08:00:00Z")),
            at("2026-11-30T00:00:00Z")
        );
        let year = calendar("1Y", "UTC", "2026-11-26T08:00:00Z");
        assert_eq!(
            year.end_of(at("2026-11-26T08:00:00Z")),
            at("2027-01-01T00:00:00Z")
        );
    }
}
