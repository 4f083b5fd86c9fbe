//! The worker on both backends: nothing lost on restart or SIGTERM, idempotency across a
//! restart, idle ticks that write nothing, and rollups that add up to the counters.

use crate::common;

use common::{assert_error, config_for, TestApp, TestDb};
use serde_json::{json, Value};

on_both_backends!(
    a_restart_keeps_every_counter_exactly,
    sigterm_flushes_before_the_process_exits,
    a_sigterm_during_start_up_stops_the_service_cleanly,
    idempotency_keys_survive_a_restart,
    an_idle_tick_writes_nothing,
    rollups_add_up_to_the_counters,
    windows_that_ended_while_down_are_reset_at_start,
    every_reset_of_100_000_staggered_windows_is_written_once,
    a_full_tick_sweeps_every_slice_of_counters,
    durable_commits_between_sweep_slices_keep_every_total_exact,
    durable_rollups_are_committed_before_the_acknowledgement,
    a_durable_idempotency_key_holds_for_a_process_started_after_a_crash,
    a_failed_one_round_trip_commit_changes_nothing_and_leaves_the_connection_clean,
    replicas_adding_to_the_same_rollups_in_opposite_orders_both_commit,
    flushed_values_arrive_exactly_on_both_statement_paths,
);

const LIMITS: &str = r#"{"budget": {"max_limit": 1000.0, "reset_duration": "1d"},
    "rate_limit": {"token_max_limit": 1000000, "token_reset_duration": "1h", "request_max_limit": 100000, "request_reset_duration": "1h"}}"#;

fn limits() -> Value {
    serde_json::from_str(LIMITS).unwrap()
}

/// A customer, a team under it and a key under the team, each with both limits.
async fn hierarchy(app: &TestApp) -> (String, String) {
    let mut c = limits();
    c["name"] = json!("c");
    let cid = app.create("/api/governance/customers", c).await["customer"]["id"].clone();
    let mut t = limits();
    t["name"] = json!("t");
    t["customer_id"] = cid;
    let tid = app.create("/api/governance/teams", t).await["team"]["id"].clone();
    let mut k = limits();
    k["name"] = json!("k");
    k["team_id"] = tid;
    let vk = app.create("/api/governance/virtual-keys", k).await["virtual_key"].clone();
    (
        vk["value"].as_str().unwrap().to_owned(),
        vk["id"].as_str().unwrap().to_owned(),
    )
}

async fn usage(app: &TestApp, body: Value) -> Value {
    let (status, body) = app.post("/v1/usage", body).await;
    assert_eq!(status, 202, "{body}");
    body
}

async fn limits_view(app: &TestApp) -> (Value, Value) {
    (
        app.get("/api/governance/budgets").await.1,
        app.get("/api/governance/rate-limits").await.1,
    )
}

async fn a_restart_keeps_every_counter_exactly(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let (value, _) = hierarchy(&app).await;
    for i in 0..50 {
        usage(&app, json!({"virtual_key": value, "provider": "openai", "model": "gpt-4o", "tokens_used": i, "cost": 0.000001 * f64::from(i)})).await;
    }
    let before = limits_view(&app).await;
    assert_eq!(before.0["budgets"][0]["current_usage"], 0.001225);
    let app = app.restart().await;
    assert_eq!(limits_view(&app).await, before);
    app.stop().await;
    assert_eq!(
        db.scalar("select sum(token_current_usage) from rate_limits")
            .await,
        3 * 1225
    );
}

