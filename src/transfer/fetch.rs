//! Fetching a blob from peers: manifest first (verified against the blob id), then chunks in
//! parallel from several providers, each verified against its hash before it is written.
//!
//! - Chunks already held locally (in any blob, or in this blob's partial file left by an
//!   interrupted fetch) are copied or kept, not fetched.
//! - Each chunk written is indexed at once, so peers fetching the same blob get it from us.
//! - A chunk is first asked of the provider its hash (plus a rotation random per fetch)
//!   picks, so fetchers spread over the providers instead of queueing on the first one.
//! - A provider that sends a chunk that does not hash right is dropped as a source for the
//!   rest of the fetch (and of its project, when the [`FetchCtx`] is shared) and logged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use libp2p::PeerId;
use tracing::{debug, warn};

use super::manifest::{ChunkRef, Manifest};
use crate::ids::{BlobId, ChunkId};
use crate::net::{BlobRequest, BlobResponse, Client};
use crate::store::{Store, StoreError};

/// Chunk requests in flight at once for one blob.
const PARALLEL_CHUNKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no peer could provide blob {0}")]
    NoProvider(String),
    #[error("chunk {chunk} of blob {blob} could not be fetched from any peer")]
    Chunk { blob: String, chunk: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes a fetch moved: over the network, and found locally.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub fetched: AtomicU64,
    pub reused: AtomicU64,
}

impl FetchStats {
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
}

/// What one or more blob fetches share: the peers to ask, the ones caught lying, counters.
#[derive(Clone)]
pub struct FetchCtx {
    pub client: Client,
    pub store: Store,
    providers: Arc<[PeerId]>,
    bad: Arc<Mutex<HashSet<PeerId>>>,
    pub stats: Arc<FetchStats>,
    rotation: usize,
}

impl FetchCtx {
    pub fn new(client: Client, store: Store, providers: Vec<PeerId>) -> Self {
        FetchCtx {
            client,
            store,
            providers: providers.into(),
            bad: Arc::default(),
            stats: Arc::default(),
            rotation: rand::random::<u32>() as usize,
        }
    }

    pub fn with_stats(mut self, stats: Arc<FetchStats>) -> Self {
        self.stats = stats;
        self
    }

    fn is_bad(&self, p: &PeerId) -> bool {
        self.bad.lock().map(|b| b.contains(p)).unwrap_or(false)
    }

    fn mark_bad(&self, p: PeerId) {
        if let Ok(mut b) = self.bad.lock() {
            b.insert(p);
        }
    }

    /// Makes blob `id` local. Returns the local path.
    pub async fn fetch(&self, id: BlobId) -> Result<PathBuf, FetchError> {
        let store = &self.store;
        if store.has_blob(&id) {
            let path = store.blob_path(&id);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.stats.reused.fetch_add(len, Ordering::Relaxed);
            return Ok(path);
        }
        let manifest = match store.manifest(&id) {
            // Known from an earlier, interrupted fetch.
            Some(m) => m,
            None => self.fetch_manifest(id).await?,
        };
        let partial = store.partial_path(&id);
        let resume = std::fs::metadata(&partial).is_ok_and(|m| m.len() == manifest.size);
        if !resume {
            let f = std::fs::File::create(&partial)?;
            f.set_len(manifest.size)?;
        }
        self.fill(&manifest, &partial, id, resume).await?;
        store.commit(&partial, &manifest)?;
        Ok(store.blob_path(&id))
    }

    async fn fetch_manifest(&self, id: BlobId) -> Result<Manifest, FetchError> {
        for p in self.providers.iter().filter(|p| !self.is_bad(p)) {
            match self.client.blob(*p, BlobRequest::Manifest(id)).await {
                Ok(BlobResponse::Manifest(bytes)) => match Manifest::decode_verified(&bytes, &id) {
                    Ok(m) => {
                        // Remember it, so a restart resumes without asking again.
                        self.store.put_manifest(&id, &m)?;
                        return Ok(m);
                    }
                    Err(e) => {
                        warn!(peer = %p, "bad manifest for {}: {e}; not asking it again", id.short());
                        self.mark_bad(*p);
                    }
                },
                Ok(_) => debug!(peer = %p, "peer does not have blob {}", id.short()),
                Err(e) => debug!("{e}"),
            }
        }
        Err(FetchError::NoProvider(id.short()))
    }

    async fn fill(
        &self,
        manifest: &Manifest,
        partial: &std::path::Path,
        id: BlobId,
        resume: bool,
    ) -> Result<(), FetchError> {
        let store = &self.store;
        let mut remote: Vec<(u64, ChunkRef)> = Vec::new();
        for (offset, c) in manifest.offsets() {
            if resume && Store::read_at_verified(partial, offset, c) {
                self.stats.reused.fetch_add(c.len as u64, Ordering::Relaxed);
                store.index_partial_chunk(&id, offset, c)?;
                continue;
            }
            match store.read_chunk(&c.id) {
                Some(bytes) => {
                    Store::write_at(partial, offset, &bytes)?;
                    self.stats.reused.fetch_add(c.len as u64, Ordering::Relaxed);
                }
                None => remote.push((offset, c.clone())),
            }
        }
        let mut results = futures::stream::iter(remote)
            .map(
                |(offset, c)| async move { self.fetch_chunk(&c, id).await.map(|b| (offset, c, b)) },
            )
            .buffer_unordered(PARALLEL_CHUNKS);
        while let Some(r) = results.next().await {
            let (offset, c, bytes) = r?;
            Store::write_at(partial, offset, &bytes)?;
            store.index_partial_chunk(&id, offset, &c)?;
            self.stats
                .fetched
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Fetches one chunk, starting with a provider picked by the chunk's hash and this fetch's
    /// rotation so chunks spread over providers, then falling back to the others. Every answer
    /// is checked against the hash.
    async fn fetch_chunk(&self, c: &ChunkRef, blob: BlobId) -> Result<Vec<u8>, FetchError> {
        let n = self.providers.len();
        let mut spread = [0u8; 8];
        spread.copy_from_slice(&c.id.0[..8]);
        let start = (u64::from_le_bytes(spread) as usize).wrapping_add(self.rotation);
        for k in 0..n {
            let p = self.providers[start.wrapping_add(k) % n];
            if self.is_bad(&p) {
                continue;
            }
            match self.client.blob(p, BlobRequest::Chunk(c.id)).await {
                Ok(BlobResponse::Chunk(bytes))
                    if bytes.len() == c.len as usize && ChunkId::of(&bytes) == c.id =>
                {
                    return Ok(bytes);
                }
                Ok(BlobResponse::Chunk(_)) => {
                    warn!(peer = %p, chunk = %c.id.short(), blob = %blob.short(),
                        "peer sent a corrupt chunk; no longer fetching from it");
                    self.mark_bad(p);
                }
                Ok(_) => {}
                Err(e) => debug!("{e}"),
            }
        }
        Err(FetchError::Chunk {
            blob: blob.short(),
            chunk: c.id.short(),
        })
    }
}

/// Makes blob `id` local, asking `providers`. Returns the local path.
pub async fn fetch(
    client: &Client,
    store: &Store,
    id: BlobId,
    providers: &[PeerId],
) -> Result<PathBuf, FetchError> {
    FetchCtx::new(client.clone(), store.clone(), providers.to_vec())
        .fetch(id)
        .await
}
