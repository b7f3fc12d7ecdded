//! Persistent state: a sled database for jobs, frame states and local bookkeeping, and
//! blob files on disk named by their id (see [`blobs`]).
//!
//! Trees:
//! - `meta`: `incarnation` (u64 BE, bumped at every start), `ledger_format` (u32 BE,
//!   [`LEDGER_FORMAT`])
//! - `jobs`: JobId → postcard `JobSpec`
//! - `frames`: JobId ‖ frame (u32 BE) → postcard `FrameState`
//! - `local`: JobId → postcard [`LocalJob`] (jobs submitted here: where their frames go)
//! - `written`: JobId ‖ frame → BlobId of the frame file written to the output dir
//! - `peers`: PeerId bytes → postcard list of multiaddr strings
//! - `manifests`: BlobId → manifest bytes; `chunks`: ChunkId → [`blobs::ChunkLoc`]
//! - `controls`: JobId → postcard `JobControl` (jobs paused, cancelled or re-prioritised)
//! - `compact`: BlobId → last use (u64 BE seconds) of blobs kept as chunks only ([`dedup`])
//! - `archive`: JobId → postcard [`ArchivedJob`] (jobs archived here; their frame states stay
//!   in `frames` but are not loaded)
//! - `forgotten`: JobId → empty (jobs removed with `meshd rm`)

pub mod blobs;
pub mod dedup;
pub mod gc;
pub mod pins;
mod served;
mod upgrade;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ids::{BlobId, JobId};
use crate::ledger::{ArchivedJob, FrameState, FrameUpdate, JobSpec, Ledger};
pub use pins::Pin;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Manifest(#[from] crate::transfer::manifest::ManifestError),
}

/// A job submitted from this machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalJob {
    /// Where finished frames are written.
    pub out_dir: PathBuf,
}

/// Version of the ledger's encoding in the database (`meta` key `ledger_format`): 2 since
/// ledger entries are signed, 3 since results name a thumbnail (see [`upgrade`]).
pub const LEDGER_FORMAT: u32 = 3;

/// Peers whose addresses are kept on disk.
pub const MAX_STORED_PEERS: usize = 256;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    jobs: sled::Tree,
    frames: sled::Tree,
    local: sled::Tree,
    written: sled::Tree,
    peers: sled::Tree,
    /// When each peer's addresses were last written (a sequence number), to forget the
    /// oldest past [`MAX_STORED_PEERS`].
    peer_written: sled::Tree,
    pub(crate) manifests: sled::Tree,
    pub(crate) chunks: sled::Tree,
    compact: sled::Tree,
    controls: sled::Tree,
    archive: sled::Tree,
    forgotten: sled::Tree,
    blob_dir: PathBuf,
    /// Blobs kept from collections while their references are on the way (`pins.rs`).
    pins: pins::Shared,
    /// How recently served chunks went out (`served.rs`).
    served: std::sync::Arc<served::ServedChunks>,
}

