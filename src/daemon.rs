//! The daemon: wires the network node, the ledger, the store, the renderer and the local API,
//! and owns the main select loop.
//!
//! One task owns all mutable state ([`Daemon`]). Network events, API requests and results of
//! background tasks (fetches, renders, syncs) arrive as messages; the loop applies them to the
//! ledger, persists what changed, and publishes deltas. Nothing in the loop waits on a peer.

mod api;
mod archive;
mod cache;
mod cloud;
mod control;
mod events;
#[cfg(feature = "test-faults")]
mod liar;
mod logs;
mod merge;
mod outputs;
mod peers;
mod quota;
mod render;
mod replicas;
mod rotate;
mod scenes;
mod settle;
mod setup;
mod slots;
mod sync;
mod tail;
mod thumbs;
mod views;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::types::InviteResponse;
use crate::ids::{BlobId, JobId};
use crate::ledger::{Ledger, RetryPolicy};
use crate::net::{Client, GossipMsg, Heartbeat};
use crate::render::BlenderInfo;
use crate::store::Store;
use crate::transfer::checkout::Checkout;
use crate::transfer::{FetchStats, Holders};

use peers::{LiveView, PeerTable};

pub use api::ApiRequest;
pub use outputs::frame_file_name;
pub use quota::Quota;
pub use setup::{DaemonError, data_dir_default, has_mesh, read_endpoint};
pub use thumbs::ThumbError;

/// How a daemon is started (`meshd join`).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub api: SocketAddr,
    pub mdns: bool,
    pub blender: Option<PathBuf>,
    /// A ticket to join; `None` founds a mesh (or resumes the one in the data dir).
    pub ticket: Option<crate::net::Ticket>,
    /// Extra addresses to dial at start.
    pub peers: Vec<Multiaddr>,
    pub lease: Duration,
    /// Let Python in .blend files run for jobs that allow it.
    pub allow_scripts: bool,
    /// With `allow_scripts`: only for jobs of these submitters (and this peer's own); empty
    /// means every member (`--trust-submitter`).
    pub trust_submitters: Vec<PeerId>,
    /// Run Blender unconfined even where bubblewrap is installed (`--no-sandbox`).
    pub no_sandbox: bool,
    /// Extra read-only paths inside the sandbox (`--sandbox-read`).
    pub sandbox_read: Vec<PathBuf>,
    /// Take frames (false: this peer only submits and relays).
    pub render: bool,
    /// Frames a Blender process renders before it is recycled.
    pub frames_per_worker: u32,
    /// Recycle a Blender process whose memory grows above this (MiB).
    pub max_worker_rss_mib: Option<u64>,
    /// One worker for all GPUs instead of one per GPU.
    pub gpus_together: bool,
    /// Longest a frame may render before it fails and its Blender is restarted.
    pub frame_timeout: Option<Duration>,
    /// Keep the blob store at most this big (bytes), dropping least recently used blobs of
    /// jobs that are over.
    pub cache_size: Option<u64>,
    /// Copies of each finished frame kept by peers other than its renderer (`--replicas`).
    pub replicas: usize,
    /// A job that is over is archived here once its submitter has been gone this long
    /// (`--archive-orphans-after`).
    pub archive_orphans_after: Duration,
    /// `--simulate-render SECS`: render no Blender, take SECS per frame (benchmarks only).
    pub simulate_render: Option<Duration>,
    /// What this peer takes on per submitter (`--quota-*`).
    pub quota: Quota,
}

/// Results of background tasks, delivered back to the loop.
enum TaskDone {
    Synced {
        peer: PeerId,
        result: Result<sync::Checked, String>,
    },
    SceneFetched {
        job: JobId,
        result: Result<crate::transfer::checkout::Checkout, String>,
    },
    Rendered(Box<render::RenderDone>),
    OutputWritten {
        job: JobId,
        frame: u32,
        /// The result written.
        result: Result<BlobId, String>,
        /// Results whose bytes are no image of the job's format, with why.
        unusable: Vec<(BlobId, String)>,
    },
    Replicated {
        blob: BlobId,
        result: Result<(), replicas::CopyError>,
    },
    Stored {
        job: JobId,
        frame: u32,
        epoch: u32,
        /// A backup render (see `ledger::tail`).
        backup: bool,
        render_ms: u64,
        /// The output and its thumbnail, pinned until its result is merged.
        result: Result<render::StoredFrame, render::NotStored>,
    },
    Probed(Result<BlenderInfo, String>),
    Collected {
        result: Result<crate::store::gc::GcReport, String>,
        reply: Option<oneshot::Sender<Result<crate::store::gc::GcReport, String>>>,
    },
}

