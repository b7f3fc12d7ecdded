//! Dedup at rest: every chunk is stored once, however many blobs share it.
//!
//! A blob in use (a running job's scene, a result not yet delivered) is a whole file at
//! `blobs/<id>`, so renderers can hard-link it. A blob nobody is using any more can be
//! *compacted*: its file is removed and the chunks no other whole file holds go to
//! `blobs/chunks/<chunk id>` ("loose" chunks). What is left of it is its manifest and a mark
//! in the `compact` tree (with its last use). This is what makes a resubmitted project cheap
//! on disk as well as on the wire: the old version of an edited file shrinks to the chunks
//! the new version does not share.
//!
//! Invariant: every chunk of every kept blob (whole or compact) is readable through
//! [`Store::read_chunk`] — from the file the chunk index points at, from another whole file,
//! or from its loose file. Each step below keeps it: a chunk is written loose *before* the
//! last file holding it is removed, and index entries are repointed or dropped (a reader
//! whose index entry has just gone stale falls back to the loose file).
//!
//! A compact blob becomes whole again when it is needed ([`Store::materialize`]): its chunks
//! are assembled locally, no network involved.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::blobs::ChunkLoc;
use super::{Store, StoreError};
use crate::ids::{BlobId, ChunkId};
use crate::transfer::manifest::Manifest;

/// Compact a whole blob only when at least this fraction of its bytes lies elsewhere too.
const MIN_SHARED_FRACTION: u64 = 4; // 1/4

/// Which whole blob files hold each chunk (built from manifests at the start of a collection).
pub(crate) struct Holders {
    by_chunk: HashMap<ChunkId, Vec<BlobId>>,
}

impl Holders {
    fn holds_elsewhere(&self, c: &ChunkId, not: &BlobId) -> Option<BlobId> {
        self.by_chunk
            .get(c)
            .and_then(|v| v.iter().find(|b| *b != not).copied())
    }

    fn forget(&mut self, blob: &BlobId, m: &Manifest) {
        for c in &m.chunks {
            if let Some(v) = self.by_chunk.get_mut(&c.id) {
                v.retain(|b| b != blob);
                if v.is_empty() {
                    self.by_chunk.remove(&c.id);
                }
            }
        }
    }
}

impl Store {
    pub(crate) fn loose_dir(&self) -> PathBuf {
        self.blob_dir.join("chunks")
    }

    pub(crate) fn loose_path(&self, id: &ChunkId) -> PathBuf {
        self.loose_dir().join(id.to_hex())
    }

    /// Whether blob `id` has its whole file on disk.
    pub fn is_whole(&self, id: &BlobId) -> bool {
        self.blob_path(id).is_file()
    }

    /// Whether blob `id` is kept as chunks only.
    pub fn is_compact(&self, id: &BlobId) -> bool {
        self.compact.contains_key(id.0).unwrap_or(false)
    }

    /// Compact blobs with their last use.
    pub(crate) fn compact_blobs(&self) -> Vec<(BlobId, SystemTime)> {
        self.compact
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let id = BlobId(<[u8; 32]>::try_from(&k[..]).ok()?);
                let secs = u64::from_be_bytes(<[u8; 8]>::try_from(&v[..]).ok()?);
                Some((id, SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
            })
            .collect()
    }

    pub(crate) fn mark_compact(
        &self,
        id: &BlobId,
        last_used: SystemTime,
    ) -> Result<(), StoreError> {
        let secs = last_used
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.compact.insert(id.0, &secs.to_be_bytes())?;
        Ok(())
    }

    /// Reads a loose chunk, verified.
    pub(crate) fn read_loose(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let buf = std::fs::read(self.loose_path(id)).ok()?;
        (ChunkId::of(&buf) == *id).then_some(buf)
    }

    /// Writes chunk `id` loose (atomically), reading it from wherever it is now.
    fn loosen(&self, id: &ChunkId) -> Result<u64, StoreError> {
        let path = self.loose_path(id);
        if path.is_file() {
            return Ok(0);
        }
        let bytes = self
            .read_chunk(id)
            .ok_or_else(|| StoreError::Corrupt(format!("chunk {} is unreadable", id.short())))?;
        let tmp = self.temp_path();
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(bytes.len() as u64)
    }

