//! The decision's JSON, written by hand for the hot path.

use serde::Serialize;
use uuid::Uuid;

use super::{Amount, DecisionBody};
use crate::domain::time::write_rfc3339;
use crate::engine::check::{Decision, EntityRef};
use crate::engine::level::Level;

/// Writes `d` as the JSON of `DecisionBody`, by hand: this body is the largest the hot path
/// sends (one entry per evaluated limit), and writing it directly is several times faster
/// than serde's field-by-field serialisation. A test keeps the two identical.
pub fn write_decision(d: &Decision<'_>, out: &mut Vec<u8>) {
    fn text(out: &mut Vec<u8>, s: &str) {
        // serde_json escapes arbitrary strings; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
    fn opt_text(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => text(out, s),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn uuid(out: &mut Vec<u8>, id: Option<Uuid>) {
        match id {
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(
                    id.hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer())
                        .as_bytes(),
                );
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    fn number<T: Serialize>(out: &mut Vec<u8>, n: T) {
        let _ = serde_json::to_writer(&mut *out, &n);
    }
    fn amount_json(out: &mut Vec<u8>, a: Amount) {
        match a {
            Amount::Usd(v) => number(out, v),
            Amount::Count(n) => number(out, n),
        }
    }
    let body = DecisionBody::new(d);
    out.extend_from_slice(if body.allowed {
        b"{\"allowed\":true"
    } else {
        b"{\"allowed\":false"
    });
    out.extend_from_slice(b",\"decision\":");
    text(out, body.decision);
    out.extend_from_slice(b",\"status_code\":");
    number(out, body.status_code);
    out.extend_from_slice(b",\"message\":");
    text(out, body.message);
    out.extend_from_slice(b",\"virtual_key_id\":");
    uuid(out, body.virtual_key_id);
    out.extend_from_slice(b",\"virtual_key_name\":");
    opt_text(out, body.virtual_key_name);
    out.extend_from_slice(b",\"team_id\":");
    uuid(out, body.team_id);
    out.extend_from_slice(b",\"team_name\":");
    opt_text(out, body.team_name);
    out.extend_from_slice(b",\"customer_id\":");
    uuid(out, body.customer_id);
    out.extend_from_slice(b",\"customer_name\":");
    opt_text(out, body.customer_name);
    out.extend_from_slice(b",\"include_only_key_ids\":");
    let _ = serde_json::to_writer(&mut *out, body.include_only_key_ids);
    out.extend_from_slice(b",\"checks\":[");
    for (i, c) in body.checks.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"level\":\"");
        out.extend_from_slice(level_name(c.level).as_bytes());
        out.extend_from_slice(b"\",\"id\":");
        match c.id.0 {
            EntityRef::Id(id) => uuid(out, Some(id)),
            EntityRef::Name(name) => text(out, name),
        }
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(c.kind.name().as_bytes());
        out.extend_from_slice(b"\",\"used\":");
        amount_json(out, c.used);
        out.extend_from_slice(b",\"held\":");
        amount_json(out, c.held);
        out.extend_from_slice(b",\"max\":");
        amount_json(out, c.max);
        out.extend_from_slice(b",\"resets_at\":\"");
        let mut buf = [0u8; 27];
        let len = write_rfc3339(c.resets_at, &mut buf);
        out.extend_from_slice(&buf[..len]);
        out.extend_from_slice(if c.exceeded {
            b"\",\"exceeded\":true}"
        } else {
            b"\",\"exceeded\":false}"
        });
    }
    out.extend_from_slice(b"],\"max_affordable\":");
    let _ = serde_json::to_writer(&mut *out, &body.max_affordable);
    if let Some(hold) = &body.hold {
        out.extend_from_slice(b",\"hold\":");
        let _ = serde_json::to_writer(&mut *out, hold);
    }
    out.push(b'}');
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Provider => "provider",
        Level::Model => "model",
        Level::User => "user",
        Level::ProviderConfig => "provider_config",
        Level::VirtualKey => "virtual_key",
        Level::Team => "team",
        Level::Customer => "customer",
    }
}