fn frame_key(job: &JobId, frame: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&job.0);
    k[32..].copy_from_slice(&frame.to_be_bytes());
    k
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Decodes a stored frame state.
fn decode_frame(bytes: &[u8]) -> Result<FrameState, StoreError> {
    decode::<FrameState>("frame", bytes)
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            .flush_every_ms(Some(200))
            .open()?;
        let blob_dir = data_dir.join("blobs");
        std::fs::create_dir_all(blob_dir.join("tmp"))?;
        std::fs::create_dir_all(blob_dir.join("partial"))?;
        std::fs::create_dir_all(blob_dir.join("chunks"))?;
        let store = Store {
            meta: db.open_tree("meta")?,
            jobs: db.open_tree("jobs")?,
            frames: db.open_tree("frames")?,
            local: db.open_tree("local")?,
            written: db.open_tree("written")?,
            peers: db.open_tree("peers")?,
            peer_written: db.open_tree("peer_written")?,
            manifests: db.open_tree("manifests")?,
            chunks: db.open_tree("chunks")?,
            compact: db.open_tree("compact")?,
            controls: db.open_tree("controls")?,
            archive: db.open_tree("archive")?,
            forgotten: db.open_tree("forgotten")?,
            db,
            blob_dir,
            pins: Default::default(),
            served: Default::default(),
        };
        store.upgrade()?;
        Ok(store)
    }

    /// Increments and returns this daemon's start counter.
    pub fn next_incarnation(&self) -> Result<u64, StoreError> {
        let v = self.meta.update_and_fetch("incarnation", |old| {
            let n = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        let bytes: [u8; 8] = v
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt("incarnation".into()))?;
        self.db.flush()?;
        Ok(u64::from_be_bytes(bytes))
    }

    pub fn put_job(&self, spec: &JobSpec) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.jobs.insert(spec.id().0, bytes)?;
        Ok(())
    }

    pub fn put_control(
        &self,
        job: &JobId,
        control: &crate::ledger::JobControl,
    ) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(control).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.controls.insert(job.0, bytes)?;
        Ok(())
    }

    pub fn put_frame(&self, job: &JobId, frame: u32, state: &FrameState) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.frames.insert(frame_key(job, frame), bytes)?;
        Ok(())
    }

    /// Rebuilds the ledger from disk: active jobs with their frame states, archived jobs as
    /// summaries, forgotten jobs as ids. Entries that no longer decode are skipped with a
    /// warning. Reads frame states of active jobs only.
    pub fn load_ledger(&self) -> Result<Ledger, StoreError> {
        let mut ledger = Ledger::new();
        for item in self.forgotten.iter() {
            let (k, _) = item?;
            if let Ok(id) = <[u8; 32]>::try_from(&k[..]) {
                ledger.forget(&JobId(id));
            }
        }
        for item in self.archive.iter() {
            let (_, v) = item?;
            match decode::<ArchivedJob>("archived job", &v) {
                Ok(a) => ledger.restore_archived(a),
                Err(e) => warn!("skipping a stored archived job: {e}"),
            }
        }
        for item in self.jobs.iter() {
            let (_, v) = item?;
            match decode::<JobSpec>("job", &v).map(|s| ledger.insert_signed_job(s)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!("skipping stored job: {e}"),
                Err(e) => warn!("skipping stored job: {e}"),
            }
        }
        for item in self.controls.iter() {
            let (k, v) = item?;
            let (Ok(id), Ok(control)) = (
                <[u8; 32]>::try_from(&k[..]),
                decode::<crate::ledger::JobControl>("control", &v),
            ) else {
                warn!("skipping a stored job control that does not decode");
                continue;
            };
            if let Err(e) = ledger.apply_signed_control(&JobId(id), &control) {
                warn!("skipping a stored job control: {e}");
            }
        }
        let active: Vec<JobId> = ledger.jobs().map(|(id, _)| *id).collect();
        for id in active {
            for update in self.job_frames(&id)? {
                if let Err(e) = ledger.apply_signed(&update) {
                    warn!("skipping stored frame: {e}");
                }
            }
        }
        Ok(ledger)
    }

    /// The stored frame states of one job.
    pub fn job_frames(&self, job: &JobId) -> Result<Vec<FrameUpdate>, StoreError> {
        let mut out = Vec::new();
        for item in self.frames.scan_prefix(job.0) {
            let (k, v) = item?;
            if k.len() != 36 {
                continue;
            }
            let frame = u32::from_be_bytes([k[32], k[33], k[34], k[35]]);
            match decode_frame(&v) {
                Ok(state) => out.push(FrameUpdate {
                    job: *job,
                    frame,
                    state,
                }),
                Err(e) => warn!("skipping stored frame: {e}"),
            }
        }
        Ok(out)
    }

    /// The stored state of one frame (of an archived job, say).
    pub fn frame_state(&self, job: &JobId, frame: u32) -> Result<Option<FrameState>, StoreError> {
        let mut key = [0u8; 36];
        key[..32].copy_from_slice(&job.0);
        key[32..].copy_from_slice(&frame.to_be_bytes());
        match self.frames.get(key)? {
            Some(v) => Ok(Some(decode_frame(&v)?)),
            None => Ok(None),
        }
    }

    /// Records that job `id` is archived here (its frame states stay on disk).
    pub fn put_archived(&self, id: &JobId, job: &ArchivedJob) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.archive.insert(id.0, bytes)?;
        Ok(())
    }

    /// Job `id` is active here again.
    pub fn unarchive(&self, id: &JobId) -> Result<(), StoreError> {
        self.archive.remove(id.0)?;
        Ok(())
    }

    /// `meshd rm`: drops everything stored about job `id` but its id, kept so that it is
    /// never added again.
    pub fn forget_job(&self, id: &JobId) -> Result<(), StoreError> {
        self.forgotten.insert(id.0, &[])?;
        for tree in [&self.jobs, &self.controls, &self.archive, &self.local] {
            tree.remove(id.0)?;
        }
        for tree in [&self.frames, &self.written] {
            for item in tree.scan_prefix(id.0) {
                let (k, _) = item?;
                tree.remove(k)?;
            }
        }
        Ok(())
    }

    pub fn put_local_job(&self, job: &JobId, local: &LocalJob) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(local).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.local.insert(job.0, bytes)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn local_jobs(&self) -> Result<BTreeMap<JobId, LocalJob>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.local.iter() {
            let (k, v) = item?;
            let Ok(id) = <[u8; 32]>::try_from(&k[..]) else {
                continue;
            };
            out.insert(JobId(id), decode("local job", &v)?);
        }
        Ok(out)
    }

    /// Frames of `job` already written to its output dir, with the blob written.
    pub fn written_frames(&self, job: &JobId) -> Result<BTreeMap<u32, BlobId>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.written.scan_prefix(job.0) {
            let (k, v) = item?;
            if k.len() != 36 {
                continue;
            }
            let frame = u32::from_be_bytes([k[32], k[33], k[34], k[35]]);
            let Ok(blob) = <[u8; 32]>::try_from(&v[..]) else {
                continue;
            };
            out.insert(frame, BlobId(blob));
        }
        Ok(out)
    }

    /// Forgets which frames of `job` were written (they go to a new output dir).
    pub fn clear_written(&self, job: &JobId) -> Result<(), StoreError> {
        for item in self.written.scan_prefix(job.0) {
            let (k, _) = item?;
            self.written.remove(k)?;
        }
        Ok(())
    }

    pub fn mark_written(&self, job: &JobId, frame: u32, blob: &BlobId) -> Result<(), StoreError> {
        self.written.insert(frame_key(job, frame), &blob.0)?;
        Ok(())
    }

    /// Remembers where `peer` listens (at most 16 addresses), for redials after a restart.
    /// At most [`MAX_STORED_PEERS`] peers are kept: adding one more forgets the one written
    /// longest ago.
    pub fn put_peer_addrs(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Result<(), StoreError> {
        let list: Vec<String> = addrs.iter().take(16).map(|a| a.to_string()).collect();
        let bytes = postcard::to_stdvec(&list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = peer.to_bytes();
        let seq = self.db.generate_id()?;
        if self.peers.insert(&key, bytes)?.is_none() && self.peers.len() > MAX_STORED_PEERS {
            // The oldest write has the least sequence number (none: written by an older
            // version, older than all).
            let written = |k: &[u8]| -> u64 {
                self.peer_written
                    .get(k)
                    .ok()
                    .flatten()
                    .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                    .unwrap_or(0)
            };
            let oldest = self
                .peers
                .iter()
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.as_ref() != key.as_slice())
                .min_by_key(|k| written(k));
            if let Some(k) = oldest {
                self.peers.remove(&k)?;
                self.peer_written.remove(&k)?;
            }
        }
        self.peer_written.insert(&key, &seq.to_be_bytes())?;
        Ok(())
    }

    pub fn peer_addrs(&self) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (k, v) = item?;
            let Ok(peer) = PeerId::from_bytes(&k) else {
                continue;
            };
            let list: Vec<String> = decode("peer", &v)?;
            out.push((peer, list.iter().filter_map(|a| a.parse().ok()).collect()));
        }
        Ok(out)
    }

    /// Remembers addresses to dial at every start (from tickets and `--peer`), at most 64.
    pub fn add_bootstrap(&self, addrs: &[Multiaddr]) -> Result<(), StoreError> {
        let mut all = self.bootstrap()?;
        for a in addrs {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        let keep = all.len().saturating_sub(64);
        let list: Vec<String> = all[keep..].iter().map(|a| a.to_string()).collect();
        let bytes = postcard::to_stdvec(&list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.meta.insert("bootstrap", bytes)?;
        Ok(())
    }

    pub fn bootstrap(&self) -> Result<Vec<Multiaddr>, StoreError> {
        let Some(bytes) = self.meta.get("bootstrap")? else {
            return Ok(Vec::new());
        };
        let list: Vec<String> = decode("bootstrap", &bytes)?;
        Ok(list.iter().filter_map(|a| a.parse().ok()).collect())
    }

    /// The cloud actor's rental records (`cloud::rental`).
    pub fn cloud_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("cloud")?)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_peers_are_capped_and_the_oldest_written_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/4747".parse().unwrap();
        let peers: Vec<PeerId> = (0..MAX_STORED_PEERS + 10)
            .map(|_| {
                libp2p::identity::Keypair::generate_ed25519()
                    .public()
                    .to_peer_id()
            })
            .collect();
        for p in &peers {
            store
                .put_peer_addrs(p, std::slice::from_ref(&addr))
                .unwrap();
            // The first peer is seen again and again: it stays.
            store
                .put_peer_addrs(&peers[0], std::slice::from_ref(&addr))
                .unwrap();
        }
        let kept: Vec<PeerId> = store
            .peer_addrs()
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(kept.len(), MAX_STORED_PEERS);
        assert!(kept.contains(&peers[0]));
        assert!(kept.contains(peers.last().unwrap()));
        assert!(!kept.contains(&peers[1]), "the oldest written is gone");
    }

    #[test]
    fn forged_entries_in_the_database_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sub = libp2p::identity::Keypair::generate_ed25519();
        let mut spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        spec.submitter = sub.public().to_peer_id();
        crate::ledger::sign::sign_job(&sub, &mut spec);
        let id = spec.id();
        store.put_job(&spec).unwrap();
        let renderer = libp2p::identity::Keypair::generate_ed25519();
        let good = crate::ledger::sign::done(
            &renderer,
            &id,
            1,
            1,
            1,
            crate::ledger::sign::Rendered {
                output: BlobId::of(b"a"),
                thumb: None,
                render_ms: 5,
            },
        );
        let mut forged = crate::ledger::sign::done(
            &renderer,
            &id,
            2,
            1,
            1,
            crate::ledger::sign::Rendered {
                output: BlobId::of(b"b"),
                thumb: None,
                render_ms: 5,
            },
        );
        forged.output = BlobId::of(b"not what was signed");
        store
            .put_frame(&id, 1, &FrameState::from_done(good.clone()))
            .unwrap();
        store
            .put_frame(&id, 2, &FrameState::from_done(forged))
            .unwrap();
        // A job whose signature is not its submitter's is not loaded either.
        let mut unsigned = crate::ledger::state::tests::spec("1-9", 0, 2);
        unsigned.submitter = sub.public().to_peer_id();
        store.put_job(&unsigned).unwrap();

        let ledger = store.load_ledger().unwrap();
        let entry = ledger.job(&id).expect("the signed job loads");
        assert_eq!(
            entry.frames.get(&1).and_then(|s| s.canonical()),
            Some(&good)
        );
        assert!(
            !entry.frames.contains_key(&2),
            "the forged result is dropped"
        );
        assert!(ledger.job(&unsigned.id()).is_none());
    }
}