/// Where a job's project stands on this peer.
enum SceneState {
    /// Being fetched; who holds the project, for the fetch to ask, kept up to date.
    Fetching(Arc<FetchStats>, Holders),
    Ready(Arc<Checkout>, Arc<FetchStats>),
    /// Fetch failed (why); try again after the instant.
    Retry(Instant, Arc<FetchStats>, String),
}

impl SceneState {
    fn stats(&self) -> &Arc<FetchStats> {
        match self {
            SceneState::Fetching(s, _) | SceneState::Ready(_, s) | SceneState::Retry(_, s, _) => s,
        }
    }
}

struct Daemon {
    cfg: DaemonConfig,
    me: PeerId,
    incarnation: u64,
    /// The mesh key new connections use (`meshd rotate-key` changes it).
    key: crate::net::CurrentKey,
    /// The mesh's id: it outlives key rotations.
    mesh_id: String,
    /// Signs this peer's claims, results, failures, jobs and controls.
    identity: libp2p::identity::Keypair,
    store: Store,
    ledger: Ledger,
    net: Client,
    peers: PeerTable,
    policy: RetryPolicy,
    blender: Option<BlenderInfo>,
    scenes: HashMap<JobId, SceneState>,
    render: slots::RenderState,
    /// Jobs that are over while their submitter is gone, and since when (see
    /// `archive_orphans`).
    orphans: HashMap<JobId, Instant>,
    /// Frames of jobs written here that have a result to write and are not written yet
    /// (filled as results arrive; see `outputs.rs`).
    write_ready: std::collections::BTreeSet<(JobId, u32)>,
    /// Output files being written (submitter side).
    writing: HashSet<(JobId, u32)>,
    /// Output writes that failed: how often, since when, and when to try again.
    write_retry: HashMap<(JobId, u32), outputs::Retry>,
    /// Results this peer keeps a copy of, still to fetch.
    replicas: replicas::Queue,
    local_jobs: HashMap<JobId, crate::store::LocalJob>,
    written: HashMap<JobId, HashMap<u32, BlobId>>,
    /// Bytes of frames and thumbnails this peer received for each job (written here,
    /// copied as replicas, shown on its dashboard); the project's are in `scenes`.
    frames_moved: HashMap<JobId, Arc<crate::transfer::FetchStats>>,
    tasks: JoinSet<TaskDone>,
    hb_seq: u64,
    /// Claims made while a frame of this peer is being stored (a render has just ended
    /// and the next begun): they go out in one gossip message with that frame's result,
    /// not one each ([`Daemon::on_stored`]), or at the next tick at the latest.
    held_claims: Vec<crate::ledger::FrameUpdate>,
    /// Where this daemon listens, as the node reported it.
    listen_addrs: Vec<Multiaddr>,
    /// A cache collection is running.
    collecting: bool,
    /// When this daemon started.
    started: Instant,
    /// The Blender probe is running (this peer will render once it succeeds).
    probing: bool,
    /// Which jobs are over (every frame has a result, or cancelled): ticks skip them.
    settle: settle::Settled,
    /// What each background task (other than renders) stands for, so that state it holds
    /// is released if the task panics.
    owners: HashMap<tokio::task::Id, TaskOwner>,
    /// The cloud actor (rented machines), and what it is told of the mesh.
    cloud: crate::cloud::handle::CloudHandle,
    activity: tokio::sync::watch::Sender<crate::cloud::rental::Activity>,
    /// The cloud actor has this daemon's ticket.
    cloud_ready: bool,
    /// Peers that lied to this daemon (see `punish`): refused until it restarts.
    banned: HashSet<PeerId>,
    /// Where this peer's Blenders run.
    sandbox: crate::render::Sandbox,
}

