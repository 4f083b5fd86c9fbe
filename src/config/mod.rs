//! Configuration: one typed `Config`, layered defaults → TOML file → `HEIMDALL__…` environment
//! → command-line flags. Unknown keys and bad values stop the start with the key named.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::{Backend, ResetDuration};

/// Everything Heimdall can be configured with. Every key is documented in
/// `config.example.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// `sqlite://FILE` or `postgres://…`; the scheme picks the backend.
    #[serde(deserialize_with = "database_url")]
    pub database_url: String,
    /// Worker tick: window resets and the usage flush.
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    /// When `/v1/usage` answers: at once (`buffered`) or after the flush committed (`durable`).
    pub ack: AckMode,
    /// How long an idempotency key is remembered (at least; up to a 32nd more).
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// Most idempotency keys held in memory (21-32 bytes each); past it the oldest go first
    /// and their window shortens. Keys held = update rate × `dedup_window`.
    pub dedup_max_keys: usize,
    /// How long a hold lasts when a check's `reserve` names no `hold_ttl`.
    #[serde(deserialize_with = "duration")]
    pub hold_ttl: Duration,
    /// The longest `hold_ttl` a check may ask for.
    #[serde(deserialize_with = "duration")]
    pub hold_max_ttl: Duration,
    /// Refuse checks that carry neither a known virtual key nor a user id.
    pub require_virtual_key: bool,
    /// Headers every check must carry (case-insensitive).
    #[serde(deserialize_with = "string_list")]
    pub required_headers: Vec<String>,
    /// Largest accepted request body, in bytes (admin and single usage requests).
    pub max_body_bytes: usize,
    /// Most updates one `/v1/usage/batch` request may carry.
    pub batch_max_items: usize,
    /// Largest accepted `/v1/usage/batch` body, in bytes.
    pub batch_max_body_bytes: usize,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive);
    /// `RUST_LOG` wins when set.
    pub log_level: String,
    /// Log line format: `text` (human-readable) or `json` (one object per line).
    pub log_format: LogFormat,
    /// Longest a client may take to send a request's headers.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Longest a request may take, body and handler included (408 after).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Most open client connections; connections past it are closed at once.
    pub max_connections: usize,
    /// Address of Envoy's rate limit service (gRPC); empty: not served.
    #[serde(deserialize_with = "optional_addr")]
    pub grpc_listen: Option<SocketAddr>,
    /// Most concurrent gRPC calls on one connection (HTTP/2 streams).
    pub grpc_max_concurrent_streams: u32,
    /// Largest accepted gRPC message, in bytes.
    pub grpc_max_message_bytes: usize,
    pub auth: AuthConfig,
    pub alerts: AlertsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    Buffered,
    Durable,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens for the admin API (they also work on the gateway API).
    #[serde(deserialize_with = "secret_list")]
    pub admin_tokens: Vec<Secret>,
    /// Bearer tokens for the gateway API only.
    #[serde(deserialize_with = "secret_list")]
    pub gateway_tokens: Vec<Secret>,
}

impl AuthConfig {
    /// No token at all: the service runs open (loopback only).
    pub fn is_open(&self) -> bool {
        self.admin_tokens.is_empty() && self.gateway_tokens.is_empty()
    }
}

