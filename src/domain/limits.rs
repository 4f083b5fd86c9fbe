//! Budget and rate-limit specifications: what an admin configured, validated once at the edge.
//! Usage counters live beside them in the engine, so changing a spec keeps the usage.

use jiff::tz::TimeZone;

use super::duration::ResetDuration;
use super::money::Money;
use super::patch::Patch;
use super::time::Micros;
use super::window::WindowRule;

/// A validation failure, naming the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct LimitError {
    pub field: &'static str,
    pub message: String,
}

impl LimitError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        LimitError {
            field,
            message: message.into(),
        }
    }
}

/// An IANA time zone, with the name it was given by.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeZoneName {
    name: String,
    tz: TimeZone,
}

impl TimeZoneName {
    pub fn utc() -> Self {
        TimeZoneName {
            name: "UTC".to_owned(),
            tz: TimeZone::UTC,
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!("unknown time zone '{name}'"));
        }
        TimeZone::get(name)
            .map(|tz| TimeZoneName {
                name: name.to_owned(),
                tz,
            })
            .map_err(|_| format!("unknown time zone '{name}'"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

fn parse_max(usd: f64) -> Result<Money, LimitError> {
    let max = Money::from_usd(usd).map_err(|e| LimitError::new("max_limit", e.to_string()))?;
    if max == Money::ZERO {
        return Err(LimitError::new("max_limit", "must be greater than 0"));
    }
    Ok(max)
}

/// A dollar budget per window.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    pub max: Money,
    pub duration: ResetDuration,
    pub calendar_aligned: bool,
    pub timezone: TimeZoneName,
}

impl BudgetSpec {
    /// Validates a budget as given by an admin.
    pub fn new(
        max_limit_usd: f64,
        reset_duration: &str,
        calendar_aligned: bool,
        timezone: Option<&str>,
    ) -> Result<Self, LimitError> {
        let max = parse_max(max_limit_usd)?;
        let duration = ResetDuration::parse(reset_duration)
            .map_err(|e| LimitError::new("reset_duration", e.to_string()))?;
        let timezone = match timezone {
            Some(name) => TimeZoneName::parse(name).map_err(|m| LimitError::new("timezone", m))?,
            None => TimeZoneName::utc(),
        };
        let spec = BudgetSpec {
            max,
            duration,
            calendar_aligned,
            timezone,
        };
        spec.check_alignment()?;
        Ok(spec)
    }

    /// This budget with the fields that are `Some` replaced, validated as a whole.
    pub fn patched(
        &self,
        max_limit_usd: Option<f64>,
        reset_duration: Option<&str>,
        calendar_aligned: Option<bool>,
        timezone: Option<&str>,
    ) -> Result<Self, LimitError> {
        let mut next = self.clone();
        if let Some(usd) = max_limit_usd {
            next.max = parse_max(usd)?;
        }
        if let Some(text) = reset_duration {
            next.duration = ResetDuration::parse(text)
                .map_err(|e| LimitError::new("reset_duration", e.to_string()))?;
        }
        if let Some(aligned) = calendar_aligned {
            next.calendar_aligned = aligned;
        }
        if let Some(name) = timezone {
            next.timezone =
                TimeZoneName::parse(name).map_err(|m| LimitError::new("timezone", m))?;
        }
        next.check_alignment()?;
        Ok(next)
    }

    fn check_alignment(&self) -> Result<(), LimitError> {
        if self.calendar_aligned && self.duration.calendar().is_none() {
            return Err(LimitError::new(
                "reset_duration",
                format!(
                    "calendar alignment needs a whole number of days, weeks, months or years \
                     (d, w, M, Y), not '{}'",
                    self.duration
                ),
            ));
        }
        Ok(())
    }

    /// The window layout; `created` anchors calendar periods.
    pub fn window_rule(&self, created: Micros) -> WindowRule {
        if self.calendar_aligned {
            if let Some(rule) = WindowRule::calendar(&self.duration, self.timezone.tz(), created) {
                return rule;
            }
        }
        WindowRule::rolling(&self.duration)
    }
}

/// One dimension (tokens or requests) of a rate limit. A max needs a duration; a duration
/// without a max is kept (and shown) but limits nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DimensionSpec {
    pub max: Option<i64>,
    pub duration: Option<ResetDuration>,
}

impl DimensionSpec {
    pub fn new(
        max: Option<i64>,
        duration: Option<&str>,
        max_field: &'static str,
        duration_field: &'static str,
    ) -> Result<Self, LimitError> {
        if let Some(max) = max {
            if max <= 0 {
                return Err(LimitError::new(max_field, "must be greater than 0"));
            }
        }
        let duration = duration
            .map(|d| {
                ResetDuration::parse(d).map_err(|e| LimitError::new(duration_field, e.to_string()))
            })
            .transpose()?;
        if max.is_some() && duration.is_none() {
            return Err(LimitError::new(
                duration_field,
                format!("is required when {max_field} is set"),
            ));
        }
        Ok(DimensionSpec { max, duration })
    }

