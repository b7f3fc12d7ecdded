//! Bounding the blob store: least recently used blobs go first, never a protected one.
//!
//! The daemon decides what is protected (the projects of running jobs, results not yet
//! delivered, see `daemon/cache.rs`); this module lists what is on disk, picks victims
//! ([`pick_victims`], pure) and removes them with their manifest and chunk-index entries.
//! Before that, blobs nobody uses are compacted when most of their chunks are stored in other
//! blobs too (see [`super::dedup`]). A blob's "last use" is its file's modification time
//! (for a compact blob, a time kept in sled), which checkouts refresh.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::ids::BlobId;

/// One blob file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobUse {
    pub id: BlobId,
    pub size: u64,
    pub last_used: SystemTime,
}

/// What a collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    /// Partial files of fetches nobody needs any more.
    pub partials_removed: usize,
    /// Work directories of jobs that are over.
    pub work_dirs_removed: usize,
    /// Blobs nobody uses that now keep only the chunks no other blob holds.
    #[serde(default)]
    pub blobs_compacted: usize,
    /// Bytes no longer stored twice thanks to that.
    #[serde(default)]
    pub bytes_deduped: u64,
    /// What the blob store holds afterwards.
    pub bytes_kept: u64,
}

/// The blobs to remove so that the store holds at most `limit` bytes: oldest first, never one
/// in `protected`. Stops when under the limit, or when only protected blobs are left.
pub fn pick_victims(blobs: &[BlobUse], protected: &HashSet<BlobId>, limit: u64) -> Vec<BlobId> {
    let mut total: u64 = blobs.iter().map(|b| b.size).sum();
    let mut candidates: Vec<&BlobUse> = blobs
        .iter()
        .filter(|b| !protected.contains(&b.id))
        .collect();
    candidates.sort_by_key(|b| (b.last_used, b.id));
    let mut out = Vec::new();
    for b in candidates {
        if total <= limit {
            break;
        }
        total -= b.size;
        out.push(b.id);
    }
    out
}