/// Threshold alerts (`docs/alerts.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Receivers of threshold crossings, each with its own secret and thresholds.
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` address the crossings are POSTed to.
    pub url: String,
    /// Key of the HMAC-SHA256 signature in `x-heimdall-signature`.
    pub secret: Secret,
    /// Fractions of each limit's max that trigger a delivery, once per window.
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<f64>,
}

fn default_thresholds() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

impl WebhookConfig {
    fn validate(&self, at: usize) -> Result<(), ConfigError> {
        let bad = |key: &str, rule: String| {
            Err(ConfigError::Invalid(format!(
                "alerts.webhooks[{at}].{key}: {rule}"
            )))
        };
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => {
                return bad(
                    "url",
                    format!("must be an http:// or https:// URL, got '{}'", self.url),
                )
            }
            Err(e) => return bad("url", format!("invalid URL '{}': {e}", self.url)),
        }
        if self.secret.expose().is_empty() {
            return bad("secret", "must not be empty".to_owned());
        }
        if self.thresholds.is_empty() {
            return bad("thresholds", "must name at least one threshold".to_owned());
        }
        if let Some(t) = self
            .thresholds
            .iter()
            .find(|t| !t.is_finite() || **t <= 0.0 || **t > 10.0)
        {
            return bad("thresholds", format!("each must be > 0 and <= 10, got {t}"));
        }
        Ok(())
    }
}

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://heimdall.db".to_owned(),
            flush_interval: Duration::from_secs(1),
            ack: AckMode::Buffered,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_max_keys: 30_000_000,
            hold_ttl: Duration::from_secs(600),
            hold_max_ttl: Duration::from_secs(3600),
            require_virtual_key: false,
            required_headers: Vec::new(),
            max_body_bytes: 1024 * 1024,
            batch_max_items: 10_000,
            batch_max_body_bytes: 16 * 1024 * 1024,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            grpc_listen: None,
            grpc_max_concurrent_streams: 1024,
            grpc_max_message_bytes: 64 * 1024,
            auth: AuthConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

const ENV_PREFIX: &str = "HEIMDALL__";

impl Config {
    /// Loads the layers: defaults, then the file (when given), then `HEIMDALL__…` variables
    /// from `env`, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string().trim().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (name, value) in env {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            set_path(&mut table, &path, env_value(&value))
                .map_err(|m| ConfigError::Invalid(format!("{name}: {m}")))?;
        }
        if let Some(listen) = &overrides.listen {
            table.insert("listen".into(), toml::Value::String(listen.clone()));
        }
        if let Some(url) = &overrides.database_url {
            table.insert("database_url".into(), toml::Value::String(url.clone()));
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                ConfigError::Invalid(if path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                })
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot: ranges.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, rule: &str| Err(ConfigError::Invalid(format!("{key}: {rule}")));
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if self.batch_max_body_bytes < 1024 {
            return bad("batch_max_body_bytes", "must be at least 1024");
        }
        if self.batch_max_items == 0 {
            return bad("batch_max_items", "must be at least 1");
        }
        if self.dedup_max_keys < 1000 {
            return bad("dedup_max_keys", "must be at least 1000");
        }
        let second = Duration::from_secs(1);
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value < second {
                return bad(key, "must be at least 1s");
            }
        }
        if self.idle_timeout < self.request_timeout {
            // A request waiting on its handler moves no bytes; it must not count as idle.
            return bad("idle_timeout", "must be at least request_timeout");
        }
        if self.hold_ttl > self.hold_max_ttl {
            return bad("hold_ttl", "must be at most hold_max_ttl");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.grpc_max_concurrent_streams == 0 {
            return bad("grpc_max_concurrent_streams", "must be at least 1");
        }
        if self.grpc_max_message_bytes < 1024 {
            return bad("grpc_max_message_bytes", "must be at least 1024");
        }
        if self.required_headers.iter().any(|h| h.trim().is_empty()) {
            return bad("required_headers", "names must not be empty");
        }
        for (at, webhook) in self.alerts.webhooks.iter().enumerate() {
            webhook.validate(at)?;
            if self.alerts.webhooks[..at]
                .iter()
                .any(|w| w.url == webhook.url)
            {
                return Err(ConfigError::Invalid(format!(
                    "alerts.webhooks[{at}].url: '{}' is listed twice",
                    webhook.url
                )));
            }
        }
        let mut thresholds: Vec<f64> = self
            .alerts
            .webhooks
            .iter()
            .flat_map(|w| w.thresholds.iter().copied())
            .collect();
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        if thresholds.len() > 64 {
            return bad("alerts.webhooks", "at most 64 distinct thresholds in all");
        }
        Ok(())
    }
}

/// Environment values are TOML scalars or arrays when they parse as such, strings otherwise.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Boolean(_)
                | toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Array(_)
                | toml::Value::String(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".to_owned()),
        [key] if !key.is_empty() => {
            table.insert(key.clone(), value);
            Ok(())
        }
        [section, rest @ ..] if !section.is_empty() => {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("'{section}' is not a section")),
            }
        }
        _ => Err("empty key segment".to_owned()),
    }
}

/// A duration of the configuration: milliseconds (`250ms`), or what a reset duration takes
/// (`30s`, `5m`, `1h30m`, …).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Some(ms) = text.strip_suffix("ms") {
        if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) {
            return match ms.parse::<u64>() {
                Ok(0) => Err(format!("duration must be greater than zero: '{text}'")),
                Ok(ms) => Ok(Duration::from_millis(ms)),
                Err(_) => Err(format!("duration is too long: '{text}'")),
            };
        }
    }
    let parsed = ResetDuration::parse(text).map_err(|e| e.to_string())?;
    Ok(Duration::from_micros(parsed.micros() as u64))
}

/// A socket address, or the empty string for none.
fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an address like 127.0.0.1:8081, got '{text}'"
        ))
    })
}

fn database_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    Backend::from_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

/// A list given as an array, or as one comma-separated string (handy in the environment).
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrString {
    List(Vec<String>),
    One(String),
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(v) => v,
        ListOrString::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    let list = string_list(d)?;
    if list.iter().any(|t| t.trim().is_empty()) {
        return Err(serde::de::Error::custom("tokens must not be empty"));
    }
    Ok(list.into_iter().map(Secret).collect())
}

#[cfg(test)]
mod tests;
