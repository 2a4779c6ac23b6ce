//! Publication: the in-memory view of what is durable, the announcements of
//! its revision (for `min_revision` and Watch), and the observer that
//! metrics count writes by. A backend holds the `Publisher` and hands it
//! each durable write, in revision order; everything else only reads.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use parking_lot::RwLock;

use super::{Mutation, StoreObserver, View};

/// The view, its announcements and the observer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Publisher {
    inner: Arc<Shared>,
}

struct Shared {
    view: RwLock<View>,
    /// The view's revision, announced after each publication, for readers
    /// that wait for a revision (`min_revision`) and for watches.
    announced: tokio::sync::watch::Sender<u64>,
    /// Set once, by the server, before it serves.
    observer: OnceLock<Arc<dyn StoreObserver>>,
}

impl Publisher {
    /// Publishes from `view`, as loaded from storage.
    pub(crate) fn new(view: View) -> Self {
        let revision = view.revision();
        Publisher {
            inner: Arc::new(Shared {
                view: RwLock::new(view),
                announced: tokio::sync::watch::Sender::new(revision),
                observer: OnceLock::new(),
            }),
        }
    }

    /// Applies durable writes to the view, which must come in revision
    /// order, announces the view's new revision, and returns it.
    pub(crate) fn publish(&self, batch: impl IntoIterator<Item = (u64, Vec<Mutation>)>) -> u64 {
        let published = {
            let mut view = self.inner.view.write();
            for (revision, mutations) in batch {
                view.apply(revision, mutations);
            }
            view.revision()
        };
        self.inner.announced.send_replace(published);
        published
    }

    /// A write that raises the revision was committed (not yet durable).
    pub(crate) fn committed(&self) {
        if let Some(observer) = self.inner.observer.get() {
            observer.committed();
        }
    }

    /// One sync to durable storage (shared by the writes it covers) took
    /// `took`, successful or not.
    pub(crate) fn synced(&self, took: Duration) {
        if let Some(observer) = self.inner.observer.get() {
            observer.synced(took);
        }
    }

    /// A batch waited `waited` for the shared write lock and held it `held`.
    pub(crate) fn write_lock(&self, waited: Duration, held: Duration) {
        if let Some(observer) = self.inner.observer.get() {
            observer.write_lock(waited, held);
        }
    }

    /// Whether the shared database can be reached.
    pub(crate) fn reachable(&self, reachable: bool) {
        if let Some(observer) = self.inner.observer.get() {
            observer.reachable(reachable);
        }
    }

    /// A write became durable and visible, `waited` after it began.
    pub(super) fn durable(&self, waited: Duration) {
        if let Some(observer) = self.inner.observer.get() {
            observer.durable(waited);
        }
    }

    /// Only the first observer set is kept; false for any later one.
    pub(super) fn observe(&self, observer: Arc<dyn StoreObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    pub(super) fn read<R>(&self, read: impl FnOnce(&View) -> R) -> R {
        read(&self.inner.view.read())
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.announced.subscribe()
    }

    /// Waits until the view reflects at least `revision`, for at most
    /// `within`. On time-out returns the revision the view has reached.
    pub(super) async fn wait_for_revision(
        &self,
        revision: u64,
        within: Duration,
    ) -> Result<(), u64> {
        if self.inner.view.read().revision() >= revision {
            return Ok(());
        }
        let mut announced = self.inner.announced.subscribe();
        let reached = tokio::time::timeout(within, announced.wait_for(|r| *r >= revision)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            // The sender lives as long as the store, so a closed channel
            // cannot happen while `self` exists; answer as for a time-out.
            Ok(Err(_)) | Err(_) => Err(self.inner.view.read().revision()),
        }
    }
}