impl Store {
    /// Every complete blob with its size on disk and last use. A compact blob's size is the
    /// bytes of its loose chunks (a chunk two compact blobs share counts for both).
    pub fn blob_uses(&self) -> Result<Vec<BlobUse>, StoreError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.blob_dir)? {
            let e = e?;
            let Ok(id) = e.file_name().to_string_lossy().parse::<BlobId>() else {
                continue; // tmp/, partial/, chunks/
            };
            let meta = e.metadata()?;
            if !meta.is_file() {
                continue;
            }
            out.push(BlobUse {
                id,
                size: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        for (id, last_used) in self.compact_blobs() {
            if out.iter().any(|b| b.id == id) {
                continue;
            }
            let size = self
                .manifest(&id)
                .map(|m| {
                    m.chunks
                        .iter()
                        .filter(|c| self.loose_path(&c.id).is_file())
                        .map(|c| c.len as u64)
                        .sum()
                })
                .unwrap_or(0);
            out.push(BlobUse {
                id,
                size,
                last_used,
            });
        }
        Ok(out)
    }

    /// Marks a blob as just used (LRU order).
    pub fn touch_blob(&self, id: &BlobId) {
        if let Ok(f) = std::fs::File::open(self.blob_path(id)) {
            let _ = f.set_modified(SystemTime::now());
        } else if self.is_compact(id) {
            let _ = self.mark_compact(id, SystemTime::now());
        }
    }

    /// Removes one blob (whole or compact) with its manifest, keeping every chunk that a
    /// compact blob still needs. Returns the bytes freed. (Collections use
    /// [`Store::collect`]; this is for tests.)
    #[cfg(test)]
    pub fn remove_blob(&self, id: &BlobId) -> Result<u64, StoreError> {
        let before = self.disk_bytes();
        let mut holders = self.holders(&self.whole_blobs()?);
        let needed = self.needed_by_compact(&[*id].into());
        self.evict(id, &mut holders, &needed)?;
        self.sweep_loose(&needed, &holders)?;
        Ok(before.saturating_sub(self.disk_bytes()))
    }

    /// Removes partial files (interrupted fetches) of blobs not in `keep`.
    pub fn remove_partials(&self, keep: &HashSet<BlobId>) -> Result<usize, StoreError> {
        let mut n = 0;
        for e in std::fs::read_dir(self.blob_dir.join("partial"))? {
            let e = e?;
            let Ok(id) = e.file_name().to_string_lossy().parse::<BlobId>() else {
                continue;
            };
            if !keep.contains(&id) {
                let _ = self.remove_blob_partial(&id);
                n += 1;
            }
        }
        Ok(n)
    }

    fn remove_blob_partial(&self, id: &BlobId) -> Result<(), StoreError> {
        if !self.has_blob(id) {
            self.manifests.remove(id.0)?;
        }
        std::fs::remove_file(self.partial_path(id))?;
        Ok(())
    }

    /// Ids of the blobs that have a whole file.
    fn whole_blobs(&self) -> Result<Vec<BlobId>, StoreError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.blob_dir)? {
            let e = e?;
            if let Ok(id) = e.file_name().to_string_lossy().parse::<BlobId>()
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Bytes of whole blob files and loose chunks on disk.
    pub fn disk_bytes(&self) -> u64 {
        let whole: u64 = std::fs::read_dir(&self.blob_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<BlobId>().is_ok())
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        whole + self.loose_bytes()
    }

    /// Collects: compacts unprotected blobs that share most of their chunks with others
    /// ([`super::dedup`]), then removes unprotected blobs (LRU first) until at most `limit`
    /// bytes remain, and partial files that are not protected.
    pub fn collect(
        &self,
        protected: &HashSet<BlobId>,
        mark: u64,
        limit: u64,
    ) -> Result<GcReport, StoreError> {
        let before = self.disk_bytes();
        let mut report = GcReport::default();
        let whole = self.whole_blobs()?;
        let mut holders = self.holders(&whole);
        for id in whole
            .iter()
            .filter(|b| !protected.contains(b) && !self.pin_keeps(b, mark))
        {
            let saved = self.compact_one(id, &mut holders)?;
            if saved > 0 {
                report.blobs_compacted += 1;
                report.bytes_deduped += saved;
            }
        }
        let uses = self.blob_uses()?;
        let mut keep = protected.clone();
        keep.extend(self.pinned_since(mark));
        let victims = pick_victims(&uses, &keep, limit);
        // Chunks that compact blobs staying behind still need.
        let needed = self.needed_by_compact(&victims.iter().copied().collect());
        for id in &victims {
            // Pinned since the list was made: an import of the same bytes that just landed.
            if self.pin_keeps(id, mark) {
                continue;
            }
            self.evict(id, &mut holders, &needed)?;
            report.blobs_removed += 1;
        }
        self.sweep_loose(&needed, &holders)?;
        report.partials_removed = self.remove_partials(protected)?;
        report.bytes_kept = self.disk_bytes();
        report.bytes_freed = before.saturating_sub(report.bytes_kept);
        Ok(report)
    }
}

/// Removes `work/<job>` directories whose job is not in `keep` (hex job ids).
pub fn remove_work_dirs(work: &Path, keep: &HashSet<String>) -> usize {
    let Ok(dir) = std::fs::read_dir(work) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !keep.contains(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn use_(n: u8, size: u64, age: u64) -> BlobUse {
        BlobUse {
            id: BlobId([n; 32]),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age),
        }
    }

    #[test]
    fn oldest_unprotected_go_first_until_under_the_limit() {
        let blobs = [use_(1, 100, 10), use_(2, 100, 30), use_(3, 100, 20)];
        let protected: HashSet<BlobId> = [BlobId([2; 32])].into();
        assert_eq!(pick_victims(&blobs, &protected, 250), vec![BlobId([3; 32])]);
        assert_eq!(
            pick_victims(&blobs, &protected, 0),
            vec![BlobId([3; 32]), BlobId([1; 32])],
            "protected never goes, even over the limit"
        );
        assert!(pick_victims(&blobs, &protected, 300).is_empty());
    }

    proptest! {
        #[test]
        fn victims_are_never_protected_and_reach_the_limit_when_possible(
            sizes in proptest::collection::vec((1u64..1000, 0u64..900, any::<bool>()), 0..20),
            limit in 0u64..10_000,
        ) {
            let blobs: Vec<BlobUse> = sizes.iter().enumerate()
                .map(|(i, (s, age, _))| use_(i as u8, *s, *age)).collect();
            let protected: HashSet<BlobId> = sizes.iter().enumerate()
                .filter(|(_, (_, _, p))| *p).map(|(i, _)| BlobId([i as u8; 32])).collect();
            let victims = pick_victims(&blobs, &protected, limit);
            prop_assert!(victims.iter().all(|v| !protected.contains(v)));
            let left: u64 = blobs.iter().filter(|b| !victims.contains(&b.id)).map(|b| b.size).sum();
            let protected_size: u64 = blobs.iter().filter(|b| protected.contains(&b.id)).map(|b| b.size).sum();
            prop_assert!(left <= limit.max(protected_size));
        }
    }

    #[test]
    fn removing_a_blob_drops_its_chunks_but_not_a_sharing_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = dir.path().join("a");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        let id = store.import_copy(&a).unwrap();
        let m = store.manifest(&id).unwrap();
        let freed = store.remove_blob(&id).unwrap();
        assert_eq!(freed, data.len() as u64);
        assert!(!store.has_blob(&id));
        assert!(store.read_chunk(&m.chunks[0].id).is_none());
        assert!(store.blob_uses().unwrap().is_empty());
    }
}
