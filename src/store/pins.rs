//! Blobs a collection must keep although the ledger does not name them yet: a rendered
//! frame between its import and the merge of its result, a project's files between their
//! import at submit and the job's arrival in the ledger.
//!
//! The daemon computes the ledger's protected set and takes a [`Store::pin_mark`] in the
//! same turn of its loop. A collection then keeps, besides that set, every blob pinned
//! now and every blob unpinned after the mark: whatever named it reached the ledger after
//! the protected set was taken. Pins are taken before a blob's file appears in the store,
//! so a collection never sees an imported blob unpinned and unprotected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::Store;
use crate::ids::BlobId;

#[derive(Debug, Default)]
pub(super) struct Pins {
    held: HashMap<BlobId, usize>,
    /// When each blob was last unpinned, by `clock`.
    released: HashMap<BlobId, u64>,
    clock: u64,
}

/// Keeps a blob from collections while alive (see the module docs).
#[derive(Debug)]
pub struct Pin {
    pins: Arc<Mutex<Pins>>,
    id: BlobId,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let Ok(mut p) = self.pins.lock() else {
            return;
        };
        if let Some(n) = p.held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                p.held.remove(&self.id);
            }
        }
        p.clock += 1;
        let now = p.clock;
        p.released.insert(self.id, now);
    }
}

impl Store {
    /// Pins blob `id` (which need not exist yet) until the returned guard is dropped.
    pub fn pin(&self, id: BlobId) -> Pin {
        if let Ok(mut p) = self.pins.lock() {
            *p.held.entry(id).or_insert(0) += 1;
        }
        Pin {
            pins: self.pins.clone(),
            id,
        }
    }

    /// The mark a collection compares releases against: take it with the protected set.
    pub fn pin_mark(&self) -> u64 {
        self.pins.lock().map(|p| p.clock).unwrap_or(0)
    }

    /// Whether a collection that started at `mark` must keep `id`: pinned now, or
    /// unpinned since. Checked again right before each removal.
    pub(super) fn pin_keeps(&self, id: &BlobId, mark: u64) -> bool {
        self.pins.lock().map_or(true, |p| {
            p.held.contains_key(id) || p.released.get(id).is_some_and(|c| *c > mark)
        })
    }

    /// Every blob [`pin_keeps`](Self::pin_keeps) keeps for `mark`; releases older than
    /// `mark` are forgotten (no later collection can need them).
    pub(super) fn pinned_since(&self, mark: u64) -> HashSet<BlobId> {
        let Ok(mut p) = self.pins.lock() else {
            return HashSet::new();
        };
        p.released.retain(|_, c| *c > mark);
        p.held.keys().chain(p.released.keys()).copied().collect()
    }
}

pub(super) type Shared = Arc<Mutex<Pins>>;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_collection_keeps_pinned_blobs_and_those_unpinned_after_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let nothing: HashSet<BlobId> = HashSet::new();

        // A frame just rendered: imported, its result not merged yet.
        let (frame, pin) = store
            .import_bytes_pinned(b"a frame nobody names yet")
            .unwrap();
        store.collect(&nothing, store.pin_mark(), 0).unwrap();
        assert!(store.has_blob(&frame), "pinned: kept");

        // The daemon takes its protected set (without the frame) and the mark; then the
        // result is merged and the pin dropped; then the collection runs.
        let mark = store.pin_mark();
        drop(pin);
        store.collect(&nothing, mark, 0).unwrap();
        assert!(store.has_blob(&frame), "unpinned after the mark: kept");

        // The next collection's protected set would name it; if not, it may go.
        store.collect(&nothing, store.pin_mark(), 0).unwrap();
        assert!(
            !store.has_blob(&frame),
            "unpinned before the mark and unnamed: collected"
        );

        // Importing bytes that are already stored pins them too.
        let (a, _keep) = store.import_bytes_pinned(b"same bytes").unwrap();
        let (b, pin_b) = store.import_bytes_pinned(b"same bytes").unwrap();
        assert_eq!(a, b);
        drop(pin_b);
        store.collect(&nothing, store.pin_mark(), 0).unwrap();
        assert!(store.has_blob(&a), "still pinned once");
    }
}
