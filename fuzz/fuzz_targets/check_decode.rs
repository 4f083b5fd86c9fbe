//! `/v1/check` bodies: any bytes either decode into a valid request or are rejected; a valid
//! request is checked against an empty state and its decision is written as valid JSON.
#![no_main]

use heimdall::engine::check::{check, CheckPolicy};
use heimdall::engine::store::Snapshot;
use heimdall::http::check::{decode_check, write_decision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = decode_check(data) else {
        return;
    };
    let snapshot = Snapshot::default();
    let policy = CheckPolicy {
        require_virtual_key: req.request_id.as_deref() == Some("require"),
        required_headers: vec!["x-team".to_owned()],
    };
    let input = req.input();
    let headers = req.header_names();
    let decision = check(&snapshot, &policy, &input, &headers, 1_800_000_000_000_000);
    let mut json = Vec::new();
    write_decision(&decision, &mut json);
    let parsed: serde_json::Value = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("decision is not JSON ({e}): {}", String::from_utf8_lossy(&json)));
    assert_eq!(parsed["decision"], decision.verdict.code());
});
