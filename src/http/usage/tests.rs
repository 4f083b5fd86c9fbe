use super::*;

fn update(json: &str) -> UsageUpdate<'_> {
    serde_json::from_str(json).unwrap()
}

#[test]
fn rejects_negative_tokens_and_costs_and_long_strings() {
    assert!(update(r#"{"tokens_used": -1}"#)
        .validate()
        .unwrap_err()
        .starts_with("tokens_used"));
    assert!(update(r#"{"cost": -0.5}"#)
        .validate()
        .unwrap_err()
        .starts_with("cost"));
    let long = format!(r#"{{"model": "{}"}}"#, "m".repeat(257));
    assert!(update(&long).validate().unwrap_err().starts_with("model"));
    assert!(update(r#"{"user_id": "a\u0000b"}"#)
        .validate()
        .unwrap_err()
        .starts_with("user_id"));
    assert!(serde_json::from_str::<UsageUpdate>(r#"{"tokens_used": 1.5}"#).is_err());
    assert!(serde_json::from_str::<UsageUpdate>(r#"{"tokens_used": "5"}"#).is_err());
}

#[test]
fn only_final_updates_and_indexed_chunks_are_deduplicated() {
    let final_ = update(r#"{"request_id": "r"}"#);
    assert!(final_.validate().unwrap().dedup.is_some());
    let chunk = update(r#"{"request_id": "r", "is_streaming": true}"#);
    assert!(chunk.validate().unwrap().dedup.is_none());
    let indexed = update(r#"{"request_id": "r", "is_streaming": true, "chunk_index": 3}"#);
    assert!(indexed.validate().unwrap().dedup.is_some());
    let anonymous = update(r#"{"tokens_used": 5}"#);
    assert!(anonymous.validate().unwrap().dedup.is_none());
}
