//! Test support: start the real app on port 0 against a fresh database of either backend,
//! talk HTTP to it, restart it on the same database.

pub mod cluster;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use heimdall::config::{Config, Secret};
use heimdall::App;
use serde_json::Value;
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server used to create and drop per-test PostgreSQL databases.
fn postgres_admin_url() -> String {
    std::env::var("HEIMDALL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Database(String),
    None,
}

impl TestDb {
    /// A new database, or `None` when PostgreSQL is unreachable outside CI (the test is then
    /// skipped, and says so). Under `CI=true` an unreachable PostgreSQL fails the test.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let name = format!("heimdall_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).unwrap();
                Some(TestDb {
                    url: format!("sqlite://{}", dir.join("heimdall.db").display()),
                    cleanup: Cleanup::File(dir),
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = match sqlx::PgConnection::connect(&admin).await {
                    Ok(c) => c,
                    Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                        // Written past libtest's capture so the skip is visible.
                        let _ = writeln!(
                            std::io::stderr().lock(),
                            "SKIPPED PostgreSQL test: cannot reach {admin}: {e} (set CI=true to fail instead)"
                        );
                        return None;
                    }
                    Err(e) => panic!("PostgreSQL is required under CI=true: {admin}: {e}"),
                };
                sqlx::query(&format!("create database {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    cleanup: Cleanup::Database(name),
                })
            }
        }
    }

    /// A handle on a database someone else owns (nothing is dropped at the end).
    pub fn from_url(url: String) -> TestDb {
        TestDb {
            url,
            cleanup: Cleanup::None,
        }
    }

    /// One integer from the test database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        use sqlx::Row;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        let row = sqlx::query(&format!("select cast(({sql}) as bigint)"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let value = row.try_get::<i64, _>(0).unwrap();
        conn.close().await.unwrap();
        value
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    /// Entries in the usage journal not yet folded (PostgreSQL; SQLite has no journal).
    pub async fn journal_entries(&self) -> i64 {
        if self.is_postgres() {
            self.scalar("select count(*) from usage_journal").await
        } else {
            0
        }
    }

    /// Idempotency keys stored: the keys in every block of `dedup_blocks` (16 bytes each).
    pub async fn stored_keys(&self) -> i64 {
        self.scalar("select coalesce(sum(length(keys)), 0) / 16 from dedup_blocks")
            .await
    }

    /// Runs SQL against the test database directly (to arrange state a test needs).
    pub async fn execute(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    pub async fn drop_db(self) {
        match &self.cleanup {
            Cleanup::File(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::None => {}
            Cleanup::Database(name) => {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
                        .execute(&mut conn)
                        .await;
                }
            }
        }
    }
}

/// A running app.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The rate limit service's address, when `grpc_listen` is set.
    pub grpc: Option<SocketAddr>,
    pub config: Config,
    pub client: reqwest::Client,
    /// Sent with every request when set.
    pub token: Option<String>,
    /// The app's shared state, to drive the worker directly.
    pub state: heimdall::http::state::AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn config_for(db: &TestDb) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        ..Config::default()
    }
}

pub fn with_tokens(mut config: Config, admin: &str, gateway: &str) -> Config {
    config.auth.admin_tokens = vec![Secret::new(admin)];
    config.auth.gateway_tokens = vec![Secret::new(gateway)];
    config
}

impl TestApp {
    pub async fn start(config: Config) -> TestApp {
        let app = App::build(config.clone()).await.expect("app builds");
        let addr = app.local_addr();
        let grpc = app.grpc_addr();
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("app runs");
        });
        TestApp {
            addr,
            grpc,
            config,
            client: reqwest::Client::new(),
            token: None,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the app gracefully and waits for it.
    pub async fn stop(mut self) -> Config {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.config.clone()
    }

    /// Stops the app and starts it again on the same database.
    pub async fn restart(self) -> TestApp {
        let token = self.token.clone();
        let config = self.stop().await;
        let mut app = TestApp::start(config).await;
        app.token = token;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.expect("request is sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.put(self.url(path)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Runs one worker tick now.
    pub async fn flush(&self) -> heimdall::worker::FlushReport {
        self.state.worker.clone().flush_once().await.expect("flush")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// POSTs and expects 200, returning the body.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.post(path, body).await;
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    }
}

/// The value of one series in a Prometheus text exposition (`name{labels}` exactly as
/// rendered), or None when the series is absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Asserts a 4xx envelope with the given status and type, and returns its message.
pub fn assert_error(resp: &(u16, Value), status: u16, kind: &str) -> String {
    assert_eq!(resp.0, status, "unexpected status, body {}", resp.1);
    assert_eq!(resp.1["status_code"], status, "envelope: {}", resp.1);
    assert_eq!(resp.1["error"]["type"], kind, "envelope: {}", resp.1);
    resp.1["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

/// Runs a scenario on SQLite and on PostgreSQL, each with a fresh database.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use $crate::common::{Backend, TestDb};

                #[tokio::test]
                async fn sqlite() {
                    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite is always there");
                    super::$scenario(&db).await;
                    db.drop_db().await;
                }

                #[tokio::test]
                async fn postgres() {
                    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
                    super::$scenario(&db).await;
                    db.drop_db().await;
                }
            }
        )*
    };
}

/// Starts the `heimdall` binary serving `db` on a free loopback port with extra environment,
/// and waits until it answers. Returns the process and its base URL.
pub async fn spawn_binary(db: &TestDb, env: &[(&str, &str)]) -> (std::process::Child, String) {
    spawn_binary_with(db, env, std::process::Stdio::inherit()).await
}

/// Starts the `heimdall` binary serving `db` on a free loopback port, without waiting for it
/// (warnings only on standard error, which goes to `stderr`). Returns the process and its
/// base URL.
pub fn start_binary(
    db: &TestDb,
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_heimdall"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db.url,
        ])
        .env("HEIMDALL__LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .stderr(stderr)
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"))
}

/// As [`spawn_binary`], with the process's standard error going to `stderr`.
pub async fn spawn_binary_with(
    db: &TestDb,
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    let (child, base) = start_binary(db, env, stderr);
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (child, base)
}

/// Sends a signal (`TERM`, `KILL`) to a process and waits for it to exit.
pub async fn signal(mut child: std::process::Child, name: &str) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name}");
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}
