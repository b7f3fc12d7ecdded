//! Digests of a job's frame states, per bucket of frames, cached and recomputed only where
//! something changed.
//!
//! Frames are grouped in buckets of [`BUCKET_FRAMES`] consecutive frame numbers. A bucket's
//! digest is blake3 over the postcard encoding of each `(frame, state)` with a non-empty
//! state, in frame order; buckets without one have no digest. A job's digest is blake3 over
//! its control (once changed) and each `(bucket, digest)` in bucket order. So two ledgers
//! give equal digests for a job iff they hold the same states for it, and a sync answer can
//! carry only the buckets whose digests differ ([`super::page`]).
//!
//! A change to one frame marks its bucket dirty; the next digest request rehashes that
//! bucket alone. A digest costs work proportional to what changed since the last one, not to
//! the job's size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::state::JobEntry;
use crate::ids::JobId;

/// Frames per bucket (a power of two).
pub const BUCKET_FRAMES: u32 = 1024;

/// The bucket a frame belongs to.
pub fn bucket_of(frame: u32) -> u32 {
    frame / BUCKET_FRAMES
}

/// The frame numbers of bucket `b`.
pub fn bucket_range(b: u32) -> std::ops::RangeInclusive<u32> {
    let start = b.saturating_mul(BUCKET_FRAMES);
    start..=start.saturating_add(BUCKET_FRAMES - 1)
}

/// A job's digest and the digests of its non-empty buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobDigest {
    pub whole: [u8; 32],
    pub buckets: BTreeMap<u32, [u8; 32]>,
}

#[derive(Default)]
struct Cached {
    buckets: BTreeMap<u32, [u8; 32]>,
    dirty: BTreeSet<u32>,
    whole: Option<[u8; 32]>,
}

/// Per-job digests, filled lazily. Cloning gives an empty cache (it is rebuilt on demand),
/// and it takes no part in equality: it only remembers what can be recomputed.
#[derive(Default)]
pub struct DigestCache(Mutex<HashMap<JobId, Cached>>);

impl Clone for DigestCache {
    fn clone(&self) -> Self {
        DigestCache::default()
    }
}

impl std::fmt::Debug for DigestCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestCache")
    }
}

fn bucket_digest(entry: &JobEntry, b: u32) -> Option<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut any = false;
    for (frame, state) in entry.frames.range(bucket_range(b)) {
        if state.is_empty() {
            continue;
        }
        any = true;
        // Encoding plain data into a Vec cannot fail; each encoding is self-delimiting.
        h.update(&postcard::to_stdvec(&(frame, state)).unwrap_or_default());
    }
    any.then(|| *h.finalize().as_bytes())
}

impl DigestCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Cached>> {
        // A panic while holding the lock leaves at worst a stale entry; recover the map.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frame `frame` of `job` changed.
    pub fn frame_changed(&self, job: &JobId, frame: u32) {
        if let Some(c) = self.lock().get_mut(job) {
            c.dirty.insert(bucket_of(frame));
            c.whole = None;
        }
    }

    /// The job's control changed.
    pub fn control_changed(&self, job: &JobId) {
        if let Some(c) = self.lock().get_mut(job) {
            c.whole = None;
        }
    }

    /// The job left the ledger.
    pub fn remove(&self, job: &JobId) {
        self.lock().remove(job);
    }

    /// The job's digest, and its bucket digests when `buckets` is set.
    pub fn get(&self, id: &JobId, entry: &JobEntry, buckets: bool) -> JobDigest {
        let mut map = self.lock();
        let c = map.entry(*id).or_insert_with(|| {
            let mut c = Cached::default();
            let mut last = None;
            for frame in entry.frames.keys() {
                let b = bucket_of(*frame);
                if last != Some(b) {
                    c.dirty.insert(b);
                    last = Some(b);
                }
            }
            c
        });
        for b in std::mem::take(&mut c.dirty) {
            match bucket_digest(entry, b) {
                Some(d) => c.buckets.insert(b, d),
                None => c.buckets.remove(&b),
            };
        }
        let whole = *c.whole.get_or_insert_with(|| {
            let mut h = blake3::Hasher::new();
            if entry.control.seq > 0 {
                h.update(&postcard::to_stdvec(&entry.control).unwrap_or_default());
            }
            for (b, d) in &c.buckets {
                h.update(&b.to_le_bytes());
                h.update(d);
            }
            *h.finalize().as_bytes()
        });
        JobDigest {
            whole,
            buckets: if buckets {
                c.buckets.clone()
            } else {
                BTreeMap::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_frames_without_overlap() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(1024), 1);
        assert!(bucket_range(1).contains(&1024) && bucket_range(1).contains(&2047));
        assert!(!bucket_range(1).contains(&2048));
        assert_eq!(*bucket_range(u32::MAX).end(), u32::MAX);
    }
}