    /// Makes blob `id` a whole file again if it is compact, and returns its path.
    pub fn materialize(&self, id: &BlobId) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(id);
        if path.is_file() {
            return Ok(path);
        }
        let m = self
            .manifest(id)
            .ok_or_else(|| StoreError::Corrupt(format!("blob {} is not stored", id.short())))?;
        let tmp = self.temp_path();
        {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for c in &m.chunks {
                let Some(bytes) = self.read_chunk(&c.id) else {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(StoreError::Corrupt(format!(
                        "chunk {} of blob {} is missing",
                        c.id.short(),
                        id.short()
                    )));
                };
                out.write_all(&bytes)?;
            }
            out.flush()?;
        }
        self.commit(&tmp, &m)?;
        Ok(path)
    }

    /// Which whole files hold which chunks.
    pub(crate) fn holders(&self, whole: &[BlobId]) -> Holders {
        let mut by_chunk: HashMap<ChunkId, Vec<BlobId>> = HashMap::new();
        for b in whole {
            if let Some(m) = self.manifest(b) {
                for c in &m.chunks {
                    let v = by_chunk.entry(c.id).or_default();
                    if !v.contains(b) {
                        v.push(*b);
                    }
                }
            }
        }
        Holders { by_chunk }
    }

    /// Removes whole file `id` after writing loose every chunk of it that `keep` needs and no
    /// other whole file holds; repoints or drops index entries that pointed at it.
    fn drop_whole_file(
        &self,
        id: &BlobId,
        m: &Manifest,
        holders: &mut Holders,
        keep: impl Fn(&ChunkId) -> bool,
    ) -> Result<(), StoreError> {
        for (c, other) in m
            .chunks
            .iter()
            .map(|c| (c, holders.holds_elsewhere(&c.id, id)))
        {
            if other.is_none() && keep(&c.id) {
                self.loosen(&c.id)?;
            }
        }
        holders.forget(id, m);
        for c in &m.chunks {
            let loc = self
                .chunks
                .get(c.id.0)?
                .and_then(|v| postcard::from_bytes::<ChunkLoc>(&v).ok());
            if loc.is_some_and(|l| l.blob == *id) {
                self.chunks.remove(c.id.0)?;
                if let Some(other) = holders.holds_elsewhere(&c.id, id)
                    && let Some(m2) = self.manifest(&other)
                    && let Some((offset, _)) = m2.offsets().find(|(_, r)| r.id == c.id)
                {
                    let loc = ChunkLoc {
                        blob: other,
                        offset,
                        len: c.len,
                    };
                    let bytes = postcard::to_stdvec(&loc)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    self.chunks.insert(c.id.0, bytes)?;
                }
            }
        }
        match std::fs::remove_file(self.blob_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Compacts whole blob `id` when enough of it is held elsewhere. Returns the bytes the
    /// store no longer holds twice (0 when it was left whole).
    pub(crate) fn compact_one(
        &self,
        id: &BlobId,
        holders: &mut Holders,
    ) -> Result<u64, StoreError> {
        let Some(m) = self.manifest(id) else {
            return Ok(0);
        };
        let path = self.blob_path(id);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(0);
        };
        let shared: u64 = m
            .chunks
            .iter()
            .filter(|c| {
                holders.holds_elsewhere(&c.id, id).is_some() || self.loose_path(&c.id).is_file()
            })
            .map(|c| c.len as u64)
            .sum();
        if shared == 0 || shared * MIN_SHARED_FRACTION < m.size {
            return Ok(0);
        }
        let last_used = meta.modified().unwrap_or(SystemTime::now());
        // Marked first: a crash after this leaves a compact blob whose chunks are all still
        // readable (from its file, which goes last).
        self.mark_compact(id, last_used)?;
        self.drop_whole_file(id, &m, holders, |_| true)?;
        Ok(shared)
    }

    /// Removes blob `id` (whole or compact), first writing loose every chunk of it that a
    /// compact blob in `needed` still uses and no other whole file holds.
    pub(crate) fn evict(
        &self,
        id: &BlobId,
        holders: &mut Holders,
        needed: &HashSet<ChunkId>,
    ) -> Result<(), StoreError> {
        if let Some(m) = self.manifest(id)
            && self.is_whole(id)
        {
            self.drop_whole_file(id, &m, holders, |c| needed.contains(c))?;
        }
        self.compact.remove(id.0)?;
        self.manifests.remove(id.0)?;
        Ok(())
    }

    /// Every chunk the compact blobs not in `except` need (they have no file of their own).
    pub(crate) fn needed_by_compact(&self, except: &HashSet<BlobId>) -> HashSet<ChunkId> {
        self.compact_blobs()
            .iter()
            .filter(|(b, _)| !except.contains(b))
            .filter_map(|(b, _)| self.manifest(b))
            .flat_map(|m| m.chunks.into_iter().map(|c| c.id))
            .collect()
    }

    /// Removes loose chunks no compact blob needs, or that a whole file holds anyway.
    /// Returns the bytes freed.
    pub(crate) fn sweep_loose(
        &self,
        needed: &HashSet<ChunkId>,
        holders: &Holders,
    ) -> Result<u64, StoreError> {
        let mut freed = 0;
        for e in std::fs::read_dir(self.loose_dir())? {
            let e = e?;
            let Ok(id) = e.file_name().to_string_lossy().parse::<ChunkId>() else {
                continue;
            };
            let whole_has = holders.by_chunk.contains_key(&id);
            if !needed.contains(&id) || whole_has {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(e.path()).is_ok() {
                    freed += len;
                }
            }
        }
        Ok(freed)
    }

    /// Bytes of loose chunks on disk.
    pub(crate) fn loose_bytes(&self) -> u64 {
        std::fs::read_dir(self.loose_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::net::{BlobRequest, BlobResponse, BlobServer};

    /// A pseudo-random file of `len` bytes, and `variant` of it: one 4 KiB region rewritten.
    fn data(len: usize, variant: u8) -> Vec<u8> {
        let mut v = crate::transfer::manifest::noise(len, 0x9e37_79b9_7f4a_7c15);
        if variant > 0 {
            let at = (variant as usize * 397_000) % (len - 4096);
            v[at..at + 4096].fill(variant);
        }
        v
    }

    fn import(store: &Store, dir: &std::path::Path, bytes: &[u8]) -> BlobId {
        let p = dir.join("src");
        std::fs::write(&p, bytes).unwrap();
        store.import_copy(&p).unwrap()
    }

    #[test]
    fn an_old_version_shrinks_to_what_it_does_not_share_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let (a, b) = (data(4 << 20, 0), data(4 << 20, 1));
        let ia = import(&store, dir.path(), &a);
        let ib = import(&store, dir.path(), &b);
        assert_eq!(store.disk_bytes(), 8 << 20);

        let r = store
            .collect(&[ib].into(), store.pin_mark(), u64::MAX)
            .unwrap();
        assert_eq!((r.blobs_compacted, r.blobs_removed), (1, 0));
        assert!(store.is_compact(&ia) && store.has_blob(&ia) && !store.is_whole(&ia));
        let kept = store.disk_bytes();
        assert!(
            kept < (4 << 20) + (2 << 20),
            "two versions take {kept} bytes on disk"
        );
        assert_eq!(r.bytes_kept, kept);

        // The new version goes; the old one keeps every chunk it needs.
        store.remove_blob(&ib).unwrap();
        assert!(!store.has_blob(&ib));
        assert_eq!(store.read_blob(&ia, u64::MAX).unwrap(), a);
        let path = store.materialize(&ia).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), a);
        assert!(store.is_whole(&ia) && !store.is_compact(&ia));
        // Once whole again, its loose chunks are redundant and swept.
        store
            .collect(&[ia].into(), store.pin_mark(), u64::MAX)
            .unwrap();
        assert_eq!(store.disk_bytes(), 4 << 20);
    }

    #[test]
    fn unrelated_blobs_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let ia = import(&store, dir.path(), &data(1 << 20, 0));
        let ib = import(&store, dir.path(), &vec![3u8; 1 << 20]);
        let r = store
            .collect(&HashSet::new(), store.pin_mark(), u64::MAX)
            .unwrap();
        assert_eq!(r.blobs_compacted, 0);
        assert!(store.is_whole(&ia) && store.is_whole(&ib));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Import(u8),
        Collect { protect: u8, limit_mib: u8 },
        Materialize(u8),
        Remove(u8),
        ServeAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..5).prop_map(Op::Import),
            (any::<u8>(), 0u8..12)
                .prop_map(|(protect, limit_mib)| Op::Collect { protect, limit_mib }),
            (0u8..5).prop_map(Op::Materialize),
            (0u8..5).prop_map(Op::Remove),
            Just(Op::ServeAll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever mix of imports, collections, rebuilds and removals: every blob the store
        /// says it has reads back exactly, whole or compact, and every chunk of it is served.
        #[test]
        fn every_kept_blob_reads_back_exactly(ops in proptest::collection::vec(op(), 1..14)) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("data")).unwrap();
            let versions: Vec<Vec<u8>> = (0..5).map(|v| data(1 << 20, v)).collect();
            let mut ids: BTreeMap<u8, BlobId> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Import(v) => {
                        ids.insert(v, import(&store, dir.path(), &versions[v as usize]));
                    }
                    Op::Collect { protect, limit_mib } => {
                        let protected = ids.iter()
                            .filter(|(v, id)| protect & (1 << **v) != 0 && store.has_blob(id))
                            .map(|(_, id)| *id).collect();
                        store.collect(&protected, store.pin_mark(), (limit_mib as u64) << 20).unwrap();
                        for id in &protected {
                            prop_assert!(store.has_blob(id), "a protected blob went");
                        }
                    }
                    Op::Materialize(v) => {
                        if let Some(id) = ids.get(&v).filter(|id| store.has_blob(id)) {
                            let p = store.materialize(id).unwrap();
                            prop_assert_eq!(&std::fs::read(p).unwrap(), &versions[v as usize]);
                        }
                    }
                    Op::Remove(v) => {
                        if let Some(id) = ids.get(&v) {
                            store.remove_blob(id).unwrap();
                            prop_assert!(!store.has_blob(id));
                        }
                    }
                    Op::ServeAll => {
                        for id in ids.values().filter(|id| store.has_blob(id)) {
                            prop_assert!(matches!(
                                store.serve(&BlobRequest::Manifest(*id)),
                                BlobResponse::Manifest(_)
                            ));
                        }
                    }
                }
                for (v, id) in &ids {
                    if !store.has_blob(id) {
                        continue;
                    }
                    let m = store.manifest(id).unwrap();
                    for c in &m.chunks {
                        prop_assert!(store.read_chunk(&c.id).is_some(), "chunk of v{} lost", v);
                    }
                    prop_assert_eq!(
                        &store.read_blob(id, u64::MAX).unwrap(),
                        &versions[*v as usize]
                    );
                }
            }
        }
    }
}
