//! The bulkhead: at most `max_concurrent` requests in flight to one upstream, a bounded
//! queue of `max_queue` waiting at most `max_wait`; beyond that, a fast 503. One slow
//! upstream then holds a bounded share of the gateway's connections, memory and tasks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadFull {
    /// Every slot is taken and the queue is full (or there is none).
    #[error("all {0} slots are busy and the queue is full")]
    QueueFull(u32),
    /// It waited in the queue for `max_wait` without getting a slot.
    #[error("no slot freed within {0:?}")]
    Timeout(Duration),
}

/// The bulkhead settings of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadSettings {
    /// Slots.
    pub max_concurrent: u32,
    /// Longest wait in the queue.
    pub max_wait: Duration,
    /// Queue length.
    pub max_queue: u32,
}

/// The concurrency limit of one upstream.
#[derive(Debug)]
pub struct Bulkhead {
    settings: BulkheadSettings,
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
}

/// Decrements the queue length even when the waiting request is cancelled.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// A bulkhead with all slots free.
    pub fn new(settings: BulkheadSettings) -> Self {
        Self {
            settings,
            slots: Arc::new(Semaphore::new(settings.max_concurrent as usize)),
            waiting: AtomicU32::new(0),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> BulkheadSettings {
        self.settings
    }

    /// Requests holding a slot.
    pub fn in_flight(&self) -> u32 {
        self.settings
            .max_concurrent
            .saturating_sub(self.slots.available_permits() as u32)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Takes a slot, waiting in the queue for at most `max_wait` (or `limit`, when shorter:
    /// the request's own deadline). The slot is freed when the permit drops.
    pub async fn acquire(
        &self,
        limit: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, BulkheadFull> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let wait = limit.map_or(self.settings.max_wait, |l| l.min(self.settings.max_wait));
        if wait.is_zero() {
            return Err(BulkheadFull::QueueFull(self.settings.max_concurrent));
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if queued >= self.settings.max_queue {
            return Err(BulkheadFull::QueueFull(self.settings.max_concurrent));
        }
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(BulkheadFull::Timeout(wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkhead(max_queue: u32, wait_ms: u64) -> Bulkhead {
        Bulkhead::new(BulkheadSettings {
            max_concurrent: 2,
            max_wait: Duration::from_millis(wait_ms),
            max_queue,
        })
    }

    #[tokio::test]
    async fn refuses_at_once_without_a_queue() {
        let b = bulkhead(0, 0);
        let _a = b.acquire(None).await.unwrap();
        let _b = b.acquire(None).await.unwrap();
        assert_eq!(b.in_flight(), 2);
        assert_eq!(
            b.acquire(None).await.unwrap_err(),
            BulkheadFull::QueueFull(2)
        );
    }

    #[tokio::test]
    async fn queued_requests_get_a_freed_slot_or_time_out() {
        let b = Arc::new(bulkhead(1, 100));
        let a = b.acquire(None).await.unwrap();
        let _b2 = b.acquire(None).await.unwrap();
        // One may queue; a second waiter is refused at once.
        let b1 = b.clone();
        let waiter = tokio::spawn(async move { b1.acquire(None).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(b.queued(), 1);
        assert_eq!(
            b.acquire(None).await.unwrap_err(),
            BulkheadFull::QueueFull(2)
        );
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(b.queued(), 0);
        // Nobody frees a slot now: the waiter gives up after max_wait.
        let _c = b.acquire(None).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            b.acquire(None).await.unwrap_err(),
            BulkheadFull::Timeout(Duration::from_millis(100))
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        // A shorter request deadline bounds the wait.
        assert_eq!(
            b.acquire(Some(Duration::from_millis(10)))
                .await
                .unwrap_err(),
            BulkheadFull::Timeout(Duration::from_millis(10))
        );
        assert_eq!(b.queued(), 0);
    }
}
