//! A pool of ONNX Runtime sessions (or slots holding one), handed out one
//! request at a time: `Session::run` takes `&mut self`.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Items not currently lent, and one permit per idle item.
#[derive(Debug)]
pub(super) struct Pool<T> {
    idle: Mutex<Vec<T>>,
    free: Arc<Semaphore>,
}

/// An item lent by a pool; it goes back when the lease is dropped, so a
/// request that fails or is cancelled cannot leak it.
#[derive(Debug)]
pub(super) struct Lease<T> {
    item: Option<T>,
    pool: Arc<Pool<T>>,
    _permit: OwnedSemaphorePermit,
}

/// The pool was closed (never, while the daemon serves).
#[derive(Debug, thiserror::Error)]
#[error("the session pool is closed")]
pub(super) struct Closed;

impl<T> Pool<T> {
    pub(super) fn new(items: Vec<T>) -> Self {
        Self {
            free: Arc::new(Semaphore::new(items.len())),
            idle: Mutex::new(items),
        }
    }

    /// Waits for an idle item.
    pub(super) async fn acquire(self: &Arc<Self>) -> Result<Lease<T>, Closed> {
        let permit = Arc::clone(&self.free)
            .acquire_owned()
            .await
            .map_err(|_| Closed)?;
        let item = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        // A permit guarantees an idle item.
        item.map(|item| Lease {
            item: Some(item),
            pool: Arc::clone(self),
            _permit: permit,
        })
        .ok_or(Closed)
    }
}

impl<T> Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item.as_ref().expect("present until dropped")
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("present until dropped")
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_lease_returns_its_item() {
        let pool = Arc::new(Pool::new(vec![7]));
        let lease = pool.acquire().await.expect("one item");
        assert_eq!(*lease, 7);
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { *pool.acquire().await.expect("returned") }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(lease);
        assert_eq!(waiting.await.expect("task"), 7);
    }
}
