//! Fetching a blob from peers: manifest first (verified against the blob id), then chunks in
//! parallel from several providers, each verified against its hash before it is written.
//!
//! - Chunks already held locally (in any blob, or in this blob's partial file left by an
//!   interrupted fetch) are copied or kept, not fetched.
//! - Each chunk written is indexed at once, so peers fetching the same blob get it from us.
//! - A single frame ([`fetch`]) asks its providers in the order given: the renderer first,
//!   then the likely replica holders, so a chunk is not asked of peers that cannot have it.
//! - Swarming (a project, [`FetchCtx::swarm`]): each fetch asks for its chunks in its own random order, so concurrent
//!   fetchers hold different chunks early. A chunk is asked first of the other peers
//!   (starting at one picked by the chunk's hash plus a rotation random per fetch), and of
//!   the *seeds* (the submitter) only when none of them has it. One fetch keeps at most
//!   [`SEED_SLOTS`] requests at the seeds; a chunk nobody else has yet waits and is asked
//!   again, so the seed's uplink sends each chunk about once and peers pass it on.
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
const PARALLEL_CHUNKS: usize = 32;
/// Chunk requests one fetch may have at the seeds at once while other peers may get the
/// chunks soon: the seeds' uplink then sends each chunk about once.
pub const SEED_SLOTS: usize = 2;
/// Other peers asked for a chunk per attempt before the seeds, when swarming: early in a
/// fetch few peers hold anything, and asking all of them one after another would cost a
/// round trip each.
const ASK_PER_ATTEMPT: usize = 4;
/// Attempts after which a chunk is asked of a seed however busy.
const MAX_DEFERRALS: u32 = 40;

/// What one chunk attempt gave.
enum Got {
    Bytes(Vec<u8>),
    Deferred,
}

/// A taken seed request slot, given back when dropped.
struct SeedSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for SeedSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    #[error("blob {blob} is {size} bytes, over the {max} expected")]
    TooBig { blob: String, size: u64, max: u64 },
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
    /// Peers asked first (they may hold the blob, whole or in part).
    providers: Arc<[PeerId]>,
    /// Peers known to hold the blob whole (the submitter), asked when no `providers` has it.
    seeds: Arc<[PeerId]>,
    bad: Arc<Mutex<HashSet<PeerId>>>,
    pub stats: Arc<FetchStats>,
    /// Each chunk is asked first of a peer its hash picks (swarming), rather than of
    /// `providers` in the order given.
    spread: bool,
    rotation: usize,
    /// Requests at the seeds in flight (bounded by [`SEED_SLOTS`]).
    seed_requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Largest blob worth fetching (a thumbnail), checked against its manifest before any
    /// chunk is asked for.
    max_size: Option<u64>,
}

impl FetchCtx {
    /// Asks `providers` in the order given, most likely holder first (a frame's renderer,
    /// then its likely replica holders); no seeds.
    pub fn new(client: Client, store: Store, providers: Vec<PeerId>) -> Self {
        FetchCtx {
            spread: false,
            ..Self::swarm(client, store, providers, Vec::new())
        }
    }

    /// Asks every one of `peers` for a chunk before the `seeds` (see [`SEED_SLOTS`]).
    pub fn swarm(client: Client, store: Store, peers: Vec<PeerId>, seeds: Vec<PeerId>) -> Self {
        let peers: Vec<PeerId> = peers.into_iter().filter(|p| !seeds.contains(p)).collect();
        FetchCtx {
            client,
            store,
            providers: peers.into(),
            seeds: seeds.into(),
            bad: Arc::default(),
            stats: Arc::default(),
            spread: true,
            rotation: rand::random::<u32>() as usize,
            seed_requests: Arc::default(),
            max_size: None,
        }
    }

