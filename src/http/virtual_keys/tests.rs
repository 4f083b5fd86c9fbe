use super::*;

#[test]
fn generated_values_have_the_prefix_and_32_url_safe_characters() {
    let v = generate_value();
    assert!(v.starts_with("sk-hd-"));
    assert_eq!(v.len(), 6 + 32);
    assert!(v[6..].bytes().all(|b| VALUE_ALPHABET.contains(&b)));
    assert_ne!(generate_value(), v);
}

#[test]
fn display_prefixes_never_show_more_than_half_a_value() {
    assert_eq!(
        display_prefix("sk-hd-AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
        "sk-hd-AbCd…"
    );
    assert_eq!(display_prefix("my-own-key"), "my-ow…");
}
