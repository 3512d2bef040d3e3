//! One signal's queue between whoever produces batches (the engine thread, the metrics timer) and the task
//! that sends them: bounded, in memory or on disk. `push` never blocks on the network: a full queue refuses the
//! batch and the caller counts it as dropped.
//!
//! The sender peeks at the oldest batch, delivers it (retrying as long as the rules allow) and only then acks
//! it, so a batch on disk is removed only after the backend took it (or refused it for good).

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::disk::{DiskQueue, PushError, Recovered};

/// An encoded export request and the number of items (records, spans, points) in it.
#[derive(Clone, Debug)]
pub struct Batch {
    pub items: u32,
    pub body: Bytes,
}

enum Store {
    Memory {
        batches: VecDeque<Batch>,
        capacity: usize,
    },
    Disk(DiskQueue),
}

pub struct Queue {
    store: Mutex<Store>,
    notify: Notify,
}

impl Queue {
    pub fn memory(capacity: usize) -> Queue {
        Queue::with(Store::Memory {
            batches: VecDeque::new(),
            capacity,
        })
    }

    pub fn disk(dir: &Path, max_batches: usize, max_bytes: u64) -> io::Result<(Queue, Recovered)> {
        let (q, recovered) = DiskQueue::open(dir, max_batches, max_bytes)?;
        Ok((Queue::with(Store::Disk(q)), recovered))
    }

    fn with(store: Store) -> Queue {
        Queue {
            store: Mutex::new(store),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves a consistent store (every change is one push or pop), so a
        // poisoned lock is still usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, batch: Batch) -> Result<(), PushError> {
        match &mut *self.lock() {
            Store::Memory { batches, capacity } => {
                if batches.len() >= *capacity {
                    return Err(PushError::Full("queue.size batches"));
                }
                batches.push_back(batch);
            }
            Store::Disk(q) => q.push(batch.items, &batch.body)?,
        }
        self.notify.notify_one();
        Ok(())
    }

    /// The oldest batch, without removing it. `Err` holds the item count of an unreadable batch.
    pub fn front(&self) -> Option<Result<Batch, (u32, io::Error)>> {
        match &mut *self.lock() {
            Store::Memory { batches, .. } => batches.front().cloned().map(Ok),
            Store::Disk(q) => q
                .front()
                .map(|r| r.map(|(items, body)| Batch { items, body })),
        }
    }

    /// Removes the oldest batch.
    pub fn ack(&self) {
        match &mut *self.lock() {
            Store::Memory { batches, .. } => {
                batches.pop_front();
            }
            Store::Disk(q) => {
                if let Err(e) = q.ack() {
                    tracing::error!(error = %e, "cannot record a delivery in the on-disk queue; it may be sent again after a restart");
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match &*self.lock() {
            Store::Memory { batches, .. } => batches.len(),
            Store::Disk(q) => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether what is left survives a restart.
    pub fn is_durable(&self) -> bool {
        matches!(&*self.lock(), Store::Disk(_))
    }

    /// Items left in a memory queue (lost at exit); zero for a disk queue.
    pub fn volatile_items(&self) -> u64 {
        match &*self.lock() {
            Store::Memory { batches, .. } => batches.iter().map(|b| u64::from(b.items)).sum(),
            Store::Disk(_) => 0,
        }
    }

    /// Resolves after the next push (or at once if one happened since the last wait).
    pub async fn pushed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u32) -> Batch {
        Batch {
            items: n,
            body: Bytes::from(vec![n as u8; 3]),
        }
    }

    #[test]
    fn memory_queue_is_fifo_bounded_and_peeks_until_acked() {
        let q = Queue::memory(2);
        q.push(batch(1)).expect("room");
        q.push(batch(2)).expect("room");
        assert!(matches!(q.push(batch(3)), Err(PushError::Full(_))));
        assert_eq!(q.front().and_then(Result::ok).map(|b| b.items), Some(1));
        assert_eq!(q.front().and_then(Result::ok).map(|b| b.items), Some(1));
        assert_eq!(q.volatile_items(), 3);
        q.ack();
        assert_eq!(q.front().and_then(Result::ok).map(|b| b.items), Some(2));
        assert_eq!(q.len(), 1);
        assert!(!q.is_durable());
    }
}
