//! Fetching a blob from peers: manifest first (verified against the blob id), then chunks in
//! parallel from several providers, each verified against its hash before it is written.
//!
//! - Chunks already held locally (in any blob, or in this blob's partial file left by an
//!   interrupted fetch) are copied or kept, not fetched.
//! - Each chunk written is indexed at once, so peers fetching the same blob get it from us.
//! - A single frame ([`fetch`]) asks its providers in the order given: the renderer first,
//!   then the likely replica holders, so a chunk is not asked of peers that cannot have it.
//! - Swarming (a project, [`FetchCtx::swarm`]): each fetch asks for its chunks in its own
//!   random order, so concurrent fetchers hold different chunks early. A chunk is asked
//!   first of the peers known to hold some of the project ([`Holders`], from their
//!   heartbeats; starting at one picked by the chunk's hash plus a rotation random per
//!   fetch), and of the *seeds* (the submitter) only when none of them has it. One fetch
//!   keeps at most [`SEED_SLOTS`] requests at the seeds; a chunk nobody else has yet waits
//!   and is asked again, so the seed's uplink sends each chunk about once and peers pass it
//!   on. Peers not known to hold anything are asked last: when a job starts nobody holds
//!   anything, and asking them first would cost a round trip each.
//! - A project starts with one request ([`FetchCtx::fetch_project`]) for its manifest blob
//!   whole and its files' manifests, so the files' chunks are asked for after one round
//!   trip, not three. A small project's chunks come in that answer too
//!   ([`PROJECT_CHUNKS_BYTES`](crate::net::wire::PROJECT_CHUNKS_BYTES)): nothing more to ask.
//! - Chunks travel zstd-compressed when that pays ([`BlobResponse::chunk`]): an uncompressed
//!   `.blend`, Blender's default, shrinks to about an eighth.
//! - A provider that sends a chunk that does not hash right is dropped as a source for the
//!   rest of the fetch (and of its project, when the [`FetchCtx`] is shared) and logged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use libp2p::PeerId;
use tracing::{debug, warn};

use super::answer::{Kept, keep_project};
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
/// Peers asked for a project whole ([`FetchCtx::fetch_project`]) before fetching it part by
/// part.
const PROJECT_ASKS: usize = 2;
/// Attempts after which a chunk is asked of a seed however busy.
const MAX_DEFERRALS: u32 = 40;
/// Blobs up to this size (a project manifest, a small texture) are asked of the seeds
/// first: every peer fetching them from the seeds costs the seeds' uplink little, and
/// asking peers that do not have them yet costs round trips.
const SEEDS_FIRST_BYTES: u64 = 64 << 10;

/// What one chunk attempt gave.
enum Got {
    Bytes(Vec<u8>),
    Deferred,
}

/// The seed request slots of one fetch ([`SEED_SLOTS`]).
#[derive(Default)]
struct SeedSlots {
    busy: std::sync::atomic::AtomicUsize,
    /// Notified (one waiter, or a stored permit) each time a slot is given back: a deferred
    /// chunk asks again then, not only when its backoff ends.
    freed: tokio::sync::Notify,
}

/// A taken seed request slot, given back when dropped.
struct SeedSlot<'a>(&'a SeedSlots);

impl SeedSlots {
    /// Takes a slot if one is free.
    fn try_take(&self) -> Option<SeedSlot<'_>> {
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < SEED_SLOTS).then_some(n + 1)
            })
            .ok()
            .map(|_| SeedSlot(self))
    }

    /// Takes a slot whether or not one is free.
    fn take(&self) -> SeedSlot<'_> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        SeedSlot(self)
    }
}

impl Drop for SeedSlot<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
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

/// Peers known to hold some of what a fetch wants (a project's holders, from their
/// heartbeats). Shared between the daemon, which sets it anew as heartbeats arrive, and the
/// fetches asking them, which read it at every chunk attempt.
#[derive(Clone, Debug, Default)]
pub struct Holders(Arc<Mutex<Arc<[PeerId]>>>);

impl Holders {
    pub fn new(peers: Vec<PeerId>) -> Self {
        Holders(Arc::new(Mutex::new(peers.into())))
    }

