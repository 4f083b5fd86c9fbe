//! Group commit for `ack = "durable"`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Group commit for `ack = "durable"`: writers take a sequence number after applying their
/// update, wake the worker, and wait until a committed flush covers their number.
#[derive(Debug)]
pub struct FlushSignal {
    pub(super) seq: AtomicU64,
    pub(super) durable: watch::Sender<u64>,
    pub(super) wake: Notify,
}

impl Default for FlushSignal {
    fn default() -> Self {
        FlushSignal {
            seq: AtomicU64::new(0),
            durable: watch::channel(0).0,
            wake: Notify::new(),
        }
    }
}

impl FlushSignal {
    /// Waits until everything applied before this call is committed; false on timeout.
    pub async fn durable(&self, timeout: Duration) -> bool {
        let mine = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.durable.subscribe();
        self.wake.notify_one();
        tokio::time::timeout(timeout, rx.wait_for(|done| *done >= mine))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether durable writers wait for a flush.
    pub(super) fn waiting(&self) -> bool {
        self.seq.load(Ordering::SeqCst) > *self.durable.borrow()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_durable_writer_waits_for_the_covering_flush() {
        let signal = Arc::new(FlushSignal::default());
        let worker = Arc::clone(&signal);
        tokio::spawn(async move {
            worker.wake.notified().await;
            // A flush that takes a while, then covers everything applied before it began.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let covered = worker.seq.load(Ordering::SeqCst);
            worker.durable.send_replace(covered);
        });
        let started = tokio::time::Instant::now();
        assert!(signal.durable(Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_durable_writer_gives_up_when_nothing_commits() {
        let signal = FlushSignal::default();
        let started = tokio::time::Instant::now();
        assert!(!signal.durable(Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
