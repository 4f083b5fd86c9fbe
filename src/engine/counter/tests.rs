use super::*;
use crate::domain::ResetDuration;

fn minute() -> WindowRule {
    WindowRule::rolling(&ResetDuration::parse("1m").unwrap())
}

const MIN: i64 = 60_000_000;

#[test]
fn usage_in_a_new_window_starts_from_zero() {
    let c = Counter::new(0, 0, &minute());
    c.add(&minute(), 10, 5, 0);
    c.add(&minute(), 2 * MIN + 1, 7, 0);
    let v = c.view(&minute(), 2 * MIN + 2);
    assert_eq!((v.used, v.last_reset), (7, 2 * MIN));
}

#[test]
fn an_expired_window_shows_zero_before_any_reset_runs() {
    let c = Counter::new(0, 0, &minute());
    c.add(&minute(), 0, 42, 0);
    assert_eq!(c.view(&minute(), MIN - 1).used, 42);
    let v = c.view(&minute(), 2 * MIN + 5);
    assert_eq!(v.used, 0);
    assert_eq!(v.last_reset, 2 * MIN);
    assert_eq!(v.resets_at, 3 * MIN);
}

#[test]
fn reset_restores_capacity_and_starts_a_new_window() {
    let c = Counter::new(10, 0, &minute());
    c.reset(&minute(), 30_000_000);
    let v = c.view(&minute(), 30_000_001);
    assert_eq!(
        (v.used, v.last_reset, v.resets_at),
        (0, 30_000_000, 30_000_000 + MIN)
    );
    assert_eq!(c.flush_item(0), None, "the reset endpoint persisted itself");
}

#[test]
fn a_longer_duration_keeps_usage_and_moves_the_end() {
    let c = Counter::new(7, 0, &minute());
    let hour = WindowRule::rolling(&ResetDuration::parse("1h").unwrap());
    c.set_rule(&hour);
    let v = c.view(&hour, 2 * MIN);
    assert_eq!((v.used, v.resets_at), (7, 60 * MIN));
}

#[test]
fn a_flush_moves_pending_into_the_base() {
    let c = Counter::new(100, 0, &minute());
    c.add(&minute(), 1, 5, 0);
    let item = c.flush_item(0).unwrap();
    assert_eq!(
        item,
        FlushItem {
            start: 0,
            delta: 5,
            reset: false
        }
    );
    c.add(&minute(), 2, 3, 0);
    c.flushed(item, 0);
    assert_eq!(
        c.flush_item(0).unwrap().delta,
        3,
        "what came after the capture stays pending"
    );
    // Another replica added 50: the database reports 155 + 50.
    c.absorb(&minute(), 155, 0);
    assert_eq!(c.view(&minute(), 3).used, 158);
}

#[test]
fn a_delta_from_an_ended_window_is_dropped() {
    let c = Counter::new(0, 0, &minute());
    c.add(&minute(), 1, 5, 0);
    let item = c.flush_item(0).unwrap();
    c.add(&minute(), MIN + 1, 2, 0);
    c.flushed(item, 0);
    let next = c.flush_item(0).unwrap();
    assert_eq!(
        next,
        FlushItem {
            start: MIN,
            delta: 2,
            reset: true
        }
    );
}

#[test]
fn a_window_another_replica_started_is_adopted() {
    let c = Counter::new(0, 0, &minute());
    c.add(&minute(), 1, 5, 0);
    c.absorb(&minute(), 9, MIN);
    assert_eq!(c.view(&minute(), MIN + 1).used, 9);
    assert_eq!(
        c.flush_item(0),
        None,
        "the old window's pending usage is gone"
    );
}

#[test]
fn a_flush_takes_only_the_side_it_left() {
    let c = Counter::new(0, 0, &minute());
    c.add(&minute(), 1, 5, 0);
    c.add(&minute(), 2, 7, 1);
    assert_eq!(c.view(&minute(), 3).used, 12, "checks see both sides");
    let item = c.flush_item(0).unwrap();
    assert_eq!(item.delta, 5);
    c.flushed(item, 0);
    assert_eq!(c.flush_item(0), None);
    assert_eq!(c.flush_item(1).unwrap().delta, 7);
    assert_eq!(c.view(&minute(), 3).used, 12);
}

#[test]
fn a_delta_that_was_not_written_moves_to_the_current_side() {
    let c = Counter::new(0, 0, &minute());
    c.add(&minute(), 1, 5, 0);
    c.add(&minute(), 2, 7, 1);
    let item = c.flush_item(0).unwrap();
    c.requeue(item, 0, 1);
    assert_eq!(c.flush_item(0), None);
    assert_eq!(c.flush_item(1).unwrap().delta, 12);
    assert_eq!(
        c.view(&minute(), 3).used,
        12,
        "nothing is lost or counted twice"
    );
}