    pub fn set(&self, peers: Vec<PeerId>) {
        if let Ok(mut p) = self.0.lock() {
            *p = peers.into();
        }
    }

    pub fn get(&self) -> Arc<[PeerId]> {
        self.0
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| Arc::new([]))
    }
}

/// What one or more blob fetches share: the peers to ask, the ones caught lying, counters.
#[derive(Clone)]
pub struct FetchCtx {
    pub client: Client,
    pub store: Store,
    /// Peers asked first (they may hold the blob, whole or in part).
    providers: Holders,
    /// Peers known to hold the blob whole (the submitter), asked when no `providers` has it.
    seeds: Arc<[PeerId]>,
    /// Peers not known to hold any of it (swarming): asked only when neither the providers
    /// nor the seeds have a chunk. Early in a fetch nobody has anything, and asking them
    /// first would cost a round trip each.
    others: Arc<[PeerId]>,
    bad: Arc<Mutex<HashSet<PeerId>>>,
    pub stats: Arc<FetchStats>,
    /// Each chunk is asked first of a peer its hash picks (swarming), rather than of
    /// `providers` in the order given.
    spread: bool,
    rotation: usize,
    /// Requests at the seeds in flight (bounded by [`SEED_SLOTS`]).
    seed_slots: Arc<SeedSlots>,
    /// Largest blob worth fetching (a thumbnail), checked against its manifest before any
    /// chunk is asked for.
    max_size: Option<u64>,
    /// Blobs a project answer brought whole ([`FetchCtx::fetch_project`]): counted as
    /// fetched there, not as reused when the checkout asks for them.
    arrived: Arc<Mutex<HashSet<BlobId>>>,
}

impl FetchCtx {
    /// Asks `providers` in the order given, most likely holder first (a frame's renderer,
    /// then its likely replica holders); no seeds.
    pub fn new(client: Client, store: Store, providers: Vec<PeerId>) -> Self {
        FetchCtx {
            spread: false,
            ..Self::swarm(
                client,
                store,
                Holders::new(providers),
                Vec::new(),
                Vec::new(),
            )
        }
    }