    /// Refuses blobs larger than `max` bytes.
    pub fn with_max_size(mut self, max: u64) -> Self {
        self.max_size = Some(max);
        self
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
            // A compact blob is assembled from local chunks; if some turn out unreadable,
            // fetch it like any other.
            match store.materialize(&id) {
                Ok(path) => {
                    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    self.stats.reused.fetch_add(len, Ordering::Relaxed);
                    return Ok(path);
                }
                Err(e) => warn!("cannot rebuild blob {} locally: {e}", id.short()),
            }
        }
        let manifest = match store.manifest(&id) {
            // Known from an earlier, interrupted fetch.
            Some(m) => m,
            None => self.fetch_manifest(id).await?,
        };
        if let Some(max) = self.max_size.filter(|m| manifest.size > *m) {
            return Err(FetchError::TooBig {
                blob: id.short(),
                size: manifest.size,
                max,
            });
        }
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
        let all = self.seeds.iter().chain(self.providers.iter());
        for p in all.filter(|p| !self.is_bad(p)) {
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
        // A random order per fetch: concurrent fetchers hold different chunks early and
        // can serve them to each other.
        {
            use rand::seq::SliceRandom;
            remote.shuffle(&mut rand::thread_rng());
        }
        let mut queue: std::collections::VecDeque<(u64, ChunkRef, u32)> =
            remote.into_iter().map(|(o, c)| (o, c, 0)).collect();
        let mut inflight = futures::stream::FuturesUnordered::new();
        loop {
            while inflight.len() < PARALLEL_CHUNKS {
                let Some((offset, c, attempt)) = queue.pop_front() else {
                    break;
                };
                inflight.push(async move {
                    let got = self.fetch_chunk(&c, id, attempt).await;
                    (offset, c, attempt, got)
                });
            }
            let Some((offset, c, attempt, got)) = inflight.next().await else {
                break;
            };
            match got? {
                Got::Bytes(bytes) => {
                    Store::write_at(partial, offset, &bytes)?;
                    store.index_partial_chunk(&id, offset, &c)?;
                    self.stats
                        .fetched
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                // Nobody but the (busy) seeds has it yet: ask again later.
                Got::Deferred => queue.push_back((offset, c, attempt + 1)),
            }
        }
        Ok(())
    }

    /// Fetches one chunk. Swarming ([`FetchCtx::swarm`]): first from [`ASK_PER_ATTEMPT`] of
    /// the other peers (in [`ask_order`], a different few each attempt), then from a seed,
    /// if this fetch has fewer than [`SEED_SLOTS`] requests at the seeds; otherwise the chunk
    /// is deferred (a later attempt waits a little first). After [`MAX_DEFERRALS`] attempts
    /// a seed is asked regardless; when no seed has it, every other peer is asked. Ordered
    /// ([`FetchCtx::new`]): every provider in turn. Every answer is checked against the
    /// chunk's hash; a peer that sends wrong bytes is not asked again.
    async fn fetch_chunk(
        &self,
        c: &ChunkRef,
        blob: BlobId,
        attempt: u32,
    ) -> Result<Got, FetchError> {
        if attempt > 0 {
            let ms = (25 * attempt as u64).min(400);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let order = if self.spread {
            let turn = (attempt as usize).wrapping_mul(ASK_PER_ATTEMPT);
            ask_order(&self.providers, self.rotation.wrapping_add(turn), c)
        } else {
            self.providers.to_vec()
        };
        let live_peers = order.iter().filter(|p| !self.is_bad(p)).count();
        let first = if self.spread && !self.seeds.is_empty() {
            ASK_PER_ATTEMPT.min(order.len())
        } else {
            order.len()
        };
        for p in &order[..first] {
            if let Some(bytes) = self.ask(*p, c, blob).await {
                return Ok(Got::Bytes(bytes));
            }
        }
        if !self.seeds.is_empty() {
            let busy = self.seed_requests.fetch_add(1, Ordering::AcqRel);
            let _slot = SeedSlot(&self.seed_requests);
            if busy >= SEED_SLOTS && live_peers > 0 && attempt < MAX_DEFERRALS {
                return Ok(Got::Deferred);
            }
            for p in self.seeds.iter() {
                if let Some(bytes) = self.ask(*p, c, blob).await {
                    return Ok(Got::Bytes(bytes));
                }
            }
        }
        for p in &order[first..] {
            if let Some(bytes) = self.ask(*p, c, blob).await {
                return Ok(Got::Bytes(bytes));
            }
        }
        Err(FetchError::Chunk {
            blob: blob.short(),
            chunk: c.id.short(),
        })
    }

    /// One chunk request to `p`: the verified bytes, or `None` (not there, failed, or wrong
    /// bytes, after which `p` is not asked again).
    async fn ask(&self, p: PeerId, c: &ChunkRef, blob: BlobId) -> Option<Vec<u8>> {
        if self.is_bad(&p) {
            return None;
        }
        match self.client.blob(p, BlobRequest::Chunk(c.id)).await {
            Ok(BlobResponse::Chunk(bytes))
                if bytes.len() == c.len as usize && ChunkId::of(&bytes) == c.id =>
            {
                Some(bytes)
            }
            Ok(BlobResponse::Chunk(_)) => {
                warn!(peer = %p, chunk = %c.id.short(), blob = %blob.short(),
                    "peer sent a corrupt chunk; no longer fetching from it");
                self.mark_bad(p);
                None
            }
            Ok(_) => None,
            Err(e) => {
                debug!("{e}");
                None
            }
        }
    }
}

/// The order in which to ask `peers` for chunk `c`: rotated to start at a peer picked by the
/// chunk's hash and `rotation`, so requests spread over the peers.
pub fn ask_order(peers: &[PeerId], rotation: usize, c: &ChunkRef) -> Vec<PeerId> {
    let n = peers.len();
    let mut spread = [0u8; 8];
    spread.copy_from_slice(&c.id.0[..8]);
    let start = (u64::from_le_bytes(spread) as usize).wrapping_add(rotation);
    (0..n).map(|k| peers[start.wrapping_add(k) % n]).collect()
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn chunk(i: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&i.to_le_bytes()),
            len: 1,
        }
    }

    #[test]
    fn chunks_spread_over_peers_and_each_peer_is_asked_once() {
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let mut first = HashMap::new();
        for i in 0..600 {
            let order = ask_order(&peers, 7, &chunk(i));
            let unique: std::collections::HashSet<_> = order.iter().collect();
            assert_eq!(unique.len(), 6, "each peer once");
            *first.entry(order[0]).or_insert(0) += 1;
        }
        assert_eq!(first.len(), 6);
        assert!(
            first.values().all(|&n| n < 200),
            "no peer over 2x its share: {first:?}"
        );
        assert!(ask_order(&[], 0, &chunk(1)).is_empty());
    }
}
