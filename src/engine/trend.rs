//! The recent rate of a counter and the forecast it gives: when, at that rate, the limit runs
//! out.
//!
//! The rate is an exponentially decayed sum of what the counter grew by, kept with the counter
//! and fed by the worker once per tick (never by the hot path): each growth `d` observed at `t`
//! adds `d` to a sum that decays by `e^(-Δt/τ)`, with `τ` = one hour. The rate is that sum over
//! the time it covers, `τ·(1 - e^(-span/τ))` (`span` at least five minutes), so a counter
//! observed for only ten minutes is not under-estimated, nor a burst in its first seconds
//! read as thousands per hour. It follows the last hour or so, whatever the window (a monthly budget
//! spent quickly today shows today's pace), it costs a few words per counter, and it needs no
//! query: rollups would be exact per hour but cost a database read per admin view.
//!
//! Time is always passed in (`now`), so the arithmetic is tested with a made-up clock.

use crate::domain::Micros;

/// The decay constant: usage older than this weighs `1/e` of new usage.
pub const TAU: Micros = 3_600 * 1_000_000;

/// The shortest time a rate is averaged over: a burst in the first seconds after a start is
/// not read as thousands per hour.
pub const MIN_SPAN: Micros = 5 * 60 * 1_000_000;

/// No growth for this long: the counter is idle and has no forecast.
pub const IDLE_AFTER: Micros = TAU;

const HOUR: f64 = 3_600.0 * 1_000_000.0;

/// What the worker last saw of a counter, and the decayed sum of its growth.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Trend {
    /// First observation (0: never observed).
    since: Micros,
    /// Last observation.
    at: Micros,
    /// The counter's usage and window start at the last observation.
    used: i64,
    start: Micros,
    /// Decayed sum of growth, as of `at`.
    sum: f64,
    /// Last observation that saw growth (0: none yet).
    grew_at: Micros,
    /// `used` and `start` are a known baseline although nothing was observed yet.
    primed: bool,
}

impl Trend {
    /// A trend whose counter had `used` in the window that started at `start` when it was
    /// made (loaded or created): growth from there on counts from the first observation.
    pub fn from(used: i64, start: Micros) -> Trend {
        Trend {
            used,
            start,
            primed: true,
            ..Trend::default()
        }
    }

    /// Takes in the counter's `used` in the window that started at `start`, seen at `now`.
    /// Without a baseline the first observation only sets one: what was used before is not a
    /// rate. A new window counts its whole usage as growth; usage that fell within a window
    /// (an admin reset) counts as none.
    pub fn observe(&mut self, used: i64, start: Micros, now: Micros) {
        if self.since == 0 {
            let baseline = *self;
            *self = Trend {
                since: now,
                at: now,
                used: baseline.used,
                start: baseline.start,
                ..Trend::default()
            };
            if !baseline.primed {
                self.used = used;
                self.start = start;
                return;
            }
        }
        let grew = if start != self.start {
            used.max(0)
        } else {
            (used - self.used).max(0)
        };
        let now = now.max(self.at);
        self.sum = self.sum * decay(now - self.at) + grew as f64;
        self.at = now;
        self.used = used;
        self.start = start;
        if grew > 0 {
            self.grew_at = now;
        }
    }

    /// Whether `used` in the window that started at `start` is what the last observation
    /// saw (nothing to take in).
    pub fn unchanged(&self, used: i64, start: Micros) -> bool {
        (self.since != 0 || self.primed) && self.used == used && self.start == start
    }

    /// Units per hour at `now`; `None` when the counter has not grown within [`IDLE_AFTER`].
    pub fn rate_per_hour(&self, now: Micros) -> Option<f64> {
        if self.grew_at == 0 || now - self.grew_at > IDLE_AFTER {
            return None;
        }
        let tau = TAU as f64;
        let sum = self.sum * decay(now - self.at);
        let span = (now - self.since).max(MIN_SPAN) as f64;
        let covered = tau * (1.0 - (-span / tau).exp());
        Some(sum / covered * HOUR)
    }
}

fn decay(elapsed: Micros) -> f64 {
    (-(elapsed.max(0) as f64) / TAU as f64).exp()
}

/// Where a limit is heading at the recent rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Units (dollars, tokens or requests) per hour.
    pub rate_per_hour: f64,
    /// When the limit runs out at that rate; `None` when the window resets first.
    pub exhausted_at: Option<Micros>,
}

