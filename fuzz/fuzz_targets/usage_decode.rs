//! `/v1/usage` and `/v1/usage/batch` bodies: any bytes either decode into valid updates or
//! are rejected with an error; nothing panics, and what an update charges is never negative.
#![no_main]

use heimdall::http::usage::{decode_usage, decode_usage_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(charge) = decode_usage(data) {
        for amount in [charge.tokens, charge.requests, charge.cost].into_iter().flatten() {
            assert!(amount >= 0, "negative charge {charge:?}");
        }
    }
    if let Ok(n) = decode_usage_batch(data, 10_000) {
        assert!(n <= 10_000);
    }
});