    /// Asks the `holders` (as they are at each attempt) for a chunk before the `seeds` (see
    /// [`SEED_SLOTS`]), and `others` only when neither has it ([`AskPlan`] leaves the seeds
    /// out of both lists).
    pub fn swarm(
        client: Client,
        store: Store,
        holders: Holders,
        others: Vec<PeerId>,
        seeds: Vec<PeerId>,
    ) -> Self {
        FetchCtx {
            client,
            store,
            providers: holders,
            others: others.into(),
            seeds: seeds.into(),
            bad: Arc::default(),
            stats: Arc::default(),
            spread: true,
            rotation: rand::random::<u32>() as usize,
            seed_slots: Arc::default(),
            max_size: None,
            arrived: Arc::default(),
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
                    let arrived = self.arrived.lock().is_ok_and(|a| a.contains(&id));
                    if !arrived {
                        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        self.stats.reused.fetch_add(len, Ordering::Relaxed);
                    }
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
        let (to, tmp) = (store.clone(), partial.clone());
        blocking(move || to.commit(&tmp, &manifest)).await??;
        Ok(store.blob_path(&id))
    }

    /// Makes project manifest `id` local like [`FetchCtx::fetch`], first asking for it whole,
    /// with its files' manifests (and a small project's files), in one answer
    /// ([`BlobRequest::Project`]): of the seeds, then of a holder. What the answer lacks (or a
    /// peer that cannot answer) is fetched as usual. Files are kept from the answer only when
    /// they total at most `max_files` bytes (this peer's project quota).
    pub async fn fetch_project(&self, id: BlobId, max_files: u64) -> Result<PathBuf, FetchError> {
        if !self.store.has_blob(&id) && self.store.manifest(&id).is_none() {
            let holders = self.providers.get();
            let ask: Vec<PeerId> = self
                .seeds
                .iter()
                .chain(holders.iter())
                .filter(|p| !self.is_bad(p))
                .take(PROJECT_ASKS)
                .copied()
                .collect();
            for p in ask {
                match self.client.blob(p, BlobRequest::Project(id)).await {
                    Ok(BlobResponse::Project(answer)) => {
                        let store = self.store.clone();
                        let kept =
                            blocking(move || keep_project(&store, id, answer, max_files)).await?;
                        match kept {
                            // Its manifest only: the content comes as usual.
                            Ok(Kept { bytes: 0, .. }) => break,
                            Ok(Kept { bytes, files }) => {
                                self.stats.fetched.fetch_add(bytes, Ordering::Relaxed);
                                if let Ok(mut arrived) = self.arrived.lock() {
                                    arrived.extend(files);
                                }
                                return Ok(self.store.blob_path(&id));
                            }
                            Err(e) => {
                                warn!(peer = %p, "bad project answer for {}: {e}; not asking it again", id.short());
                                self.mark_bad(p);
                            }
                        }
                    }
                    Ok(_) => debug!(peer = %p, "peer does not have project {}", id.short()),
                    Err(e) => debug!("{e}"),
                }
            }
        }
        self.fetch(id).await
    }

    async fn fetch_manifest(&self, id: BlobId) -> Result<Manifest, FetchError> {
        let providers = self.providers.get();
        let all = self
            .seeds
            .iter()
            .chain(providers.iter())
            .chain(self.others.iter());
        let mut asked = HashSet::new();
        for p in all.filter(|p| !self.is_bad(p) && asked.insert(**p)) {
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
        let small = manifest.size <= SEEDS_FIRST_BYTES;
        let mut inflight = futures::stream::FuturesUnordered::new();
        loop {
            while inflight.len() < PARALLEL_CHUNKS {
                let Some((offset, c, attempt)) = queue.pop_front() else {
                    break;
                };
                inflight.push(async move {
                    let got = self.fetch_chunk(&c, id, attempt, small).await;
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
    /// the holders (in [`ask_order`], a different few each attempt), then from a seed,
    /// if this fetch has fewer than [`SEED_SLOTS`] requests at the seeds; otherwise the chunk
    /// is deferred (its next attempt starts when a seed slot frees or after a backoff,
    /// whichever comes first). After [`MAX_DEFERRALS`] attempts a seed is asked regardless;
    /// when no seed has it, the other holders and then every other peer are asked. A chunk
    /// of a `small` blob ([`SEEDS_FIRST_BYTES`]) is asked of the seeds first. Ordered
    /// ([`FetchCtx::new`]): every provider in turn. Every answer is checked against the
    /// chunk's hash; a peer that sends wrong bytes is not asked again.
    async fn fetch_chunk(
        &self,
        c: &ChunkRef,
        blob: BlobId,
        attempt: u32,
        small: bool,
    ) -> Result<Got, FetchError> {
        if attempt > 0 {
            // Deferred: wait for holders to get the chunk, or for a seed slot to free.
            let backoff = std::time::Duration::from_millis((25 * attempt as u64).min(400));
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.seed_slots.freed.notified() => {}
            }
        }
        let turn = self
            .rotation
            .wrapping_add((attempt as usize).wrapping_mul(ASK_PER_ATTEMPT));
        let good = |peers: &[PeerId]| -> Vec<PeerId> {
            peers.iter().filter(|p| !self.is_bad(p)).copied().collect()
        };
        let plan = AskPlan::new(
            &good(&self.providers.get()),
            &good(&self.others),
            &self.seeds,
            Mode {
                spread: self.spread,
                small,
            },
            turn,
            c,
        );
        for p in &plan.before {
            if let Some(bytes) = self.ask(*p, c, blob).await {
                return Ok(Got::Bytes(bytes));
            }
        }
        if !self.seeds.is_empty() {
            // Deferred without taking a slot: giving one back wakes a deferred chunk, and a
            // chunk woken by its own slot would ask again at once, round after round.
            let _slot = match self.seed_slots.try_take() {
                Some(slot) => slot,
                None if plan.may_defer && attempt < MAX_DEFERRALS => return Ok(Got::Deferred),
                None => self.seed_slots.take(),
            };
            for p in self.seeds.iter() {
                if let Some(bytes) = self.ask(*p, c, blob).await {
                    return Ok(Got::Bytes(bytes));
                }
            }
        }
        for p in &plan.after {
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
        let answer = match self.client.blob(p, BlobRequest::Chunk(c.id)).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!("{e}");
                return None;
            }
        };
        match answer.into_chunk(c.len as usize) {
            Ok(Some(bytes)) if bytes.len() == c.len as usize && ChunkId::of(&bytes) == c.id => {
                Some(bytes)
            }
            Ok(None) => None,
            Ok(Some(_)) | Err(_) => {
                warn!(peer = %p, chunk = %c.id.short(), blob = %blob.short(),
                    "peer sent a corrupt chunk; no longer fetching from it");
                self.mark_bad(p);
                None
            }
        }
    }
}

/// How a fetch asks for its chunks.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// Swarming ([`FetchCtx::swarm`]) rather than in the order given ([`FetchCtx::new`]).
    spread: bool,
    /// The blob is small ([`SEEDS_FIRST_BYTES`]): the seeds are asked first.
    small: bool,
}

/// Whom one chunk attempt asks (pure): `before`, then the seeds, then `after`.
#[derive(Debug, PartialEq, Eq)]
struct AskPlan {
    before: Vec<PeerId>,
    after: Vec<PeerId>,
    /// Whether the chunk may wait for a free seed slot ([`SEED_SLOTS`]) rather than be
    /// asked of a busy seed: only when other peers may get it meanwhile.
    may_defer: bool,
}

impl AskPlan {
    /// `holders` are known to hold some of the blob, `others` are not (both without peers
    /// caught lying); `turn` rotates which holders come first, a different few each attempt.
    fn new(
        holders: &[PeerId],
        others: &[PeerId],
        seeds: &[PeerId],
        mode: Mode,
        turn: usize,
        c: &ChunkRef,
    ) -> AskPlan {
        let not_seed = |p: &PeerId| !seeds.contains(p);
        let order: Vec<PeerId> = if mode.spread {
            let holders: Vec<PeerId> = holders.iter().copied().filter(not_seed).collect();
            ask_order(&holders, turn, c)
        } else {
            holders.to_vec()
        };
        // A set: with hundreds of peers, a scan of `order` per other peer would cost every
        // chunk attempt a quadratic number of comparisons.
        let listed: HashSet<PeerId> = order.iter().copied().collect();
        let others: Vec<PeerId> = ask_order(others, turn, c)
            .into_iter()
            .filter(|p| not_seed(p) && !listed.contains(p))
            .collect();
        let seeds_first = mode.small && !seeds.is_empty();
        let first = if seeds_first {
            0
        } else if mode.spread && !seeds.is_empty() {
            ASK_PER_ATTEMPT.min(order.len())
        } else {
            order.len()
        };
        let may_defer = !seeds_first && (!order.is_empty() || !others.is_empty());
        let mut after = order[first..].to_vec();
        after.extend(others);
        AskPlan {
            before: order[..first].to_vec(),
            after,
            may_defer,
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

/// Runs `f` (file syncs, hashing) on the blocking pool: an fsync under load can take 100 ms,
/// and the runtime's threads also carry the network loop.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FetchError::Io(std::io::Error::other(e.to_string())))
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
    use crate::net::BlobServer;

    #[tokio::test]
    async fn a_freed_seed_slot_wakes_a_deferred_chunk_at_once() {
        let slots = SeedSlots::default();
        let a = slots.try_take().expect("a free slot");
        let b = slots.try_take().expect("a free slot");
        assert!(
            slots.try_take().is_none(),
            "all taken: a third chunk is deferred"
        );
        assert_eq!(slots.busy.load(Ordering::Acquire), SEED_SLOTS);
        let wait = std::time::Duration::from_secs(5);
        // A waiter that is already waiting is woken when a slot is given back.
        let waiter = async {
            slots.freed.notified().await;
            slots.busy.load(Ordering::Acquire)
        };
        let release = async {
            tokio::task::yield_now().await;
            drop(a);
        };
        let (busy, ()) = tokio::time::timeout(wait, async { tokio::join!(waiter, release) })
            .await
            .expect("woken when a slot is given back");
        assert_eq!(busy, 1, "one slot free when the waiter wakes");
        drop(b);
        assert_eq!(slots.busy.load(Ordering::Acquire), 0);
    }

    /// Serves `store`, holding each chunk answer back 40 ms, and counts the chunk requests it
    /// answers at once (the most seen).
    struct SlowSeed {
        store: Store,
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl BlobServer for SlowSeed {
        fn serve(&self, req: &BlobRequest) -> BlobResponse {
            if !matches!(req, BlobRequest::Chunk(_)) {
                return self.store.serve(req);
            }
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(40));
            self.now.fetch_sub(1, Ordering::SeqCst);
            self.store.serve(req)
        }
    }

    /// A node on 127.0.0.1 answering with `server`: its client and its address.
    async fn node(
        key: crate::net::MeshKey,
        server: Arc<dyn BlobServer>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> (
        Client,
        libp2p::Multiaddr,
        tokio::sync::mpsc::Receiver<crate::net::NetEvent>,
    ) {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let swarm = crate::net::swarm::build(
            keypair.clone(),
            crate::net::CurrentKey::new(key),
            false,
            "test".into(),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        let listen: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let (client, events, _) = crate::net::node::spawn(
            swarm,
            keypair,
            "test".into(),
            &[listen],
            server,
            cancel.clone(),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(addr) = client.listen_addrs().await.unwrap().into_iter().next() {
                return (client, addr, events);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node never listened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_keeps_at_most_its_seed_slots_at_the_seed_while_others_may_serve() {
        let dir = tempfile::tempdir().unwrap();
        let seed_store = Store::open(&dir.path().join("seed")).unwrap();
        let src = dir.path().join("big");
        std::fs::write(&src, super::super::manifest::noise(3 << 20, 5)).unwrap();
        let blob = seed_store.import_copy(&src).unwrap();
        let chunks = seed_store.manifest(&blob).unwrap().chunks.len();
        assert!(chunks > 2 * SEED_SLOTS, "{chunks} chunks");

        let cancel = tokio_util::sync::CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let seed = Arc::new(SlowSeed {
            store: seed_store,
            now: Default::default(),
            most: Default::default(),
        });
        // A peer holding nothing yet: while it may get chunks, a busy seed's chunk waits.
        let empty = Store::open(&dir.path().join("empty")).unwrap();
        let here = Store::open(&dir.path().join("here")).unwrap();
        let (ctx, _nodes) = connected_to(seed.clone(), vec![Arc::new(empty)], &here, &cancel).await;
        let path = tokio::time::timeout(std::time::Duration::from_secs(60), ctx.fetch(blob))
            .await
            .expect("the fetch ends")
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), std::fs::read(&src).unwrap());
        let most = seed.most.load(Ordering::SeqCst);
        assert!(
            most <= SEED_SLOTS,
            "{most} chunk requests at the seed at once, over its {SEED_SLOTS} slots"
        );
    }

    /// A `FetchCtx` of a node storing into `here`, connected to a node serving `seed` (its
    /// seed) and to one node serving each of `others` (peers not known to hold anything);
    /// and the other nodes' clients, which keep them running.
    async fn connected_to(
        seed: Arc<dyn BlobServer>,
        others: Vec<Arc<dyn BlobServer>>,
        here: &Store,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> (FetchCtx, Vec<Client>) {
        let key = crate::net::MeshKey::generate();
        let (client, _, mut events) = node(key, Arc::new(here.clone()), cancel).await;
        let mut nodes = Vec::new();
        for server in std::iter::once(seed).chain(others) {
            let (node_client, addr, mut node_events) = node(key, server, cancel).await;
            tokio::spawn(async move { while node_events.recv().await.is_some() {} });
            client.dial(addr).await.unwrap();
            nodes.push(node_client);
        }
        let mut connected = HashSet::new();
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while connected.len() < nodes.len() {
                if let Some(crate::net::NetEvent::PeerConnected(p)) = events.recv().await {
                    connected.insert(p);
                }
            }
        })
        .await
        .expect("connected to every node");
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let ids: Vec<PeerId> = nodes.iter().map(Client::local_peer_id).collect();
        let ctx = FetchCtx::swarm(
            client,
            here.clone(),
            Holders::new(Vec::new()),
            ids[1..].to_vec(),
            vec![ids[0]],
        );
        (ctx, nodes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_project_that_comes_whole_in_its_answer_counts_as_fetched_not_reused() {
        use crate::transfer::project::{ProjectFile, ProjectManifest};
        let dir = tempfile::tempdir().unwrap();
        let seed = Store::open(&dir.path().join("seed")).unwrap();
        let scene = dir.path().join("shot.blend");
        std::fs::write(&scene, vec![7u8; 500_000]).unwrap();
        let blob = seed.import_copy(&scene).unwrap();
        let files = vec![ProjectFile {
            path: "shot.blend".into(),
            blob,
            size: 500_000,
        }];
        let project = ProjectManifest::new("/p".into(), "shot.blend".into(), files).unwrap();
        let id = seed.import_bytes(&project.encode()).unwrap();

        let cancel = tokio_util::sync::CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let here = Store::open(&dir.path().join("here")).unwrap();
        let (ctx, _nodes) = connected_to(Arc::new(seed), Vec::new(), &here, &cancel).await;
        let work = dir.path().join("work");
        let copy = crate::transfer::checkout::checkout(&ctx, id, &work, u64::MAX)
            .await
            .unwrap();
        assert_eq!(std::fs::read(copy.scene).unwrap(), vec![7u8; 500_000]);
        let manifest_len = project.encode().len() as u64;
        assert_eq!(ctx.stats.fetched(), manifest_len + 500_000);
        assert_eq!(ctx.stats.reused(), 0, "nothing was here before");
    }

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

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    const SWARM: Mode = Mode {
        spread: true,
        small: false,
    };

    #[test]
    fn when_a_job_starts_nobody_holds_anything_and_the_seed_is_asked_first() {
        let (others, seed) = (peers(31), peers(1));
        let plan = AskPlan::new(&[], &others, &seed, SWARM, 3, &chunk(1));
        assert!(
            plan.before.is_empty(),
            "no round trip to peers that have nothing"
        );
        assert_eq!(
            plan.after.len(),
            31,
            "everyone else, should the seed not have it"
        );
        assert!(
            plan.may_defer,
            "a busy seed's chunk may wait for the others"
        );
    }

    #[test]
    fn holders_come_before_the_seed_a_few_at_a_time_and_the_rest_after_it() {
        let (holders, others, seed) = (peers(10), peers(5), peers(1));
        // A holder that is also listed among the others, and the seed among the holders.
        let mut listed = holders.clone();
        listed.push(seed[0]);
        let mut rest = others.clone();
        rest.push(holders[0]);
        let plan = AskPlan::new(&listed, &rest, &seed, SWARM, 0, &chunk(2));
        assert_eq!(plan.before.len(), ASK_PER_ATTEMPT);
        assert!(plan.before.iter().all(|p| holders.contains(p)));
        let (later_holders, later_others) = plan.after.split_at(10 - ASK_PER_ATTEMPT);
        assert!(later_holders.iter().all(|p| holders.contains(p)));
        assert_eq!(later_others.len(), 5, "each peer once, the seed never");
        assert!(later_others.iter().all(|p| others.contains(p)));
        // The next attempt starts at other holders.
        let next = AskPlan::new(&listed, &rest, &seed, SWARM, ASK_PER_ATTEMPT, &chunk(2));
        assert_ne!(next.before, plan.before);
    }

    #[test]
    fn a_small_blob_goes_to_the_seed_first_and_never_waits() {
        let (holders, seed) = (peers(6), peers(1));
        let small = Mode {
            spread: true,
            small: true,
        };
        let plan = AskPlan::new(&holders, &[], &seed, small, 0, &chunk(3));
        assert!(plan.before.is_empty());
        assert_eq!(plan.after.len(), 6);
        assert!(!plan.may_defer);
    }

    #[test]
    fn without_seeds_the_providers_are_asked_in_the_order_given() {
        let providers = peers(4);
        let ordered = Mode {
            spread: false,
            small: false,
        };
        let plan = AskPlan::new(&providers, &[], &[], ordered, 9, &chunk(4));
        assert_eq!(plan.before, providers);
        assert!(plan.after.is_empty());
        // Nothing to wait for when alone with the seed.
        let alone = AskPlan::new(&[], &[], &peers(1), SWARM, 0, &chunk(4));
        assert!(!alone.may_defer);
    }
}