/// The state a background task holds until it reports back.
#[derive(Clone, Copy, Debug)]
enum TaskOwner {
    SceneFetch(JobId),
    Output(JobId, u32),
    Replica(BlobId),
    /// A rendered frame being stored before its result is announced.
    Store(JobId, u32, u32, bool),
    Collection,
}

/// Runs a daemon until `shutdown` fires. `on_ready` receives the invite ticket once listening.
pub async fn run(
    cfg: DaemonConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&InviteResponse) + Send,
) -> Result<(), DaemonError> {
    // Blender runs in the job's work dir and in a sandbox that names the data dir: every
    // path the daemon hands out must mean the same from any directory.
    let data_dir = std::path::absolute(&cfg.data_dir).map_err(|source| DaemonError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let cfg = DaemonConfig { data_dir, ..cfg };
    let boot = setup::boot(&cfg, shutdown.child_token()).await?;
    // The data dir is ours now (locked): any sandbox naming it was left by an earlier run.
    crate::render::leftovers::kill_leftover_sandboxes(&cfg.data_dir);
    let sandbox = setup::sandbox(&cfg).await?;
    let (api_tx, mut api_rx) = mpsc::channel(64);
    let (activity, cloud, cloud_task) = cloud::start(&cfg, &boot, shutdown.child_token())?;
    let api_handle = crate::api::serve(
        boot.api_listener,
        boot.token.clone(),
        api_tx,
        boot.store.clone(),
        boot.net.local_peer_id(),
        crate::api::SubmitEnv {
            blender: cfg.blender.clone(),
            scratch: cfg.data_dir.join("tmp"),
            protected: std::iter::once(cfg.data_dir.clone())
                .chain(directories::BaseDirs::new().map(|d| d.config_dir().join("meshd")))
                .collect(),
        },
        cloud.clone(),
    );

    let (render, mut progress_rx) = slots::RenderState::new();
    let mut d = Daemon {
        me: boot.net.local_peer_id(),
        incarnation: boot.incarnation,
        key: boot.key,
        mesh_id: boot.mesh_id,
        identity: boot.identity,
        ledger: boot.ledger,
        net: boot.net,
        store: boot.store,
        peers: PeerTable::default(),
        policy: RetryPolicy::default(),
        blender: None,
        scenes: HashMap::new(),
        render,
        orphans: HashMap::new(),
        write_ready: Default::default(),
        writing: HashSet::new(),
        write_retry: HashMap::new(),
        replicas: replicas::Queue::default(),
        local_jobs: HashMap::new(),
        written: HashMap::new(),
        frames_moved: HashMap::new(),
        tasks: JoinSet::new(),
        hb_seq: 0,
        held_claims: Vec::new(),
        listen_addrs: Vec::new(),
        collecting: false,
        started: Instant::now(),
        probing: false,
        settle: settle::Settled::default(),
        owners: HashMap::new(),
        cloud,
        activity,
        cloud_ready: false,
        banned: HashSet::new(),
        sandbox,
        cfg,
    };
    d.load_local_jobs();
    d.settle = settle::Settled::of(&d.ledger);
    d.archive_settled().await;
    let mut net_events = boot.events;
    if d.cfg.render {
        d.probing = true;
        let blender = d.cfg.blender.clone();
        let scratch = d.cfg.data_dir.join("tmp");
        let simulated = d.cfg.simulate_render.is_some();
        let sandbox = d.sandbox.clone();
        d.tasks.spawn(async move {
            TaskDone::Probed(if simulated {
                Ok(render::simulated_blender())
            } else {
                render::probe_blender(blender, scratch, &sandbox).await
            })
        });
    }
    if let Err(e) = d.store.add_bootstrap(&boot.dial) {
        warn!("cannot remember bootstrap addresses: {e}");
    }
    for addr in boot.dial {
        let _ = d.net.dial(addr).await;
    }

    // Announce readiness once the node has a listen address.
    let mut on_ready = Some(on_ready);
    let ready_deadline = Instant::now() + Duration::from_secs(10);
    while on_ready.is_some() && Instant::now() < ready_deadline {
        match d.invite().await {
            Ok(inv) => {
                if let Some(f) = on_ready.take() {
                    f(&inv);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    let hb_every = (d.cfg.lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut heartbeat = tokio::time::interval(hb_every);
    let mut schedule = tokio::time::interval(Duration::from_millis(200));
    let mut anti_entropy = tokio::time::interval(Duration::from_secs(5));
    let mut redial = tokio::time::interval(Duration::from_secs(10));
    // Collections: every 10 s with a cache bound; otherwise now and then, to remove work dirs
    // of finished jobs and compact old versions (store::dedup). Never right at start, when
    // no interrupted fetch has resumed yet.
    let cache_every = Duration::from_secs(if d.cfg.cache_size.is_some() { 10 } else { 120 });
    let mut cache =
        tokio::time::interval_at(tokio::time::Instant::now() + cache_every, cache_every);
    // Live progress goes out with an early heartbeat, at most this often.
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    for t in [
        &mut progress,
        &mut heartbeat,
        &mut schedule,
        &mut anti_entropy,
        &mut redial,
        &mut cache,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }

    info!(peer = %d.me, incarnation = d.incarnation, "daemon running");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(res) = d.tasks.join_next_with_id() => match res {
                Ok((id, done)) => {
                    d.owners.remove(&id);
                    d.on_task_done(done).await
                }
                Err(e) if e.is_cancelled() => {
                    d.owners.remove(&e.id());
                }
                Err(e) => {
                    warn!("background task failed: {e}");
                    d.on_task_panicked(e.id()).await;
                }
            },
            ev = net_events.recv() => match ev {
                Some(ev) => d.on_net_event(ev).await,
                None => {
                    warn!("network task stopped; shutting down");
                    break;
                }
            },
            Some(req) = api_rx.recv() => d.on_api(req).await,
            Some(p) = progress_rx.recv() => d.render.on_progress(p),
            _ = heartbeat.tick() => {
                d.send_heartbeat().await;
                d.tell_cloud().await;
            }
            _ = schedule.tick() => d.tick().await,
            _ = anti_entropy.tick() => {
                d.anti_entropy();
                d.archive_orphans().await;
            }
            _ = redial.tick() => d.redial().await,
            _ = cache.tick() => {
                let limit = d.cfg.cache_size.unwrap_or(u64::MAX);
                d.collect_garbage(limit, None);
            }
            _ = progress.tick() => if d.render.progress_dirty {
                d.send_heartbeat().await;
            },
        }
        // A result arrived or a write ended: start the next writes now, not at the next tick.
        d.write_outputs();
    }

    info!("shutting down");
    d.render.stop();
    d.tasks.shutdown().await;
    // Rented machines are given back before the daemon exits (bounded by the actor).
    let _ = tokio::time::timeout(Duration::from_secs(60), cloud_task).await;
    api_handle.abort();
    let _ = d.store.flush();
    let _ = std::fs::remove_file(d.cfg.data_dir.join(setup::API_FILE));
    Ok(())
}

impl Daemon {
    fn view(&self) -> LiveView<'_> {
        LiveView {
            me: self.me,
            incarnation: self.incarnation,
            can_render: self.can_render(),
            probing: self.probing,
            table: &self.peers,
            lease: self.cfg.lease,
            now: Instant::now(),
            started: self.started,
            local: self
                .blender
                .as_ref()
                .filter(|_| self.cfg.render)
                .map(|b| (b.version.as_str(), self.render.specs.as_slice())),
        }
    }

    fn can_render(&self) -> bool {
        self.cfg.render && self.blender.is_some()
    }

    async fn publish(&self, msg: GossipMsg) {
        if let Err(e) = self.net.publish(msg).await {
            warn!("publish failed: {e}");
        }
    }

    /// Publishes this peer's heartbeat: its incarnation, Blender and devices, what it renders
    /// now, its addresses and the jobs whose projects it holds.
    async fn send_heartbeat(&mut self) {
        self.hb_seq += 1;
        let hb = Heartbeat {
            seq: self.hb_seq,
            incarnation: self.incarnation,
            can_render: self.can_render(),
            blender: self.blender.as_ref().map(|b| b.version.clone()),
            devices: self
                .blender
                .as_ref()
                .map(|b| b.devices.clone())
                .unwrap_or_default(),
            render_device: self.render_device().map(|k| k.blender_name().to_string()),
            rendering: self.render.in_flight(),
            addrs: self
                .listen_addrs
                .iter()
                .take(16)
                .map(|a| a.to_string())
                .collect(),
            projects: self.have_projects(),
            probing: self.probing,
            slots: if self.can_render() {
                self.render.slot_count() as u32
            } else {
                0
            },
        };
        self.render.progress_dirty = false;
        self.publish(GossipMsg::Heartbeat(hb)).await;
    }

    async fn on_task_done(&mut self, done: TaskDone) {
        match done {
            TaskDone::Synced { peer, result } => match result {
                Ok(c) if c.resp.version != crate::net::wire::WIRE_VERSION => {
                    let version = c.resp.version;
                    warn!(%peer, version, "ignoring sync answer of another wire version");
                }
                Ok(sync::Checked {
                    forged: Some(e), ..
                }) => {
                    self.punish(peer, &format!("it sent a forged entry: {e}"))
                        .await
                }
                Ok(sync::Checked { resp, forged: None }) => {
                    self.learn_peers(peer, resp.peers).await;
                    self.add_jobs_from(peer, resp.jobs).await;
                    for (job, control) in resp.controls {
                        self.merge_control_from(Some(peer), job, control).await;
                    }
                    // Checked in the sync task already.
                    let changed = self.merge_from(peer, &resp.updates, true).await;
                    if !changed.is_empty() {
                        debug!(%peer, changed = changed.len(), "sync brought news");
                    }
                    self.after_ledger_change(&changed).await;
                    self.note_results(&changed, true);
                    if let Some(next) = resp.next {
                        self.start_sync_from(peer, Some(next));
                    }
                }
                Err(e) => debug!(%peer, "sync failed: {e}"),
            },
            TaskDone::SceneFetched { job, result } => {
                let stats = self
                    .scenes
                    .get(&job)
                    .map(|s| s.stats().clone())
                    .unwrap_or_default();
                let state = match result {
                    Ok(checkout) => {
                        info!(
                            job = %job.short(),
                            files = checkout.manifest.files.len(),
                            fetched = stats.fetched(),
                            reused = stats.reused(),
                            "project ready"
                        );
                        SceneState::Ready(Arc::new(checkout), stats)
                    }
                    Err(e) => {
                        warn!(job = %job.short(), "project fetch failed: {e}; will retry");
                        let at = Instant::now() + Duration::from_secs(3);
                        SceneState::Retry(at, stats, e)
                    }
                };
                let ready = matches!(state, SceneState::Ready(..));
                self.scenes.insert(job, state);
                if ready {
                    self.claim_and_render().await;
                }
            }
            TaskDone::Rendered(done) => self.on_rendered(*done).await,
            TaskDone::OutputWritten {
                job,
                frame,
                result,
                unusable,
            } => self.on_output_written(job, frame, result, &unusable).await,
            TaskDone::Replicated { blob, result } => self.on_replicated(blob, result).await,
            TaskDone::Stored {
                job,
                frame,
                epoch,
                backup,
                render_ms,
                result,
            } => {
                self.on_stored(job, frame, epoch, backup, render_ms, result)
                    .await
            }
            TaskDone::Collected { result, reply } => self.on_collected(result, reply),
            TaskDone::Probed(result) => {
                self.probing = false;
                match result {
                    Ok(info) => {
                        let slots = slots::plan_slots(&info, self.cfg.gpus_together);
                        info!(
                            version = %info.version,
                            device = ?info.best_device(),
                            slots = slots.len(),
                            "Blender found"
                        );
                        self.render.set_slots(slots);
                        self.blender = Some(info);
                    }
                    Err(e) => warn!("this peer will not render: {e}"),
                }
                // Others learn at once whether this peer renders after all.
                self.send_heartbeat().await;
            }
        }
    }

    /// Periodic work: start scene fetches, claim a frame, write finished frames.
    async fn tick(&mut self) {
        if !self.held_claims.is_empty() {
            // A store slower than a tick: the claims wait no longer.
            let held = std::mem::take(&mut self.held_claims);
            self.publish(GossipMsg::Frames(held)).await;
        }
        self.refresh_holders();
        self.fetch_scenes();
        self.claim_and_render().await;
        self.requeue_due_writes();
        self.write_outputs();
        self.replicate();
    }
}
