//! How long one flush of 100 000 changed counters takes against PostgreSQL, and that an idle
//! tick writes nothing. Run with `cargo bench --bench flush`; uses the server at
//! `HEIMDALL_TEST_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/postgres) and a
//! fresh database it drops afterwards.

use std::time::Instant;

use heimdall::domain::time::now_micros;
use sqlx::Connection;

const COUNTERS: i64 = 100_000;

#[tokio::main]
async fn main() {
    // `cargo bench` passes harness flags such as --bench; this benchmark takes none.
    let admin = std::env::var("HEIMDALL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flush benchmark skipped: cannot reach {admin}: {e}");
            return;
        }
    };
    let name = format!("heimdall_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);

    let db = heimdall::db::Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    let now = now_micros();
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!(
        "insert into budgets (id, max_limit, reset_duration, calendar_aligned, timezone, \
         current_usage, last_reset, created_at, updated_at) \
         select gen_random_uuid()::text, 1000000000000, '1d', 0, 'UTC', 0, {now}, {now}, {now} \
         from generate_series(1, {COUNTERS}); \
         insert into users (user_id, budget_id, created_at, updated_at) \
         select 'user-' || row_number() over (), id, {now}, {now} from budgets;"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    let config = heimdall::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url.clone(),
        ..heimdall::Config::default()
    };
    let app = heimdall::App::build(config).await.unwrap();
    let flusher = app.state().worker.clone();
    let snapshot = app.state().store.snapshot();

    let mut times = Vec::new();
    for round in 1..=5 {
        let now = now_micros();
        for b in snapshot.budgets() {
            b.add(now, round, snapshot.dirty.current());
        }
        let started = Instant::now();
        let report = flusher.flush_once().await.unwrap();
        times.push(started.elapsed());
        assert_eq!(report.budgets_written, COUNTERS as usize);
    }
    let started = Instant::now();
    let idle = flusher.flush_once().await.unwrap();
    let idle_time = started.elapsed();
    assert_eq!(idle, heimdall::worker::FlushReport::default());
    let total: i64 = sqlx::query_scalar("select cast(sum(current_usage) as bigint) from budgets")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(total, COUNTERS * 15, "every delta arrived exactly once");
    times.sort();
    println!(
        "flush of {COUNTERS} changed counters to PostgreSQL: median {:?}, min {:?}, max {:?} (target < 500 ms)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    println!("idle tick: {idle_time:?}, no writes");
    drop(app);
    c.close().await.unwrap();
    db.close().await;
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