    pub fn window_rule(&self) -> Option<WindowRule> {
        self.duration.as_ref().map(WindowRule::rolling)
    }
}

/// Token and request limits per window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitSpec {
    pub tokens: DimensionSpec,
    pub requests: DimensionSpec,
}

impl RateLimitSpec {
    pub fn new(
        token_max: Option<i64>,
        token_duration: Option<&str>,
        request_max: Option<i64>,
        request_duration: Option<&str>,
    ) -> Result<Self, LimitError> {
        Ok(RateLimitSpec {
            tokens: DimensionSpec::new(
                token_max,
                token_duration,
                "token_max_limit",
                "token_reset_duration",
            )?,
            requests: DimensionSpec::new(
                request_max,
                request_duration,
                "request_max_limit",
                "request_reset_duration",
            )?,
        })
    }
}

impl RateLimitSpec {
    /// This rate limit with each field changed as its patch says (`Null` clears), validated as
    /// a whole.
    pub fn patched(
        &self,
        token_max: Patch<i64>,
        token_duration: Patch<String>,
        request_max: Patch<i64>,
        request_duration: Patch<String>,
    ) -> Result<Self, LimitError> {
        let text = |d: &Option<ResetDuration>| d.as_ref().map(|d| d.as_str().to_owned());
        let token_duration = token_duration.apply(text(&self.tokens.duration));
        let request_duration = request_duration.apply(text(&self.requests.duration));
        RateLimitSpec::new(
            token_max.apply(self.tokens.max),
            token_duration.as_deref(),
            request_max.apply(self.requests.max),
            request_duration.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_needs_a_positive_max_and_a_valid_duration() {
        assert!(BudgetSpec::new(10.0, "1M", false, None).is_ok());
        let err = BudgetSpec::new(0.0, "1M", false, None).unwrap_err();
        assert_eq!(err.field, "max_limit");
        assert_eq!(
            BudgetSpec::new(-1.0, "1M", false, None).unwrap_err().field,
            "max_limit"
        );
        let err = BudgetSpec::new(10.0, "1q", false, None).unwrap_err();
        assert_eq!(err.to_string(), "reset_duration: unknown unit 'q' in '1q'");
    }

    #[test]
    fn calendar_alignment_only_for_calendar_units() {
        assert!(BudgetSpec::new(10.0, "1d", true, None).is_ok());
        assert!(BudgetSpec::new(10.0, "2w", true, Some("Europe/Paris")).is_ok());
        assert_eq!(
            BudgetSpec::new(10.0, "1h", true, None).unwrap_err().field,
            "reset_duration"
        );
    }

    #[test]
    fn time_zones_must_be_iana_names() {
        assert!(BudgetSpec::new(10.0, "1d", true, Some("America/New_York")).is_ok());
        assert_eq!(
            BudgetSpec::new(10.0, "1d", true, Some("Mars/Olympus"))
                .unwrap_err()
                .field,
            "timezone"
        );
    }

    #[test]
    fn a_rate_limit_max_needs_its_duration() {
        assert!(RateLimitSpec::new(Some(100), Some("1m"), None, None).is_ok());
        let err = RateLimitSpec::new(Some(100), None, None, None).unwrap_err();
        assert_eq!(err.field, "token_reset_duration");
        let err = RateLimitSpec::new(None, None, Some(0), Some("1m")).unwrap_err();
        assert_eq!(err.field, "request_max_limit");
    }
}

#[cfg(test)]
mod patch_tests {
    use super::*;

    #[test]
    fn patching_a_budget_keeps_absent_fields_and_revalidates() {
        let spec = BudgetSpec::new(10.0, "1d", true, Some("Europe/Paris")).unwrap();
        let next = spec.patched(Some(20.0), None, None, None).unwrap();
        assert_eq!(next.max, Money::from_usd(20.0).unwrap());
        assert_eq!(next.duration.as_str(), "1d");
        assert_eq!(next.timezone.name(), "Europe/Paris");
        assert_eq!(
            spec.patched(None, Some("1h"), None, None)
                .unwrap_err()
                .field,
            "reset_duration"
        );
        assert!(spec.patched(None, Some("1h"), Some(false), None).is_ok());
    }

    #[test]
    fn patching_a_rate_limit_clears_on_null_and_keeps_on_absent() {
        let spec = RateLimitSpec::new(Some(100), Some("1m"), Some(5), Some("1h")).unwrap();
        let next = spec
            .patched(Patch::Null, Patch::Null, Patch::Value(7), Patch::Absent)
            .unwrap();
        assert_eq!(next.tokens, DimensionSpec::default());
        assert_eq!(next.requests.max, Some(7));
        assert_eq!(next.requests.duration.as_ref().unwrap().as_str(), "1h");
        let err = spec
            .patched(Patch::Absent, Patch::Null, Patch::Absent, Patch::Absent)
            .unwrap_err();
        assert_eq!(err.field, "token_reset_duration");
    }
}
