//! The duration grammar and the window rules built on it: any text either fails to parse or
//! yields a positive duration whose windows, rolling or calendar-aligned, contain `now`.
#![no_main]

use heimdall::domain::limits::TimeZoneName;
use heimdall::domain::{ResetDuration, WindowRule};
use libfuzzer_sys::fuzz_target;

/// 1970 .. ~2100, in microseconds: the instants a window can start and be rolled at.
const SPAN: i64 = 4_100_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let start = i64::from_le_bytes(data[..8].try_into().unwrap()).rem_euclid(SPAN);
    let later = i64::from_le_bytes(data[8..16].try_into().unwrap()).rem_euclid(SPAN);
    let now = start.max(later);
    let zones = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"];
    let zone = TimeZoneName::parse(zones[usize::from(data[16]) % zones.len()]).unwrap();
    let Ok(text) = std::str::from_utf8(&data[17..]) else {
        return;
    };
    let Ok(duration) = ResetDuration::parse(text) else {
        return;
    };
    assert!(duration.micros() > 0, "{text:?} parsed to {} µs", duration.micros());
    assert_eq!(duration.as_str(), text);
    let mut rules = vec![WindowRule::rolling(&duration)];
    rules.extend(WindowRule::calendar(&duration, zone.tz(), start));
    for rule in rules {
        let end = rule.end_of(start);
        assert!(end > start, "{text:?}: window [{start}, {end}) is empty");
        match rule.roll(start, now) {
            None => assert!(now < end, "{text:?}: {now} is past {end} yet not rolled"),
            Some(next) => {
                assert!(next <= now, "{text:?}: rolled to {next}, after now {now}");
                assert!(next >= start, "{text:?}: rolled back to {next} before {start}");
                assert!(now < rule.end_of(next), "{text:?}: {now} outside the new window");
            }
        }
    }
});
