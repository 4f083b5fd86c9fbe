//! What a `ShouldRateLimit` call asks, read from its descriptors: whose limits to check
//! (`virtual_key`, `provider`, `model`, `user_id`), how many requests to charge (the hits) and
//! what tokens the call carries (`input_tokens`, `output_tokens`, `tokens`). An entry
//! `unit: tokens` makes the descriptor a usage report: it charges no request, and its tokens
//! are its token entries or, without any, its hits. Unknown entry keys are ignored.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::http::check::MAX_STRING;

/// Most descriptors one call may carry.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 64;

/// One descriptor, read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject<'a> {
    pub virtual_key: Option<&'a str>,
    pub provider: &'a str,
    pub model: &'a str,
    pub user_id: Option<&'a str>,
    /// Requests to charge when the call is allowed.
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Tokens to charge, allowed or not (usage that already happened).
    pub tokens: i64,
}

fn text<'a>(d: usize, key: &str, value: &'a str) -> Result<&'a str, String> {
    if value.len() > MAX_STRING {
        return Err(format!(
            "descriptor {d}: {key}: must be at most {MAX_STRING} bytes"
        ));
    }
    if value.contains('\0') {
        return Err(format!("descriptor {d}: {key}: must not contain NUL"));
    }
    Ok(value)
}

fn count(d: usize, key: &str, value: &str) -> Result<i64, String> {
    let value = value.trim();
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0 && !value.starts_with('+'))
        .ok_or_else(|| {
            format!(
                "descriptor {d}: {key}: expected a decimal integer >= 0, got '{}'",
                value.chars().take(32).collect::<String>()
            )
        })
}

fn subject(d: usize, desc: &RateLimitDescriptor, default_hits: u64) -> Result<Subject<'_>, String> {
    if desc.entries.len() > MAX_ENTRIES {
        return Err(format!(
            "descriptor {d}: at most {MAX_ENTRIES} entries, got {}",
            desc.entries.len()
        ));
    }
    if desc.is_negative_hits {
        return Err(format!("descriptor {d}: negative hits are not supported"));
    }
    let mut s = Subject::default();
    let (mut tokens, mut unit_tokens) = (None, false);
    for e in &desc.entries {
        match e.key.as_str() {
            "virtual_key" => s.virtual_key = Some(text(d, &e.key, &e.value)?),
            "provider" => s.provider = text(d, &e.key, &e.value)?,
            "model" => s.model = text(d, &e.key, &e.value)?,
            "user_id" => s.user_id = Some(text(d, &e.key, &e.value)?),
            "input_tokens" => s.input_tokens = count(d, &e.key, &e.value)?,
            "output_tokens" => s.output_tokens = count(d, &e.key, &e.value)?,
            "tokens" => tokens = Some(count(d, &e.key, &e.value)?),
            "unit" => match e.value.as_str() {
                "tokens" => unit_tokens = true,
                "requests" => unit_tokens = false,
                other => {
                    return Err(format!(
                        "descriptor {d}: unit: expected 'requests' or 'tokens', got '{}'",
                        other.chars().take(32).collect::<String>()
                    ))
                }
            },
            _ => {}
        }
    }
    let hits = desc.hits_addend.map_or(default_hits, |h| h.value);
    let hits = i64::try_from(hits).map_err(|_| format!("descriptor {d}: hits too large"))?;
    let counted = match tokens {
        Some(t) => t,
        None => s
            .input_tokens
            .checked_add(s.output_tokens)
            .ok_or_else(|| format!("descriptor {d}: token counts too large"))?,
    };
    if unit_tokens {
        // A usage report: no request; the tokens are the entries' counts, else the hits
        // (Envoy's hits_addend format can carry a count from the response's metadata).
        let has_counts = tokens.is_some() || s.input_tokens > 0 || s.output_tokens > 0;
        s.tokens = if has_counts { counted } else { hits };
    } else {
        s.tokens = counted;
        s.requests = hits;
    }
    Ok(s)
}

/// Reads every descriptor of a call; an error names the descriptor and the entry.
pub fn subjects(req: &RateLimitRequest) -> Result<Vec<Subject<'_>>, String> {
    if req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(format!(
            "at most {MAX_DESCRIPTORS} descriptors, got {}",
            req.descriptors.len()
        ));
    }
    // As in Envoy's proto: an unset (0) request hits_addend means 1.
    let default_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    req.descriptors
        .iter()
        .enumerate()
        .map(|(d, desc)| subject(d, desc, default_hits))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::UInt64Value;

    fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
            hits_addend: hits.map(|value| UInt64Value { value }),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "heimdall".to_owned(),
            descriptors,
            hits_addend: hits,
        }
    }

    #[test]
    fn hits_come_from_the_descriptor_else_the_request_where_zero_means_one() {
        let r = request(
            vec![
                descriptor(&[("virtual_key", "sk-1"), ("other", "x")], None),
                descriptor(&[("model", "gpt-4o")], Some(0)),
                descriptor(&[("provider", "openai")], Some(7)),
            ],
            0,
        );
        let s = subjects(&r).unwrap();
        assert_eq!(s[0].virtual_key, Some("sk-1"));
        assert_eq!((s[0].requests, s[1].requests, s[2].requests), (1, 0, 7));
        let r = request(vec![descriptor(&[], None)], 3);
        assert_eq!(subjects(&r).unwrap()[0].requests, 3);
    }

    #[test]
    fn token_entries_are_usage_and_unit_tokens_makes_hits_tokens() {
        let r = request(
            vec![
                descriptor(&[("input_tokens", "12"), ("output_tokens", "30")], Some(0)),
                descriptor(&[("tokens", "100"), ("input_tokens", "1")], Some(0)),
                descriptor(&[("unit", "tokens")], Some(42)),
                descriptor(
                    &[
                        ("unit", "tokens"),
                        ("input_tokens", "5"),
                        ("output_tokens", "7"),
                    ],
                    None,
                ),
            ],
            0,
        );
        let s = subjects(&r).unwrap();
        assert_eq!(
            (s[0].input_tokens, s[0].output_tokens, s[0].tokens),
            (12, 30, 42)
        );
        assert_eq!(s[1].tokens, 100);
        assert_eq!((s[2].tokens, s[2].requests), (42, 0));
        // Envoy cannot send 0 hits: a usage report's hits (1 here) are not a request.
        assert_eq!((s[3].tokens, s[3].requests), (12, 0));
    }

    #[test]
    fn bad_descriptors_are_named() {
        for (entries, expected) in [
            (vec![("input_tokens", "-1")], "descriptor 0: input_tokens"),
            (vec![("tokens", "1e3")], "descriptor 0: tokens"),
            (
                vec![("output_tokens", "99999999999999999999")],
                "output_tokens",
            ),
            (vec![("unit", "dollars")], "unit"),
            (vec![("model", "a\0b")], "NUL"),
        ] {
            let err = subjects(&request(vec![descriptor(&entries, None)], 0)).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let long = "x".repeat(MAX_STRING + 1);
        let r = request(vec![descriptor(&[("virtual_key", &long)], None)], 0);
        assert!(subjects(&r).unwrap_err().contains("at most"));
        let many = vec![descriptor(&[], None); MAX_DESCRIPTORS + 1];
        assert!(subjects(&request(many, 0)).is_err());
        let mut negative = descriptor(&[], None);
        negative.is_negative_hits = true;
        assert!(subjects(&request(vec![negative], 0)).is_err());
    }
}
