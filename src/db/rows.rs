//! Conversions between row columns and domain values shared by the loader and the writers.

use uuid::Uuid;

use super::DbError;

pub fn uuid_text(id: Uuid) -> String {
    id.to_string()
}

pub fn opt_uuid_text(id: Option<Uuid>) -> Option<String> {
    id.map(uuid_text)
}

pub fn parse_uuid(table: &'static str, text: &str) -> Result<Uuid, DbError> {
    Uuid::parse_str(text).map_err(|e| corrupt(table, format!("bad id '{text}': {e}")))
}

pub fn parse_opt_uuid(table: &'static str, text: Option<String>) -> Result<Option<Uuid>, DbError> {
    text.map(|t| parse_uuid(table, &t)).transpose()
}

pub fn hash_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hash_hex(table: &'static str, text: &str) -> Result<[u8; 32], DbError> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(corrupt(table, "value hash is not 64 hex digits".to_owned()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|e| corrupt(table, e.to_string()))?;
        out[i] = u8::from_str_radix(s, 16).map_err(|e| corrupt(table, e.to_string()))?;
    }
    Ok(out)
}

pub fn list_json(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

pub fn parse_list_json(table: &'static str, text: &str) -> Result<Vec<String>, DbError> {
    serde_json::from_str(text).map_err(|e| corrupt(table, format!("bad list: {e}")))
}

/// A SQL string literal. Quotes are doubled, which is the whole escaping both backends need
/// (PostgreSQL with `standard_conforming_strings`, its default since 9.1). Values never
/// contain NUL: the API rejects it.
pub fn text_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn corrupt(table: &'static str, message: String) -> DbError {
    DbError::Corrupt { table, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_literals_double_their_quotes() {
        assert_eq!(text_literal("o'brien"), "'o''brien'");
        assert_eq!(text_literal("a\\b"), "'a\\b'");
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let mut hash = [0u8; 32];
        hash[0] = 0xab;
        hash[31] = 0x01;
        assert_eq!(parse_hash_hex("t", &hash_hex(&hash)).unwrap(), hash);
        assert!(parse_hash_hex("t", "zz").is_err());
    }
}
