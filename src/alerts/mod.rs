//! Threshold alerts (`docs/alerts.md`): crossings the worker's watch finds become deliveries
//! in the database, one per webhook, limit, threshold and window whichever replica sees them
//! first, and a sender POSTs each, signed, until the receiver answers 2xx.
//!
//! Nothing here runs on the hot path. The watch hands crossings over through a bounded queue;
//! a crossing the full queue cannot take is counted, logged and offered again at the next
//! tick. Deliveries are claimed with a lease before they are sent, so that two replicas do not
//! send the same one, and one claimed by a process that died is sent when the lease ends.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{AlertsConfig, Secret};
use crate::db::alerts::NewDelivery;
use crate::db::Db;
use crate::domain::time::{now_micros, rfc3339};
use crate::engine::level::{Level, LimitKind};
use crate::engine::watch::Crossing;
use crate::telemetry::{AlertEvent, Metrics};

/// Crossings waiting to be recorded.
const QUEUE: usize = 4_096;
/// How often due deliveries (retries, and those a restart or another replica left) are
/// looked for.
const POLL: Duration = Duration::from_millis(500);
/// Deliveries sent at once.
const CONCURRENCY: usize = 8;
/// Longest a receiver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed delivery is due again after this long if its sender has not finished.
const LEASE: Duration = Duration::from_secs(60);
/// First retry delay; each failure doubles it up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One receiver.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    secret: Secret,
    thresholds: Vec<f64>,
}

/// The handle the worker offers crossings to.
#[derive(Debug, Clone)]
pub struct Alerts {
    webhooks: Arc<Vec<Webhook>>,
    queue: mpsc::Sender<Crossing>,
    metrics: Arc<Metrics>,
}

/// The task that records and sends deliveries.
pub struct Sender {
    webhooks: Arc<Vec<Webhook>>,
    queue: mpsc::Receiver<Crossing>,
    db: Db,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Crossings the database did not take yet (it was unreachable).
    unrecorded: VecDeque<Crossing>,
    slots: Arc<Semaphore>,
    /// Deliveries being sent, by id: at shutdown they are stopped and their claims given
    /// back, so that the next start sends them at once rather than after the lease.
    sending: JoinSet<()>,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl Alerts {
    /// The handle and its sender, or `None` when no webhook is configured; an error when the
    /// HTTP client cannot be made (no TLS root certificates on the machine, say).
    pub fn new(
        config: &AlertsConfig,
        db: Db,
        metrics: Arc<Metrics>,
    ) -> Result<Option<(Alerts, Sender)>, String> {
        if config.webhooks.is_empty() {
            return Ok(None);
        }
        let webhooks: Arc<Vec<Webhook>> = Arc::new(
            config
                .webhooks
                .iter()
                .map(|w| Webhook {
                    url: w.url.clone(),
                    secret: w.secret.clone(),
                    thresholds: w.thresholds.clone(),
                })
                .collect(),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("heimdall/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the webhook client: {e}"))?;
        let alerts = Alerts {
            webhooks: Arc::clone(&webhooks),
            queue: tx,
            metrics: Arc::clone(&metrics),
        };
        let sender = Sender {
            webhooks,
            queue: rx,
            db,
            client,
            metrics,
            unrecorded: VecDeque::new(),
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            sending: JoinSet::new(),
            in_flight: Arc::default(),
        };
        Ok(Some((alerts, sender)))
    }

    /// Every threshold some webhook watches.
    pub fn thresholds(&self) -> Vec<f64> {
        self.webhooks
            .iter()
            .flat_map(|w| w.thresholds.iter().copied())
            .collect()
    }

    /// Queues a crossing; false (counted and logged) when the queue is full.
    pub fn offer(&self, crossing: Crossing) -> bool {
        match self.queue.try_send(crossing) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(c)) => {
                self.metrics.alert_event(AlertEvent::Dropped);
                tracing::warn!(
                    limit_id = %c.limit_id,
                    threshold = c.threshold,
                    "alert queue full: crossing dropped, offered again at the next tick"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The JSON body of a delivery (`API.md` § Alerts).
#[derive(Debug, Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind_of_event: &'static str,
    threshold: f64,
    level: Level,
    entity_id: &'a str,
    entity_name: &'a str,
    limit_id: Uuid,
    kind: LimitKind,
    used: f64,
    max: f64,
    window_start: String,
    resets_at: String,
    forecast_exhausted_at: Option<String>,
    at: String,
}

fn body_of(id: &str, c: &Crossing) -> String {
    let body = Body {
        id,
        kind_of_event: "threshold_crossed",
        threshold: c.threshold,
        level: c.level,
        entity_id: &c.entity_id,
        entity_name: &c.entity_name,
        limit_id: c.limit_id,
        kind: c.kind,
        used: c.used,
        max: c.max,
        window_start: rfc3339(c.window_start),
        resets_at: rfc3339(c.resets_at),
        forecast_exhausted_at: c.forecast_exhausted_at.map(rfc3339),
        at: rfc3339(c.at),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The delay before attempt `attempts + 1`, after `attempts` failed.
fn backoff(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// The address without credentials or query, for lists and logs.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

impl Sender {
    /// Records and sends until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                got = self.queue.recv() => match got {
                    Some(c) => self.unrecorded.push_back(c),
                    None => break,
                },
                _ = poll.tick() => {}
                Some(_) = self.sending.join_next() => {}
            }
            while let Ok(c) = self.queue.try_recv() {
                self.unrecorded.push_back(c);
            }
            self.record().await;
            self.send_due().await;
        }
        self.sending.abort_all();
        while self.sending.join_next().await.is_some() {}
        let unfinished: Vec<String> = self.lock_in_flight().drain().collect();
        for id in unfinished {
            if let Err(e) = self.db.release_delivery(&id, now_micros()).await {
                tracing::warn!(error = %e, delivery = %id, "giving back an alert delivery failed; it is sent when its lease ends");
            }
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a delivery per webhook watching each waiting crossing's threshold; on a
    /// database error what is left waits for the next round.
    async fn record(&mut self) {
        while let Some(c) = self.unrecorded.front() {
            for w in self
                .webhooks
                .iter()
                .filter(|w| w.thresholds.contains(&c.threshold))
            {
                let id = Uuid::new_v4().to_string();
                let body = body_of(&id, c);
                let limit_id = c.limit_id.to_string();
                let inserted = self
                    .db
                    .insert_delivery(&NewDelivery {
                        id: &id,
                        webhook: &w.url,
                        limit_id: &limit_id,
                        kind: c.kind.name(),
                        threshold: c.threshold,
                        window_start: c.window_start,
                        body: &body,
                        now: now_micros(),
                    })
                    .await;
                match inserted {
                    Ok(true) => {
                        self.metrics.alert_event(AlertEvent::Recorded);
                        tracing::info!(
                            webhook = %display_url(&w.url),
                            limit_id = %c.limit_id,
                            threshold = c.threshold,
                            "threshold crossed: delivery recorded"
                        );
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "recording an alert delivery failed; retrying");
                        return;
                    }
                }
            }
            self.unrecorded.pop_front();
        }
    }

    /// Claims what is due and sends each in its own task (a slow receiver holds only its
    /// slot).
    async fn send_due(&mut self) {
        let free = self.slots.available_permits() as i64;
        if free == 0 {
            return;
        }
        let now = now_micros();
        let lease_until = now + LEASE.as_micros() as i64;
        let claimed = match self.db.claim_due_deliveries(now, lease_until, free).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "looking for due alert deliveries failed");
                return;
            }
        };
        for d in claimed {
            let Some(webhook) = self.webhooks.iter().find(|w| w.url == d.webhook).cloned() else {
                // A webhook no longer configured: its deliveries stay pending, unsent.
                continue;
            };
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            let (db, client, metrics) = (
                self.db.clone(),
                self.client.clone(),
                Arc::clone(&self.metrics),
            );
            self.lock_in_flight().insert(d.id.clone());
            let in_flight = Arc::clone(&self.in_flight);
            self.sending.spawn(async move {
                let _permit = permit;
                let attempts = d.attempts + 1;
                let outcome = post(&client, &webhook, &d.id, &d.body).await;
                let now = now_micros();
                let saved = match &outcome {
                    Ok(()) => {
                        metrics.alert_event(AlertEvent::Delivered);
                        db.delivery_done(&d.id, attempts, now).await
                    }
                    Err(error) => {
                        metrics.alert_event(AlertEvent::Failed);
                        let next = now + backoff(attempts).as_micros() as i64;
                        tracing::warn!(
                            webhook = %display_url(&webhook.url),
                            delivery = %d.id,
                            attempts,
                            error = %error,
                            "alert delivery failed; retrying"
                        );
                        db.delivery_failed(&d.id, attempts, error, next).await
                    }
                };
                if let Err(e) = saved {
                    // The lease ends and the delivery is due again: at least once.
                    tracing::warn!(error = %e, delivery = %d.id, "recording an alert attempt failed");
                }
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.id);
            });
        }
    }
}