impl Forecast {
    /// The forecast of a limit of `max` with `used` (holds included) in a window ending at
    /// `resets_at`; `None` when idle. A limit already used up is exhausted `now`.
    pub fn of(trend: &Trend, used: f64, max: f64, resets_at: Micros, now: Micros) -> Option<Self> {
        let rate = trend.rate_per_hour(now)?;
        let exhausted_at = if used >= max {
            Some(now)
        } else if rate <= 0.0 {
            None
        } else {
            let hours = (max - used) / rate;
            let at = now as f64 + hours * HOUR;
            (at < resets_at as f64).then_some(at as Micros)
        };
        Some(Forecast {
            rate_per_hour: rate,
            exhausted_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Micros = 60 * 1_000_000;
    const T0: Micros = 1_800_000_000 * 1_000_000;

    #[test]
    fn a_steady_rate_is_measured_from_the_first_minutes_on() {
        let mut t = Trend::default();
        t.observe(500, T0, T0);
        // 10 per minute for ten minutes: 600 per hour.
        for m in 1..=10 {
            t.observe(500 + 10 * m, T0, T0 + m * MIN);
        }
        let rate = t.rate_per_hour(T0 + 10 * MIN).unwrap();
        assert!((rate - 600.0).abs() < 20.0, "{rate}");
    }

    #[test]
    fn the_baseline_is_not_a_rate_and_idle_counters_have_none() {
        let mut t = Trend::default();
        t.observe(1_000, T0, T0);
        assert_eq!(t.rate_per_hour(T0 + MIN), None);
        t.observe(1_000, T0, T0 + MIN);
        assert_eq!(t.rate_per_hour(T0 + MIN), None);
        t.observe(1_060, T0, T0 + 2 * MIN);
        assert!(t.rate_per_hour(T0 + 2 * MIN).is_some());
        assert!(t.rate_per_hour(T0 + 2 * MIN + IDLE_AFTER).is_some());
        assert_eq!(t.rate_per_hour(T0 + 2 * MIN + IDLE_AFTER + 1), None);
    }

    #[test]
    fn a_counter_made_with_a_baseline_counts_its_first_growth() {
        let mut t = Trend::from(100, T0);
        assert!(t.unchanged(100, T0));
        t.observe(160, T0, T0 + MIN);
        let rate = t.rate_per_hour(T0 + MIN).unwrap();
        // 60 over (about) five minutes.
        assert!((rate - 750.0).abs() < 10.0, "{rate}");
    }

    #[test]
    fn a_burst_right_after_the_start_is_averaged_over_five_minutes() {
        let mut t = Trend::default();
        t.observe(0, T0, T0);
        t.observe(10, T0, T0 + 1_000_000);
        let rate = t.rate_per_hour(T0 + 2_000_000).unwrap();
        // 10 over (the decayed weight of) five minutes: about 125 per hour, not 18 000.
        assert!((rate - 125.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn the_rate_follows_the_last_hour_not_the_window() {
        let mut t = Trend::default();
        t.observe(0, T0, T0);
        // A fast first hour, then a slow one: the rate comes down toward the slow pace.
        for m in 1..=60 {
            t.observe(100 * m, T0, T0 + m * MIN);
        }
        let fast = t.rate_per_hour(T0 + 60 * MIN).unwrap();
        for m in 61..=240 {
            t.observe(6_000 + (m - 60), T0, T0 + m * MIN);
        }
        let slow = t.rate_per_hour(T0 + 240 * MIN).unwrap();
        assert!((fast - 6_000.0).abs() < 100.0, "{fast}");
        assert!(slow < 400.0, "{slow}");
    }

    #[test]
    fn a_new_window_counts_its_usage_and_a_reset_counts_nothing() {
        let mut t = Trend::default();
        t.observe(900, T0, T0);
        t.observe(30, T0 + MIN, T0 + MIN);
        let after_roll = t.sum;
        assert_eq!(after_roll, 30.0);
        t.observe(0, T0 + MIN, T0 + 2 * MIN);
        assert!(t.sum <= after_roll);
        assert!(t.unchanged(0, T0 + MIN));
        assert!(!t.unchanged(1, T0 + MIN));
    }

    #[test]
    fn the_forecast_says_when_the_limit_runs_out_before_the_reset() {
        let mut t = Trend::default();
        t.observe(0, T0, T0);
        for m in 1..=30 {
            t.observe(m, T0, T0 + m * MIN);
        }
        let now = T0 + 30 * MIN;
        let rate = t.rate_per_hour(now).unwrap();
        // 30 used of 60 at about 60 per hour: out in about half an hour.
        let f = Forecast::of(&t, 30.0, 60.0, now + 10 * 60 * MIN, now).unwrap();
        let minutes = (f.exhausted_at.unwrap() - now) as f64 / MIN as f64;
        assert!((f.rate_per_hour - rate).abs() < 1e-9);
        assert!((minutes - 30.0).abs() < 2.0, "{minutes}");
        // The window resets first.
        let f = Forecast::of(&t, 30.0, 60.0, now + 10 * MIN, now).unwrap();
        assert_eq!(f.exhausted_at, None);
        // Already used up.
        let f = Forecast::of(&t, 60.0, 60.0, now + 10 * MIN, now).unwrap();
        assert_eq!(f.exhausted_at, Some(now));
        // Idle: no forecast at all.
        assert_eq!(
            Forecast::of(&t, 30.0, 60.0, now, now + 2 * IDLE_AFTER),
            None
        );
    }
}
