//! A field of a partial update: absent (keep), `null` (clear) or a value (set) — the PUT
//! semantics of the admin API (`docs/semantics.md`).

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Patch<T> {
    /// The field was not in the body: keep what is there.
    #[default]
    Absent,
    /// The field was `null`: clear it.
    Null,
    /// The field was given: set it.
    Value(T),
}

impl<T> Patch<T> {
    /// The value after applying this patch to `current`.
    pub fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Absent => current,
            Patch::Null => None,
            Patch::Value(v) => Some(v),
        }
    }

    pub fn as_ref(&self) -> Patch<&T> {
        match self {
            Patch::Absent => Patch::Absent,
            Patch::Null => Patch::Null,
            Patch::Value(v) => Patch::Value(v),
        }
    }
}

impl<T> From<Option<T>> for Patch<T> {
    /// A create body: a missing or `null` field means "none".
    fn from(value: Option<T>) -> Self {
        value.map_or(Patch::Null, Patch::Value)
    }
}

/// Used with `#[serde(default)]`, so that a missing field stays `Absent`.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(Patch::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        team_id: Patch<String>,
    }

    #[test]
    fn tells_absent_from_null_from_value() {
        let absent: Body = serde_json::from_str("{}").unwrap();
        let null: Body = serde_json::from_str(r#"{"team_id": null}"#).unwrap();
        let value: Body = serde_json::from_str(r#"{"team_id": "t"}"#).unwrap();
        assert_eq!(absent.team_id, Patch::Absent);
        assert_eq!(null.team_id, Patch::Null);
        assert_eq!(value.team_id, Patch::Value("t".to_owned()));
        assert_eq!(Patch::<i32>::Absent.apply(Some(1)), Some(1));
        assert_eq!(Patch::<i32>::Null.apply(Some(1)), None);
    }
}