/// One attempt: a 2xx is success, anything else an error to record.
async fn post(
    client: &reqwest::Client,
    webhook: &Webhook,
    id: &str,
    body: &str,
) -> Result<(), String> {
    let response = client
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header("x-heimdall-delivery", id)
        .header(
            "x-heimdall-signature",
            signature(webhook.secret.expose().as_bytes(), body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn crossing() -> Crossing {
        Crossing {
            threshold: 0.8,
            level: Level::Team,
            entity_id: "t1".into(),
            entity_name: "research".into(),
            limit_id: Uuid::nil(),
            kind: LimitKind::Budget,
            used: 8.1,
            max: 10.0,
            window_start: 0,
            resets_at: 3_600_000_000,
            forecast_exhausted_at: None,
            at: 1_000_000,
        }
    }

    #[test]
    fn a_full_queue_declines_and_counts_the_crossing() {
        let metrics = Arc::new(Metrics::new());
        let (tx, _rx) = mpsc::channel(1);
        let alerts = Alerts {
            webhooks: Arc::new(Vec::new()),
            queue: tx,
            metrics: Arc::clone(&metrics),
        };
        assert!(alerts.offer(crossing()));
        assert!(!alerts.offer(crossing()), "the queue holds one");
        let text = metrics.render(&crate::telemetry::Gauges::default());
        assert!(
            text.contains("heimdall_alert_events_total{event=\"dropped\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn listed_addresses_hide_credentials_and_queries() {
        assert_eq!(
            display_url("https://user:pw@hooks.example.com/a?token=x"),
            "https://hooks.example.com/a"
        );
    }

    #[test]
    fn the_body_has_the_contract_fields() {
        let c = crossing();
        let v: serde_json::Value = serde_json::from_str(&body_of("d1", &c)).unwrap();
        assert_eq!(v["type"], "threshold_crossed");
        assert_eq!(v["level"], "team");
        assert_eq!(v["kind"], "budget");
        assert_eq!(v["used"], 8.1);
        assert_eq!(v["resets_at"], "1970-01-01T01:00:00Z");
        assert!(v["forecast_exhausted_at"].is_null());
    }
}