async fn sigterm_flushes_before_the_process_exits(db: &TestDb) {
    let (child, base) = common::spawn_binary(db, &[("HEIMDALL__FLUSH_INTERVAL", "1h")]).await;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{base}{p}");
    let vk: Value = client
        .post(url("/api/governance/virtual-keys"))
        .json(&json!({"name": "k", "budget": {"max_limit": 10.0, "reset_duration": "1d"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let value = vk["virtual_key"]["value"].as_str().unwrap();
    for _ in 0..10 {
        let resp = client
            .post(url("/v1/usage"))
            .json(&json!({"virtual_key": value, "cost": 0.25}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let status = common::signal(child, "TERM").await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        db.scalar("select current_usage from budgets").await,
        2_500_000_000,
        "the final flush wrote the usage"
    );
}

/// A SIGTERM that arrives while the service starts (here: as soon as it logs its first line,
/// from inside its start-up) is kept until it is up, then stops it the usual way, exit 0;
/// it does not kill the process mid-start.
async fn a_sigterm_during_start_up_stops_the_service_cleanly(db: &TestDb) {
    use std::io::BufRead;
    // The warning about the open API is logged at the start of start-up.
    let (mut child, _) = common::start_binary(db, &[], std::process::Stdio::piped());
    let stderr = child.stderr.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        // Keep draining, so that the process never blocks writing its log.
        std::thread::spawn(move || lines.for_each(drop));
        first
    })
    .await
    .unwrap();
    assert!(first.contains("no admin or gateway tokens"), "{first}");
    let status = common::signal(child, "TERM").await;
    assert!(status.success(), "exit status {status}");
}

async fn idempotency_keys_survive_a_restart(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let (value, _) = hierarchy(&app).await;
    let u = json!({"virtual_key": value, "tokens_used": 7, "request_id": "req-42"});
    assert_eq!(usage(&app, u.clone()).await["duplicate"], false);
    let app = app.restart().await;
    assert_eq!(
        usage(&app, u).await["duplicate"],
        true,
        "a retry after a restart is still a duplicate"
    );
    let (_, limits) = limits_view(&app).await;
    assert_eq!(limits["rate_limits"][0]["token_current_usage"], 7);
    app.stop().await;
}

async fn an_idle_tick_writes_nothing(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let (value, _) = hierarchy(&app).await;
    usage(
        &app,
        json!({"virtual_key": value, "tokens_used": 5, "cost": 0.5, "request_id": "r"}),
    )
    .await;
    let busy = app.flush().await;
    assert_eq!((busy.budgets_written, busy.rate_limits_written), (3, 3));
    assert_eq!((busy.rollups_written, busy.dedup_keys_written), (1, 1));
    let version = db.scalar("select usage_version from heimdall_clock").await;
    let idle = app.flush().await;
    assert_eq!(
        idle,
        heimdall::worker::FlushReport::default(),
        "an idle tick writes and reads back nothing"
    );
    assert_eq!(
        db.scalar("select usage_version from heimdall_clock").await,
        version
    );
    app.stop().await;
}

async fn rollups_add_up_to_the_counters(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    let (value, key_id) = hierarchy(&app).await;
    let mut expected_cost = 0.0;
    for i in 0..20 {
        let model = if i % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" };
        let user = format!("u{}", i % 3);
        usage(&app, json!({"virtual_key": value, "provider": "openai", "model": model, "user_id": user, "tokens_used": 100, "cost": 0.01})).await;
        expected_cost += 0.01;
    }
    usage(
        &app,
        json!({"provider": "anthropic", "model": "claude", "tokens_used": 1, "cost": 1.0}),
    )
    .await;
    usage(
        &app,
        json!({"virtual_key": value, "success": false, "tokens_used": 99, "cost": 9.0}),
    )
    .await;
    app.flush().await;

    let (status, report) = app
        .get("/api/governance/usage?group_by=virtual_key,model")
        .await;
    assert_eq!(status, 200, "{report}");
    let rows = report["usage"].as_array().unwrap();
    assert_eq!(report["count"], 3);
    let for_key: Vec<&Value> = rows
        .iter()
        .filter(|r| r["virtual_key_id"] == json!(key_id))
        .collect();
    assert_eq!(for_key.len(), 2);
    let tokens: i64 = for_key.iter().map(|r| r["tokens"].as_i64().unwrap()).sum();
    let requests: i64 = for_key
        .iter()
        .map(|r| r["requests"].as_i64().unwrap())
        .sum();
    let cost: f64 = for_key.iter().map(|r| r["cost"].as_f64().unwrap()).sum();
    let (budgets, limits) = limits_view(&app).await;
    assert_eq!(
        tokens,
        limits["rate_limits"][0]["token_current_usage"]
            .as_i64()
            .unwrap()
    );
    assert_eq!(
        requests,
        limits["rate_limits"][0]["request_current_usage"]
            .as_i64()
            .unwrap()
    );
    assert!((cost - budgets["budgets"][0]["current_usage"].as_f64().unwrap()).abs() < 1e-9);
    assert!((cost - expected_cost).abs() < 1e-9);
    let keyless = rows.iter().find(|r| r["virtual_key_id"].is_null()).unwrap();
    assert_eq!(
        (keyless["model"].clone(), keyless["cost"].clone()),
        (json!("claude"), json!(1.0))
    );

    let (_, by_user) = app
        .get(&format!(
            "/api/governance/usage?bucket=day&group_by=user&virtual_key_id={key_id}"
        ))
        .await;
    let users: Vec<(&str, i64)> = by_user["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap(),
                r["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(users, vec![("u0", 7), ("u1", 7), ("u2", 6)]);
    let (_, total) = app.get("/api/governance/usage?provider=openai").await;
    assert_eq!(total["usage"][0]["requests"], 20);
    assert!(
        total["usage"][0].get("model").is_none(),
        "only grouped fields are shown"
    );

    assert_error(
        &app.get("/api/governance/usage?bucket=week").await,
        400,
        "invalid_request",
    );
    assert_error(
        &app.get("/api/governance/usage?group_by=planet").await,
        400,
        "invalid_request",
    );
    assert_error(
        &app.get("/api/governance/usage?from=yesterday").await,
        400,
        "invalid_request",
    );
    assert_error(
        &app.get("/api/governance/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z")
            .await,
        400,
        "invalid_request",
    );
    app.stop().await;
}

async fn windows_that_ended_while_down_are_reset_at_start(db: &TestDb) {
    let app = TestApp::start(config_for(db)).await;
    hierarchy(&app).await;
    let config = app.stop().await;
    // Usage in windows that ended long ago.
    db.execute(
        "update budgets set current_usage = 5000000000, last_reset = 1000000; \
                update rate_limits set token_current_usage = 77, token_last_reset = 1000000, \
                request_current_usage = 3, request_last_reset = 1000000;",
    )
    .await;
    let app = TestApp::start(config).await;
    app.stop().await;
    assert_eq!(db.scalar("select sum(current_usage) from budgets").await, 0);
    assert_eq!(
        db.scalar("select sum(token_current_usage + request_current_usage) from rate_limits")
            .await,
        0
    );
    assert_eq!(
        db.scalar("select count(*) from budgets where last_reset = 1000000")
            .await,
        0,
        "every level was reset at start"
    );
}

/// The worker over 100 000 budgets whose windows end at as many different instants within two
/// seconds: every reset is written, each exactly once, in bounded transactions, while the
/// service answers.
async fn every_reset_of_100_000_staggered_windows_is_written_once(db: &TestDb) {
    const USERS: i64 = 100_000;
    const WINDOW: i64 = 10_000_000;
    let mut config = config_for(db);
    config.flush_interval = std::time::Duration::from_millis(250);
    let app = TestApp::start(config).await;
    let config = app.stop().await;
    // Window i ends at `now` + 20 µs·i: one by one over two seconds, starting once the rows are
    // in and the service is up (on a slow machine some end before: the first tick resets them).
    let now = heimdall::domain::time::now_micros() + 5_000_000;
    // Portable SQL (both backends): a recursive counter, ids padded by arithmetic.
    let series = format!(
        "with recursive s(i) as (select 0 union all select i + 1 from s where i < {})",
        USERS - 1
    );
    let id = "'00000000-0000-4000-8000-' || substr(cast(1000000000000 + i as text), 2)";
    // Rolling windows are anchored at creation: each budget was created when its window began.
    let start = format!("{now} - {WINDOW} + 20 * i");
    db.execute(&format!(
        "insert into budgets (id, max_limit, reset_duration, calendar_aligned, timezone, \
         current_usage, last_reset, created_at, updated_at) \
         {series} select {id}, 1000000000, '10s', 0, 'UTC', 7, {start}, {start}, {start} from s; \
         insert into users (user_id, budget_id, created_at, updated_at) \
         {series} select 'user-' || i, {id}, 0, 0 from s;"
    ))
    .await;
    let app = TestApp::start(config).await;
    let (status, _) = app.get("/api/governance/users/user-7").await;
    assert_eq!(status, 200, "answering while the first tick runs");
    let rolled = format!(
        "select count(*) from budgets where last_reset >= {now} + 20 * cast(substr(id, 25) as bigint)"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.scalar(&rolled).await < USERS {
        assert!(
            std::time::Instant::now() < deadline,
            "resets not written in time: {} of {USERS}",
            db.scalar(&rolled).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // A few more ticks: nothing is written again.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let metrics = app.metrics().await;
    assert_eq!(
        common::metric(&metrics, "heimdall_flush_rows_total{table=\"budgets\"}"),
        Some(USERS as f64),
        "each reset written once"
    );
    assert_eq!(db.scalar("select sum(current_usage) from budgets").await, 0);
    app.stop().await;
}

/// `count` users `user-0…`, each with a budget of `duration` whose window started at `now`.
async fn insert_users(db: &TestDb, count: usize, duration: &str, now: i64) {
    let budgets: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "('00000000-0000-4000-8000-{i:012}', 1000000000000, '{duration}', 0, 'UTC', 0, \
                 {now}, {now}, {now})"
            )
        })
        .collect();
    let users: Vec<String> = (0..count)
        .map(|i| format!("('user-{i}', '00000000-0000-4000-8000-{i:012}', {now}, {now})"))
        .collect();
    db.execute(&format!(
        "insert into budgets (id, max_limit, reset_duration, calendar_aligned, timezone, \
         current_usage, last_reset, created_at, updated_at) values {}; \
         insert into users (user_id, budget_id, created_at, updated_at) values {};",
        budgets.join(", "),
        users.join(", ")
    ))
    .await;
}

/// More limits than one slice of the full tick's sweep (1 024), all with 1-second windows:
/// after the windows end, one tick writes every reset, and usage charged to some of them
/// lands in their new windows.
async fn a_full_tick_sweeps_every_slice_of_counters(db: &TestDb) {
    const USERS: usize = 2_500;
    let now = heimdall::domain::time::now_micros();
    // No tick of the worker's own: the test's flush is the one that finds the ended windows.
    let mut config = config_for(db);
    config.flush_interval = std::time::Duration::from_secs(3600);
    let app = TestApp::start(config).await;
    let config = app.stop().await;
    insert_users(db, USERS, "1s", now).await;
    let app = TestApp::start(config).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (value, _) = hierarchy(&app).await;
    // The windows are whole seconds from `now`: the updates and the flush go early in one,
    // so that no window ends between an update and the flush that writes it.
    let phase = (heimdall::domain::time::now_micros() - now) % 1_000_000;
    if phase > 200_000 {
        tokio::time::sleep(std::time::Duration::from_micros((1_020_000 - phase) as u64)).await;
    }
    for i in (0..USERS).step_by(100) {
        usage(
            &app,
            json!({"virtual_key": value, "user_id": format!("user-{i}"), "tokens_used": 1, "cost": 0.25}),
        )
        .await;
    }
    let report = app.flush().await;
    assert!(
        report.budgets_written >= USERS,
        "every ended window is written: {report:?}"
    );
    assert_eq!(
        db.scalar(&format!(
            "select count(*) from budgets b join users u on u.budget_id = b.id \
             where b.last_reset > {now}"
        ))
        .await,
        USERS as i64
    );
    assert_eq!(
        db.scalar("select sum(b.current_usage) from budgets b join users u on u.budget_id = b.id")
            .await,
        25 * 250_000_000,
        "25 updates of $0.25 each, in nano-dollars"
    );
    app.stop().await;
}

/// With `ack = "durable"`, group commits run between the slices of a full tick's sweep (and,
/// on PostgreSQL, during its fold of the journal). Under concurrent durable usage and
/// back-to-back full ticks over several slices of limits, every acknowledged update is in the
/// database exactly once after the next tick, before any final flush.
async fn durable_commits_between_sweep_slices_keep_every_total_exact(db: &TestDb) {
    const USERS: usize = 2_500;
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let mut config = config_for(db);
    config.ack = heimdall::config::AckMode::Durable;
    let app = TestApp::start(config).await;
    let config = app.stop().await;
    insert_users(db, USERS, "1d", heimdall::domain::time::now_micros()).await;
    let app = std::sync::Arc::new(TestApp::start(config).await);
    let (value, key_id) = hierarchy(&app).await;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (app, value) = (std::sync::Arc::clone(&app), value.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let user = format!("user-{}", (w * 311 + i * 97) % USERS);
                usage(
                    &app,
                    json!({"virtual_key": value, "user_id": user, "tokens_used": 1, "cost": 0.5}),
                )
                .await;
            }
        }));
    }
    // Full ticks back to back (besides the worker's own), until the writers are done.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticks = {
        let (app, done) = (std::sync::Arc::clone(&app), std::sync::Arc::clone(&done));
        tokio::spawn(async move {
            let mut ticks = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                app.flush().await;
                ticks += 1;
            }
            ticks
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(ticks.await.unwrap() > 0);
    // The last group commits' journal entries (PostgreSQL) are folded by the next tick.
    app.flush().await;
    assert_eq!(db.journal_entries().await, 0);
    let acknowledged = (WRITERS * EACH) as i64 * 500_000_000;
    assert_eq!(
        db.scalar("select sum(b.current_usage) from budgets b join users u on u.budget_id = b.id")
            .await,
        acknowledged,
        "every acknowledged update is in the users' budgets, once"
    );
    assert_eq!(
        db.scalar(&format!(
            "select b.current_usage from budgets b join virtual_keys k on k.budget_id = b.id \
             where k.id = '{key_id}'"
        ))
        .await,
        acknowledged
    );
    std::sync::Arc::into_inner(app)
        .expect("the tick task let go of the app")
        .stop()
        .await;
}

/// The report for the whole day, grouped by key and user: `(rows, requests, tokens)`.
async fn report_totals(app: &TestApp) -> (usize, i64, i64) {
    let (status, report) = app
        .get("/api/governance/usage?group_by=virtual_key,user&bucket=day")
        .await;
    assert_eq!(status, 200, "{report}");
    let rows = report["usage"].as_array().unwrap();
    let sum = |field: &str| rows.iter().map(|r| r[field].as_i64().unwrap()).sum::<i64>();
    (rows.len(), sum("requests"), sum("tokens"))
}

/// `ack = "durable"` and no full tick during a test: only durable group commits write.
fn durable_without_ticks(db: &TestDb) -> heimdall::Config {
    let mut config = config_for(db);
    config.ack = heimdall::config::AckMode::Durable;
    config.flush_interval = std::time::Duration::from_secs(3600);
    config
}

async fn durable_rollups_are_committed_before_the_acknowledgement(db: &TestDb) {
    let config = durable_without_ticks(db);
    let app = TestApp::start(config.clone()).await;
    let (value, _) = hierarchy(&app).await;
    for i in 0..30 {
        let user = format!("u{}", i % 4);
        usage(
            &app,
            json!({"virtual_key": value, "user_id": user, "tokens_used": 10}),
        )
        .await;
    }
    // Another process starting on the database now (as after a crash) finds every
    // acknowledged update's rollup: in the table, or (PostgreSQL) in journal entries it folds
    // before it loads. The first app never flushed them itself.
    if db.is_postgres() {
        assert!(
            db.journal_entries().await > 0,
            "the group commits were journaled"
        );
    }
    let other = TestApp::start(config).await;
    assert_eq!(db.journal_entries().await, 0);
    assert_eq!(
        db.scalar("select coalesce(sum(requests), 0) from usage_rollups")
            .await,
        30,
        "every acknowledged update's rollup is committed with it"
    );
    assert_eq!(
        db.scalar("select count(*) from usage_rollups").await,
        4,
        "one row per user"
    );
    assert_eq!(report_totals(&other).await, (4, 30, 300));
    other.stop().await;
    app.stop().await;
}

/// A retry of a durably acknowledged update, sent to a process that started after the one
/// that acknowledged it crashed (here: started beside it, as the first never flushed), is a
/// duplicate: the new process folds the journal (PostgreSQL) before it loads the keys.
async fn a_durable_idempotency_key_holds_for_a_process_started_after_a_crash(db: &TestDb) {
    let config = durable_without_ticks(db);
    let app = TestApp::start(config.clone()).await;
    let (value, _) = hierarchy(&app).await;
    let update = json!({"virtual_key": value, "tokens_used": 10, "request_id": "retry-me"});
    assert_eq!(usage(&app, update.clone()).await["duplicate"], false);
    if db.is_postgres() {
        assert!(
            db.journal_entries().await > 0,
            "the key went to the journal"
        );
    }
    let other = TestApp::start(config).await;
    assert_eq!(usage(&other, update).await["duplicate"], true);
    other.stop().await;
    app.stop().await;
}

/// A process starting while another replica folds journal entries waits for that fold rather
/// than skipping its entries: the keys it loads then include theirs, so a retry of an update
/// they hold is still a duplicate. (Here the other fold holds the entries for a while and
/// gives up; the starting process folds them itself.)
#[tokio::test]
async fn a_start_waits_for_journal_entries_another_replica_is_folding() {
    use sqlx::Connection;
    let Some(db) = TestDb::new(common::Backend::Postgres).await else {
        return;
    };
    let config = durable_without_ticks(&db);
    let app = TestApp::start(config.clone()).await;
    let (value, _) = hierarchy(&app).await;
    let update = json!({"virtual_key": value, "tokens_used": 10, "request_id": "held"});
    assert_eq!(usage(&app, update.clone()).await["duplicate"], false);
    assert!(db.journal_entries().await > 0);

    let mut folder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let holding = tokio::spawn(async move {
        let mut tx = folder.begin().await.unwrap();
        sqlx::query("select id from usage_journal for update")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        locked.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        tx.rollback().await.unwrap();
    });
    is_locked.await.unwrap();
    let other = TestApp::start(config).await;
    assert_eq!(db.journal_entries().await, 0, "folded by the start");
    assert_eq!(usage(&other, update).await["duplicate"], true);
    holding.await.unwrap();
    other.stop().await;
    app.stop().await;
    db.drop_db().await;
}

/// A process starting while the last commit of a crashed one still runs on the server (a
/// server finishes what it received before it notices the client is gone) waits for it
/// before it loads: the key that commit writes recognises the gateway's retry.
#[tokio::test]
async fn a_start_waits_for_commits_still_running_for_a_crashed_process() {
    use heimdall::engine::dedup::{dedup_key, Phase};
    use sqlx::Connection;
    let Some(db) = TestDb::new(common::Backend::Postgres).await else {
        return;
    };
    let config = durable_without_ticks(&db);
    let app = TestApp::start(config.clone()).await;
    let (value, _) = hierarchy(&app).await;
    app.stop().await;

    // The crashed process's session (Heimdall's application name), in the middle of a commit
    // that writes the key of update "late".
    let url = format!("{}?application_name=heimdall", db.url);
    let mut zombie = sqlx::PgConnection::connect(&url).await.unwrap();
    let key = dedup_key("late", 0, Phase::Final);
    let (begun, has_begun) = tokio::sync::oneshot::channel();
    let committing = tokio::spawn(async move {
        let mut tx = zombie.begin().await.unwrap();
        sqlx::query("insert into dedup_blocks (expires_at, keys) values ($1, $2)")
            .bind(i64::MAX)
            .bind(key.to_le_bytes().to_vec())
            .execute(&mut *tx)
            .await
            .unwrap();
        begun.send(()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        tx.commit().await.unwrap();
    });
    has_begun.await.unwrap();
    let restarted = TestApp::start(config).await;
    let update = json!({"virtual_key": value, "tokens_used": 10, "request_id": "late"});
    assert_eq!(usage(&restarted, update).await["duplicate"], true);
    committing.await.unwrap();
    restarted.stop().await;
    db.drop_db().await;
}

/// A small flush is one round trip: one string of statements, transaction included, on
/// SQLite; one prepared statement on PostgreSQL. One failing midway (here a trigger on the
/// rollups, after the budget update ran) changes nothing, and the connection is left outside
/// any transaction.
async fn a_failed_one_round_trip_commit_changes_nothing_and_leaves_the_connection_clean(
    db: &TestDb,
) {
    use heimdall::db::flush::FlushWrites;
    use heimdall::db::Backend;
    use heimdall::engine::rollup::{RollupKey, RollupSums};
    let (heimdall_db, id) = migrated_with_a_budget(db).await;
    db.execute(match heimdall_db.backend() {
        Backend::Sqlite => {
            "create trigger boom before insert on usage_rollups \
             begin select raise(abort, 'boom'); end"
        }
        Backend::Postgres => {
            "create function boom() returns trigger language plpgsql as \
             $$ begin raise exception 'boom'; end $$; \
             create trigger boom before insert on usage_rollups \
             for each row execute function boom()"
        }
    })
    .await;
    let budgets = [five_more(id)];
    let rollups = [(
        RollupKey {
            bucket_start: 0,
            virtual_key_id: None,
            team_id: None,
            customer_id: None,
            user_id: String::new(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
        },
        RollupSums {
            requests: 1,
            tokens: 1,
            cost: 1,
        },
    )];
    let writes = |rollups| FlushWrites {
        budgets: &budgets,
        rates: &[],
        rollups,
        keys: &[],
        holds: Default::default(),
    };
    let mut conn = heimdall_db.acquire_writer().await.unwrap();
    let failed = heimdall_db
        .commit_flush(&mut conn, writes(&rollups), None)
        .await;
    assert!(failed.is_err(), "the trigger fails the commit");
    drop(conn);
    let current = format!("select current_usage from budgets where id = '{id}'");
    assert_eq!(
        db.scalar(&current).await,
        0,
        "the budget update before it is rolled back"
    );
    assert_eq!(
        db.scalar("select usage_version from heimdall_clock").await,
        0
    );

    let mut conn = heimdall_db.acquire_writer().await.unwrap();
    let version = heimdall_db
        .commit_flush(&mut conn, writes(&[]), None)
        .await
        .expect("the same connection begins a new transaction");
    drop(conn);
    assert_eq!(version, 1);
    assert_eq!(db.scalar(&current).await, 5);
    assert_eq!(
        db.scalar(&format!(
            "select usage_version from budgets where id = '{id}'"
        ))
        .await,
        1,
        "rows carry the version the string took"
    );
}

/// Two replicas flush rollups only (usage no limit governs takes no usage version, so nothing
/// serialises their transactions) to the same rows, each having collected them in its own
/// order: both commit, and every row adds both.
async fn replicas_adding_to_the_same_rollups_in_opposite_orders_both_commit(db: &TestDb) {
    use heimdall::db::flush::FlushWrites;
    use heimdall::db::Db;
    use heimdall::engine::rollup::{RollupKey, RollupSums};
    const ROWS: usize = 2_000;
    const ROUNDS: i64 = 4;
    let one = Db::connect(&db.url).await.unwrap();
    one.migrate().await.unwrap();
    let other = Db::connect(&db.url).await.unwrap();
    let rows: Vec<(RollupKey, RollupSums)> = (0..ROWS)
        .map(|i| {
            let key = RollupKey {
                bucket_start: 0,
                virtual_key_id: None,
                team_id: None,
                customer_id: None,
                user_id: format!("user-{i:05}"),
                provider: "openai".into(),
                model: "gpt-4o".into(),
            };
            let sums = RollupSums {
                requests: 1,
                tokens: 2,
                cost: 3,
            };
            (key, sums)
        })
        .collect();
    let reversed: Vec<_> = rows.iter().rev().cloned().collect();
    let commit = |db: &Db, rollups: &[(RollupKey, RollupSums)]| {
        let db = db.clone();
        let rollups = rollups.to_vec();
        async move {
            let mut conn = db.acquire_writer().await.unwrap();
            let writes = FlushWrites {
                budgets: &[],
                rates: &[],
                rollups: &rollups,
                keys: &[],
                holds: Default::default(),
            };
            db.commit_flush(&mut conn, writes, None).await
        }
    };
    for _ in 0..ROUNDS {
        let (a, b) = tokio::join!(commit(&one, &rows), commit(&other, &reversed));
        a.expect("one replica's rollups commit");
        b.expect("the other's commit too");
    }
    assert_eq!(
        db.scalar("select count(*) from usage_rollups").await,
        ROWS as i64
    );
    assert_eq!(
        db.scalar("select sum(requests) from usage_rollups").await,
        2 * ROUNDS * ROWS as i64
    );
    one.close().await;
    other.close().await;
}

/// Names with quotes, backslashes, commas, braces, spaces and non-ASCII arrive as they were
/// sent, with their sums, budget deltas and idempotency keys, whether the flush is small (on
/// PostgreSQL one prepared statement with the rows as array parameters) or large (SQL text
/// with the rows inline).
async fn flushed_values_arrive_exactly_on_both_statement_paths(db: &TestDb) {
    use heimdall::db::flush::{BudgetDelta, FlushWrites};
    use heimdall::engine::counter::FlushItem;
    use heimdall::engine::rollup::{RollupKey, RollupSums};
    const NAMES: [&str; 9] = [
        "plain",
        "",
        "quote\"d",
        "back\\slash\\",
        "comma,brace{}",
        "o'brien",
        "\u{fc}n\u{ef}c\u{f6}d\u{e9} \u{1f680}",
        "NULL",
        " spaced ",
    ];
    let (heimdall_db, id) = migrated_with_a_budget(db).await;
    let key = uuid::Uuid::new_v4();
    let rollup = |bucket_start: i64, user_id: &str, n: i64| {
        let key = RollupKey {
            bucket_start,
            virtual_key_id: Some(key),
            team_id: None,
            customer_id: Some(id),
            user_id: user_id.to_owned(),
            provider: format!("p-{user_id}"),
            model: format!("{user_id}-m"),
        };
        let sums = RollupSums {
            requests: n,
            tokens: 10 * n,
            cost: 100 * n,
        };
        (key, sums)
    };
    // Small: a handful of rows. Large: the same names among 5 000 others.
    for (round, bucket, filler) in [(1i64, 0i64, 0usize), (2, 3_600_000_000, 5_000)] {
        let mut rollups: Vec<_> = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| rollup(bucket, name, i as i64 + 1))
            .collect();
        rollups.extend((0..filler).map(|i| rollup(bucket, &format!("filler-{i}"), 1)));
        let keys: Vec<(u128, i64)> = (0..3u128)
            .map(|i| {
                (
                    (round as u128) << 100 | i << 64 | (u128::from(u64::MAX) - i),
                    9_000,
                )
            })
            .collect();
        let budgets = [BudgetDelta {
            id,
            item: FlushItem {
                start: 1000,
                delta: round,
                reset: false,
            },
        }];
        let mut conn = heimdall_db.acquire_writer().await.unwrap();
        let writes = FlushWrites {
            budgets: &budgets,
            rates: &[],
            rollups: &rollups,
            keys: &keys,
            holds: Default::default(),
        };
        let version = heimdall_db
            .commit_flush(&mut conn, writes, None)
            .await
            .unwrap();
        drop(conn);
        assert_eq!(
            version, round,
            "a flush that changes a counter takes a version"
        );
        for (i, name) in NAMES.iter().enumerate() {
            let text = |s: String| format!("'{}'", s.replace('\'', "''"));
            let found = db
                .scalar(&format!(
                    "select coalesce(sum(requests * 1000000 + tokens * 1000 + cost), -1) \
                     from usage_rollups where bucket_start = {bucket} \
                     and virtual_key_id = '{key}' and team_id = '' and customer_id = '{id}' \
                     and user_id = {} and provider = {} and model = {}",
                    text(name.to_string()),
                    text(format!("p-{name}")),
                    text(format!("{name}-m")),
                ))
                .await;
            let n = i as i64 + 1;
            assert_eq!(
                found,
                n * 1_000_000 + 10 * n * 1000 + 100 * n,
                "round {round}: {name:?}"
            );
        }
        assert_eq!(
            db.scalar(&format!(
                "select count(*) from usage_rollups where bucket_start = {bucket}"
            ))
            .await,
            (NAMES.len() + filler) as i64
        );
        assert_eq!(
            db.scalar(
                "select coalesce(sum(length(keys)), 0) / 16 from dedup_blocks \
                 where expires_at = 9000"
            )
            .await,
            3 * round
        );
    }
    assert_eq!(
        db.scalar(&format!(
            "select current_usage from budgets where id = '{id}'"
        ))
        .await,
        3
    );
    let mut conn = heimdall_db.acquire_writer().await.unwrap();
    let dedup = heimdall::engine::dedup::Dedup::new(1_000_000, 1_000_000);
    heimdall::db::dedup::load_dedup_keys(&mut conn, 0, &dedup)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(dedup.len(), 6);
    for round in 1..=2u128 {
        for i in 0..3u128 {
            let key = round << 100 | i << 64 | (u128::from(u64::MAX) - i);
            assert!(
                dedup.claim(key, 1).is_none(),
                "idempotency key {key:x} round-trips through both halves"
            );
        }
    }
    heimdall_db.close().await;
}

/// PostgreSQL's flush connection stays the same between flushes (no trip back through the
/// pool), and one the server dropped while it sat idle is replaced before a flush uses it.
#[tokio::test]
async fn the_postgres_flush_connection_is_kept_and_replaced_when_the_server_drops_it() {
    use heimdall::db::flush::FlushWrites;
    let Some((db, heimdall_db)) = migrated_postgres().await else {
        return;
    };
    let backend_pid = || async {
        let mut kept = heimdall_db.flush_connection().await.unwrap();
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(kept.conn())
            .await
            .unwrap();
        pid
    };
    let first = backend_pid().await;
    assert_eq!(backend_pid().await, first, "the same connection, kept");

    db.execute(&format!("select pg_terminate_backend({first})"))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let mut kept = heimdall_db.flush_connection().await.unwrap();
    let writes = FlushWrites {
        budgets: &[],
        rates: &[],
        rollups: &[],
        keys: &[(7, 9_000)],
        holds: Default::default(),
    };
    heimdall_db
        .commit_flush(kept.conn(), writes, None)
        .await
        .expect("the dropped connection was replaced before the flush");
    drop(kept);
    assert_ne!(backend_pid().await, first);
    assert_eq!(db.stored_keys().await, 1);
    heimdall_db.close().await;
    db.drop_db().await;
}

/// A commit whose outcome is unknown is settled by its mark: committed when the mark reached
/// its number; otherwise fenced off, so that the commit, arriving late or sent again, fails
/// and changes nothing. Asking twice gives the same answer.
#[tokio::test]
async fn commit_marks_tell_a_commit_that_happened_from_one_fenced_off() {
    use heimdall::db::flush::FlushWrites;
    use heimdall::db::postgres::marks::{self, Mark};
    let Some(db) = TestDb::new(common::Backend::Postgres).await else {
        return;
    };
    let (heimdall_db, id) = migrated_with_a_budget(&db).await;
    let budgets = [five_more(id)];
    let writes = FlushWrites {
        budgets: &budgets,
        rates: &[],
        rollups: &[],
        keys: &[],
        holds: Default::default(),
    };
    let mark = |seq| Mark {
        writer: 42,
        seq,
        at: 1,
    };
    let usage = format!("select current_usage from budgets where id = '{id}'");
    let mut conn = heimdall_db.acquire_writer().await.unwrap();

    // Commit 1 happened: the mark says so, however often it is asked.
    heimdall_db
        .commit_flush(&mut conn, writes, Some(mark(1)))
        .await
        .unwrap();
    assert!(marks::resolve(&mut conn, mark(1)).await.unwrap());
    assert!(marks::resolve(&mut conn, mark(1)).await.unwrap());
    // Sent again, it fails: a commit runs once.
    let again = heimdall_db
        .commit_flush(&mut conn, writes, Some(mark(1)))
        .await;
    assert!(
        format!("{:?}", again.unwrap_err()).contains("commit_marks_once"),
        "refused by the mark"
    );
    assert_eq!(db.scalar(&usage).await, 5);

    // Commit 2 never reached the server: it is fenced off, and stays so.
    assert!(!marks::resolve(&mut conn, mark(2)).await.unwrap());
    assert!(!marks::resolve(&mut conn, mark(2)).await.unwrap());
    let late = heimdall_db
        .commit_flush(&mut conn, writes, Some(mark(2)))
        .await;
    assert!(late.is_err(), "a fenced-off commit cannot happen any more");
    assert_eq!(db.scalar(&usage).await, 5);

    // Its deltas go out again with commit 3, once; the journal's appends carry marks too.
    heimdall_db
        .commit_flush(&mut conn, writes, Some(mark(3)))
        .await
        .unwrap();
    assert_eq!(db.scalar(&usage).await, 10);
    heimdall::db::postgres::journal::append(&mut conn, mark(4), &writes)
        .await
        .unwrap();
    assert!(
        heimdall::db::postgres::journal::append(&mut conn, mark(4), &writes)
            .await
            .is_err()
    );
    assert!(marks::resolve(&mut conn, mark(4)).await.unwrap());
    assert_eq!(db.journal_entries().await, 1);
    // A large flush (statement by statement) is marked the same way.
    let many: Vec<(u128, i64)> = (0..5000).map(|k| (k, 9_000)).collect();
    let rollups: Vec<(
        heimdall::engine::rollup::RollupKey,
        heimdall::engine::rollup::RollupSums,
    )> = (0..5000)
        .map(|hour| {
            let key = heimdall::engine::rollup::RollupKey {
                bucket_start: hour * 3_600_000_000,
                virtual_key_id: None,
                team_id: None,
                customer_id: None,
                user_id: String::new(),
                provider: "p".to_owned(),
                model: "m".to_owned(),
            };
            (
                key,
                heimdall::engine::rollup::RollupSums {
                    requests: 1,
                    tokens: 1,
                    cost: 1,
                },
            )
        })
        .collect();
    let large = FlushWrites {
        keys: &many,
        holds: Default::default(),
        rollups: &rollups,
        ..writes
    };
    heimdall_db
        .commit_flush(&mut conn, large, Some(mark(5)))
        .await
        .unwrap();
    assert!(heimdall_db
        .commit_flush(&mut conn, large, Some(mark(5)))
        .await
        .is_err());
    assert_eq!(db.scalar(&usage).await, 15);
    assert_eq!(db.stored_keys().await, 5000);
    assert_eq!(
        db.scalar("select count(*) from usage_rollups where provider = 'p'")
            .await,
        5000
    );
    drop(conn);
    heimdall_db.close().await;
    db.drop_db().await;
}

/// On PostgreSQL a flush finds each counter row through the hash index on its id (one bucket
/// page) rather than the primary key's B-tree.
#[tokio::test]
async fn postgres_flushes_find_counter_rows_through_hash_indexes() {
    let Some((db, heimdall_db)) = migrated_postgres().await else {
        return;
    };
    heimdall_db.close().await;
    db.execute(
        "insert into budgets (id, max_limit, reset_duration, current_usage, last_reset, \
         created_at, updated_at) \
         select gen_random_uuid()::text, 100, '1d', 0, 0, 0, 0 from generate_series(1, 2000); \
         insert into rate_limits (id, token_max_limit, token_reset_duration, \
         token_last_reset, request_last_reset, created_at, updated_at) \
         select gen_random_uuid()::text, 100, '1h', 0, 0, 0, 0 from generate_series(1, 2000); \
         analyze budgets; analyze rate_limits",
    )
    .await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for table in ["budgets", "rate_limits"] {
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "explain (costs off) update {table} set usage_version = 1 \
             from unnest('{{a,b,c}}'::text[]) as v(id) where {table}.id = v.id"
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains(&format!("Index Scan using {table}_id_hash")),
            "{table}: {plan}"
        );
    }
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// A fresh PostgreSQL database with Heimdall's schema, and a handle on it; `None` when the
/// PostgreSQL tests are skipped (see [`TestDb::new`]).
async fn migrated_postgres() -> Option<(TestDb, heimdall::db::Db)> {
    let db = TestDb::new(common::Backend::Postgres).await?;
    let heimdall_db = heimdall::db::Db::connect(&db.url).await.unwrap();
    heimdall_db.migrate().await.unwrap();
    Some((db, heimdall_db))
}

/// A delta of 5 to the budget of [`migrated_with_a_budget`], in its window.
fn five_more(id: uuid::Uuid) -> heimdall::db::flush::BudgetDelta {
    heimdall::db::flush::BudgetDelta {
        id,
        item: heimdall::engine::counter::FlushItem {
            start: 1000,
            delta: 5,
            reset: false,
        },
    }
}

/// `db` migrated through a handle on it, with one budget (usage 0, window from 1000).
async fn migrated_with_a_budget(db: &TestDb) -> (heimdall::db::Db, uuid::Uuid) {
    let heimdall_db = heimdall::db::Db::connect(&db.url).await.unwrap();
    heimdall_db.migrate().await.unwrap();
    let id = uuid::Uuid::new_v4();
    db.execute(&format!(
        "insert into budgets (id, max_limit, reset_duration, current_usage, last_reset, \
         created_at, updated_at) values ('{id}', 100, '1d', 0, 1000, 0, 0)"
    ))
    .await;
    (heimdall_db, id)
}
