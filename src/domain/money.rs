//! Exact money: integer nano-dollars, converted from and to JSON USD numbers only at the edge.

use std::fmt;

/// Nano-dollars per dollar.
const NANOS_PER_USD: f64 = 1e9;
/// The largest amount accepted from a client (one trillion dollars): far above any real budget,
/// far below `i64::MAX` nano-dollars, so sums of many such amounts cannot overflow silently.
const MAX_USD: f64 = 1e12;

/// An amount of money in nano-dollars. Sums are exact: a million additions of $0.000001 give
/// exactly $1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a finite number")]
    NotFinite,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {MAX_USD} dollars")]
    TooLarge,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Money(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Parses a USD amount as sent by a client, rounded to the nearest nano-dollar.
    pub fn from_usd(usd: f64) -> Result<Self, MoneyError> {
        if !usd.is_finite() {
            return Err(MoneyError::NotFinite);
        }
        if usd < 0.0 {
            return Err(MoneyError::Negative);
        }
        if usd > MAX_USD {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money((usd * NANOS_PER_USD).round() as i64))
    }

    pub fn to_usd(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD
    }
}

impl fmt::Display for Money {
    /// Four decimals, as in decision messages (`10.0000`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.4}", self.to_usd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_micro_dollars_make_exactly_one_dollar() {
        let micro = Money::from_usd(0.000001).unwrap();
        let total: i64 = (0..1_000_000).map(|_| micro.nanos()).sum();
        assert_eq!(Money::from_nanos(total), Money::from_usd(1.0).unwrap());
        assert_eq!(Money::from_nanos(total).to_usd(), 1.0);
    }

    #[test]
    fn rejects_negative_infinite_and_huge_amounts() {
        assert_eq!(Money::from_usd(-0.01), Err(MoneyError::Negative));
        assert_eq!(Money::from_usd(f64::NAN), Err(MoneyError::NotFinite));
        assert_eq!(Money::from_usd(f64::INFINITY), Err(MoneyError::NotFinite));
        assert_eq!(Money::from_usd(1e13), Err(MoneyError::TooLarge));
    }

    #[test]
    fn displays_four_decimals() {
        assert_eq!(Money::from_usd(10.0).unwrap().to_string(), "10.0000");
        assert_eq!(Money::from_usd(99.99).unwrap().to_string(), "99.9900");
    }
}
