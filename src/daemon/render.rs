//! Claiming frames and rendering them with persistent Blender workers.
//!
//! A peer has one or more render *slots*: one per GPU (or one for all GPUs of the best kind
//! with `--gpus-together`), or one CPU slot. Each slot renders one frame at a time and keeps a
//! warm [`Worker`] (one Blender process) per job between frames. A claim is published before a
//! render starts; if the ledger later shows the claim lost (a higher epoch, or someone else's
//! result), the render task is aborted, which drops its worker and so kills that Blender.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::{Daemon, SceneState, TaskDone};
use crate::ids::JobId;
use crate::ledger::{
    FrameState, FrameUpdate, JobEntry, JobState, choose_claim, job_progress, sign,
};
use crate::net::{GossipMsg, InFlight};
use crate::render::settings::{DeviceKind, DeviceRequirement};
use crate::render::{
    BlenderInfo, FrameError, FrameProgress, ProjectLayout, Unchecked, Worker, WorkerConfig,
};
use crate::transfer::FetchCtx;

/// What one slot renders with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    pub device: DeviceKind,
    /// One device by its Blender id; `None` uses every device of the kind.
    pub device_id: Option<String>,
    /// Memory of the slot's device(s) in MiB, the least of them when several; if known.
    pub memory_mib: Option<u64>,
}

/// The slots a peer runs: one per GPU of the best kind (or one for all of them when
/// `together`), else one CPU slot.
pub fn plan_slots(info: &BlenderInfo, together: bool) -> Vec<SlotSpec> {
    let best = info.best_device();
    let devices: Vec<_> = info.devices_of(best).collect();
    if best == DeviceKind::Cpu || devices.is_empty() {
        return vec![SlotSpec {
            device: DeviceKind::Cpu,
            device_id: None,
            memory_mib: None,
        }];
    }
    if together || devices.len() == 1 {
        let memory_mib = devices.iter().map(|d| d.memory_mib).min().flatten();
        return vec![SlotSpec {
            device: best,
            device_id: None,
            memory_mib,
        }];
    }
    devices
        .into_iter()
        .map(|d| SlotSpec {
            device: best,
            device_id: Some(d.id.clone()),
            memory_mib: d.memory_mib,
        })
        .collect()
}

/// Whether a job's device requirement lets this slot render it.
pub fn slot_fits(req: &DeviceRequirement, slot: &SlotSpec) -> bool {
    if req.gpu_only && !slot.device.is_gpu() {
        return false;
    }
    if req.kind.is_some_and(|k| k != slot.device) {
        return false;
    }
    match req.min_vram_mib {
        None => true,
        Some(min) => slot.device.is_gpu() && slot.memory_mib.is_some_and(|m| m >= min),
    }
}

/// Whether a peer with Blender `version` and `devices` (as its heartbeat tells) may render
/// `spec`: the version fits, and one of the slots it would run fits the device requirement.
pub fn peer_fits(
    spec: &crate::ledger::JobSpec,
    version: &str,
    devices: &[crate::render::DeviceInfo],
) -> bool {
    let info = BlenderInfo {
        path: PathBuf::new(),
        version: version.to_string(),
        devices: devices.to_vec(),
        has_oidn: false,
    };
    spec.blender_fits(version)
        && plan_slots(&info, false)
            .iter()
            .any(|s| slot_fits(&spec.settings.device, s))
}

/// The frame a slot is rendering right now.
struct Active {
    job: JobId,
    frame: u32,
    epoch: u32,
    abort: AbortHandle,
    progress: Option<FrameProgress>,
    /// A backup of another peer's render (see [`crate::ledger::tail`]): no claim of ours.
    backup: bool,
    started: std::time::Instant,
    /// Blender's lines of this frame so far (`meshd logs` of a frame being rendered).
    log: crate::render::worker::FrameLog,
}

struct Slot {
    spec: SlotSpec,
    active: Option<Active>,
    /// Warm workers between frames, one per job.
    idle: HashMap<JobId, Worker>,
}

/// Progress of a frame, from a render task to the daemon loop.
pub(super) struct ProgressMsg {
    slot: usize,
    job: JobId,
    progress: FrameProgress,
}

pub(super) struct RenderState {
    slots: Vec<Slot>,
    /// When a free slot last looked for a straggler to back up.
    pub(super) backup_checked: Option<std::time::Instant>,
    /// The slots' specs (what the ledger's view asks about this peer).
    pub(super) specs: Vec<SlotSpec>,
    progress_tx: mpsc::UnboundedSender<ProgressMsg>,
    /// Progress changed since the last heartbeat.
    pub(super) progress_dirty: bool,
}

impl RenderState {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<ProgressMsg>) {
        let (progress_tx, rx) = mpsc::unbounded_channel();
        (
            RenderState {
                slots: Vec::new(),
                backup_checked: None,
                specs: Vec::new(),
                progress_tx,
                progress_dirty: false,
            },
            rx,
        )
    }

    pub(super) fn set_slots(&mut self, specs: Vec<SlotSpec>) {
        self.stop();
        self.specs = specs.clone();
        self.slots = specs
            .into_iter()
            .map(|spec| Slot {
                spec,
                active: None,
                idle: HashMap::new(),
            })
            .collect();
    }

    /// Frames in flight on this peer, with progress.
    /// Frames this peer renders at once.
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn in_flight(&self) -> Vec<InFlight> {
        self.slots
            .iter()
            .filter_map(|s| s.active.as_ref())
            .map(|a| InFlight {
                job: a.job,
                frame: a.frame,
                current: a.progress.as_ref().map_or(0, |p| p.current),
                total: a.progress.as_ref().map_or(0, |p| p.total),
                elapsed_ms: a.started.elapsed().as_millis() as u64,
            })
            .collect()
    }

    pub(super) fn on_progress(&mut self, msg: ProgressMsg) {
        let Some(a) = self.slots.get_mut(msg.slot).and_then(|s| s.active.as_mut()) else {
            return;
        };
        if a.job == msg.job && a.frame == msg.progress.frame {
            a.progress = Some(msg.progress);
            self.progress_dirty = true;
        }
    }

    /// Jobs with a frame in flight or a warm Blender here.
    pub(super) fn jobs_in_use(&self) -> impl Iterator<Item = JobId> + '_ {
        self.slots.iter().flat_map(|s| {
            s.idle
                .keys()
                .copied()
                .chain(s.active.as_ref().map(|a| a.job))
        })
    }

    /// Kills every Blender of `job`, busy or warm, without a word to the mesh.
    pub(super) fn drop_job(&mut self, job: &JobId) {
        for s in &mut self.slots {
            if s.active.as_ref().is_some_and(|a| a.job == *job)
                && let Some(a) = s.active.take()
            {
                a.abort.abort();
                self.progress_dirty = true;
            }
            s.idle.remove(job);
        }
    }

    pub(super) fn stop(&mut self) {
        for s in &mut self.slots {
            if let Some(a) = s.active.take() {
                a.abort.abort();
            }
            s.idle.clear();
        }
    }
}

/// Why a rendered frame was not stored.
#[derive(Debug)]
pub(super) enum NotStored {
    /// The image failed its check: the attempt failed, with this reason.
    Check(String),
    /// Importing or flushing failed.
    Store(String),
}

impl std::fmt::Display for NotStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStored::Check(why) | NotStored::Store(why) => f.write_str(why),
        }
    }
}

impl From<crate::store::StoreError> for NotStored {
    fn from(e: crate::store::StoreError) -> Self {
        NotStored::Store(e.to_string())
    }
}

/// A rendered frame in the blob store, before its result is announced.
pub(super) struct StoredFrame {
    output: crate::ids::BlobId,
    thumb: Option<crate::ids::BlobId>,
    /// Keep the blobs until the result is merged (see `store/pins.rs`).
    _pins: Vec<crate::store::Pin>,
}

pub(super) struct RenderDone {
    slot: usize,
    job: JobId,
    frame: u32,
    epoch: u32,
    worker: Worker,
    result: Result<Unchecked, FrameError>,
}

/// What a `--simulate-render` peer reports instead of a probed Blender: one CPU device.
pub(super) fn simulated_blender() -> BlenderInfo {
    BlenderInfo {
        path: PathBuf::from("simulated"),
        version: "simulated".into(),
        devices: vec![crate::render::DeviceInfo {
            kind: DeviceKind::Cpu,
            name: "simulated CPU".into(),
            id: "CPU".into(),
            memory_mib: None,
        }],
        has_oidn: false,
    }
}

/// Finds and probes Blender; `scratch` is the daemon's private scratch dir.
pub(super) async fn probe_blender(
    explicit: Option<PathBuf>,
    scratch: PathBuf,
    sandbox: &crate::render::Sandbox,
) -> Result<BlenderInfo, String> {
    let path = crate::render::find_blender(explicit.as_deref()).map_err(|e| e.to_string())?;
    crate::render::probe(&path, &scratch, sandbox)
        .await
        .map_err(|e| e.to_string())
}

/// Projects fetched at once.
const MAX_SCENE_FETCHES: usize = 3;

impl Daemon {
    pub(super) fn render_device(&self) -> Option<DeviceKind> {
        self.blender.as_ref().map(|b| b.best_device())
    }

    /// Whether Python in this submitter's scenes may run here (`--allow-scripts`,
    /// `--trust-submitter`).
    fn trusts(&self, submitter: &PeerId) -> bool {
        self.cfg.allow_scripts
            && (self.cfg.trust_submitters.is_empty()
                || *submitter == self.me
                || self.cfg.trust_submitters.contains(submitter))
    }

    pub(super) fn job_dir(&self, job: &JobId) -> PathBuf {
        self.cfg.data_dir.join("work").join(job.to_hex())
    }

    pub(super) fn job_running(&self, entry: &JobEntry) -> bool {
        job_progress(entry, &self.view(), &self.policy).state == JobState::Running
    }

    /// Whether some slot of this peer can render the job, with a Blender the job accepts.
    fn can_take(&self, entry: &JobEntry) -> bool {
        self.blender
            .as_ref()
            .is_some_and(|b| entry.spec.blender_fits(&b.version))
            && self
                .render
                .slots
                .iter()
                .any(|s| slot_fits(&entry.spec.settings.device, &s.spec))
    }

    /// Starts fetching the scene of running jobs this peer could render and its quotas
    /// allow, at most [`MAX_SCENE_FETCHES`] at once (the rest on later rounds).
    pub(super) fn fetch_scenes(&mut self) {
        if !self.can_render() {
            return;
        }
        let now = std::time::Instant::now();
        let mut fetching = self
            .scenes
            .values()
            .filter(|s| matches!(s, SceneState::Fetching(_)))
            .count();
        // Jobs whose project is due to be fetched: usually none, so the quota is worked out
        // only when one is.
        let due: Vec<(&JobId, &JobEntry)> = self
            .ledger
            .jobs()
            .filter(|(id, _)| !self.settle.is_over(id))
            .filter(|(id, _)| match self.scenes.get(*id) {
                None => true,
                Some(SceneState::Retry(at, ..)) => *at <= now,
                Some(_) => false,
            })
            .filter(|(_, e)| self.can_take(e) && self.job_running(e))
            .collect();
        if due.is_empty() || fetching >= MAX_SCENE_FETCHES {
            self.release_finished_workers();
            return;
        }
        let allowed = super::quota::within(
            self.ledger
                .jobs()
                .filter(|(id, _)| !self.settle.is_over(id))
                .map(|(id, e)| super::quota::RunningJob {
                    id: *id,
                    submitter: e.spec.submitter,
                    created_unix_ms: e.spec.created_unix_ms,
                    frames: e.spec.frames.len() as u64,
                }),
            &self.cfg.quota,
        );
        let mut wanted = Vec::new();
        for (id, entry) in due {
            if fetching >= MAX_SCENE_FETCHES {
                break;
            }
            if !allowed.contains(id) {
                continue;
            }
            let stats = match self.scenes.get(id) {
                Some(SceneState::Retry(_, stats, _)) => stats.clone(),
                _ => Arc::default(),
            };
            let ctx = self.project_fetch(entry).with_stats(stats.clone());
            wanted.push((*id, entry.spec.project, ctx, stats));
            fetching += 1;
        }
        let max_bytes = self.cfg.quota.project_bytes;
        for (id, project, ctx, stats) in wanted {
            self.scenes.insert(id, SceneState::Fetching(stats));
            let dir = self.job_dir(&id);
            let task = self.tasks.spawn(async move {
                #[cfg(feature = "test-faults")]
                faults::panic_scene_fetch_once();
                let result = crate::transfer::checkout::checkout(&ctx, project, &dir, max_bytes)
                    .await
                    .map_err(|e| e.to_string());
                TaskDone::SceneFetched { job: id, result }
            });
            self.owners
                .insert(task.id(), super::TaskOwner::SceneFetch(id));
        }
        self.release_finished_workers();
    }

    /// Lets go of warm Blenders for jobs that are over.
    fn release_finished_workers(&mut self) {
        // Only jobs holding a warm worker matter: usually one or two, not the whole ledger.
        let over: HashSet<JobId> = self
            .render
            .slots
            .iter()
            .flat_map(|s| s.idle.keys())
            .filter(|job| self.ledger.job(job).is_none_or(|e| !self.job_running(e)))
            .copied()
            .collect();
        for job in &over {
            debug!(job = %job.short(), "job over; stopping its Blender");
        }
        for slot in &mut self.render.slots {
            slot.idle.retain(|job, _| !over.contains(job));
        }
    }

    /// A fetch context for a job's project: peers announcing all of it, then those announcing
    /// part of it (still fetching), then every other connected peer; the submitter is the
    /// seed, asked when no other peer has a chunk.
    fn project_fetch(&self, entry: &JobEntry) -> FetchCtx {
        let submitter = entry.spec.submitter;
        let mut complete = Vec::new();
        let mut partial = Vec::new();
        for (peer, state) in &self.peers.peers {
            let Some(hb) = &state.heartbeat else { continue };
            for have in hb
                .projects
                .iter()
                .filter(|h| h.project == entry.spec.project)
            {
                if have.complete {
                    complete.push(*peer);
                } else {
                    partial.push(*peer);
                }
            }
        }
        let peers = self
            .providers(complete.into_iter().chain(partial))
            .into_iter()
            .filter(|p| *p != submitter)
            .collect();
        let seeds = if submitter == self.me {
            Vec::new()
        } else {
            vec![submitter]
        };
        FetchCtx::swarm(self.net.clone(), self.store.clone(), peers, seeds)
    }

    /// Projects this peer holds or is fetching, for its heartbeat (newest jobs first).
    pub(super) fn have_projects(&self) -> Vec<crate::net::HaveProject> {
        let mut have: Vec<(u64, crate::net::HaveProject)> = self
            .scenes
            .iter()
            .filter_map(|(job, state)| {
                let entry = self.ledger.job(job)?;
                let complete = match state {
                    SceneState::Ready(..) => true,
                    SceneState::Fetching(_) | SceneState::Retry(..) => false,
                };
                Some((
                    entry.spec.created_unix_ms,
                    crate::net::HaveProject {
                        project: entry.spec.project,
                        complete,
                    },
                ))
            })
            .collect();
        have.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        have.into_iter()
            .map(|(_, h)| h)
            .take(crate::net::wire::MAX_HAVE_PROJECTS)
            .collect()
    }

    /// `likely` peers first, then every connected one; without this peer, each once.
    pub(super) fn providers(&self, likely: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
        let mut seen = HashSet::new();
        likely
            .into_iter()
            .chain(self.peers.connected())
            .filter(|p| *p != self.me && seen.insert(*p))
            .collect()
    }

    /// Blender's lines so far of `frame` of `job` if a slot renders it now.
    pub(super) fn live_log(&self, job: &JobId, frame: u32) -> Option<Vec<String>> {
        self.render
            .slots
            .iter()
            .filter_map(|s| s.active.as_ref())
            .find(|a| a.job == *job && a.frame == frame)
            .map(|a| a.log.lines())
    }

    /// Fills every free slot with the best frame it may take.
    pub(super) async fn claim_and_render(&mut self) {
        if !self.can_render() {
            return;
        }
        for slot in 0..self.render.slots.len() {
            if self.render.slots[slot].active.is_none() {
                self.claim_for_slot(slot).await;
            }
        }
    }

    async fn claim_for_slot(&mut self, slot: usize) {
        let Some(info) = self.blender.clone() else {
            return;
        };
        let spec = self.render.slots[slot].spec.clone();
        let choice = {
            let view = self.view();
            let window = (2 * crate::ledger::PeerView::live_renderers(&view).len()).max(4);
            let scenes = &self.scenes;
            let settle = &self.settle;
            let eligible = |id: &JobId, e: &JobEntry| {
                !settle.is_over(id)
                    && matches!(scenes.get(id), Some(SceneState::Ready(..)))
                    && slot_fits(&e.spec.settings.device, &spec)
            };
            choose_claim(
                &self.ledger,
                &self.me,
                self.incarnation,
                &view,
                &self.policy,
                eligible,
                window,
            )
        };
        let (job, frame, epoch, backup) = match choice {
            Some(choice) => {
                let (job, frame, epoch) = (choice.job, choice.frame, choice.claim.epoch);
                let claim = sign::claim(&self.identity, &job, frame, self.incarnation, epoch);
                let update = FrameUpdate {
                    job,
                    frame,
                    state: FrameState::from_claim(claim),
                };
                self.merge_updates(std::slice::from_ref(&update));
                self.publish(GossipMsg::Frames(vec![update])).await;
                (job, frame, epoch, false)
            }
            None => match self.choose_backup_for(&spec) {
                Some(b) => {
                    info!(job = %b.job.short(), frame = b.frame, gain_ms = b.gain_ms as u64, "backing up a straggler");
                    (b.job, b.frame, b.epoch, true)
                }
                None => return,
            },
        };

        let Some(entry) = self.ledger.job(&job) else {
            return;
        };
        let Some(SceneState::Ready(checkout, _)) = self.scenes.get(&job) else {
            return;
        };
        let settings = entry.spec.settings.clone();
        let job_dir = self.job_dir(&job);
        let worker = self.render.slots[slot]
            .idle
            .remove(&job)
            .unwrap_or_else(|| {
                Worker::new(WorkerConfig {
                    blender: info.path.clone(),
                    scene: checkout.scene.clone(),
                    project: Some(ProjectLayout::of(checkout)),
                    work_dir: job_dir.join(format!("worker-{slot}")),
                    scripts_allowed: settings.allow_scripts && self.trusts(&entry.spec.submitter),
                    settings,
                    device: spec.device,
                    device_id: spec.device_id.clone(),
                    max_frames_per_process: self.cfg.frames_per_worker,
                    max_rss_mib: self.cfg.max_worker_rss_mib,
                    frame_timeout: self.cfg.frame_timeout,
                    simulate: self.cfg.simulate_render,
                    frame_size: entry.spec.size,
                    sandbox: self.sandbox.clone(),
                })
            });
        let out_dir = job_dir.join(format!("out-{slot}"));
        let central = self.render.progress_tx.clone();
        let log = worker.frame_log();
        info!(job = %job.short(), frame, epoch, slot, "rendering");
        let abort = self.tasks.spawn(async move {
            let mut worker = worker;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let result = {
                let render = worker.render_unchecked(frame, &out_dir, Some(&tx));
                tokio::pin!(render);
                loop {
                    tokio::select! {
                        r = &mut render => break r,
                        Some(progress) = rx.recv() => {
                            let _ = central.send(ProgressMsg { slot, job, progress });
                        }
                    }
                }
            };
            TaskDone::Rendered(Box::new(RenderDone {
                slot,
                job,
                frame,
                epoch,
                worker,
                result,
            }))
        });
        self.render.slots[slot].active = Some(Active {
            job,
            frame,
            epoch,
            abort,
            progress: None,
            backup,
            started: std::time::Instant::now(),
            log,
        });
        self.render.progress_dirty = true;
    }

    pub(super) async fn on_rendered(&mut self, done: RenderDone) {
        let RenderDone {
            slot,
            job,
            frame,
            epoch,
            worker,
            result,
        } = done;
        let Some(s) = self.render.slots.get_mut(slot) else {
            return;
        };
        let is_current = s
            .active
            .as_ref()
            .is_some_and(|a| a.job == job && a.frame == frame && a.epoch == epoch);
        if !is_current {
            return;
        }
        let backup = s.active.take().is_some_and(|a| a.backup);
        self.render.progress_dirty = true;
        match result {
            Ok(written) => self.store_frame(job, frame, epoch, backup, written),
            // A backup is best effort: the holder still renders the frame.
            Err(e) if backup => {
                warn!(job = %job.short(), frame, "backup render failed: {}", e.reason())
            }
            Err(e) => {
                let state = self.failure(job, frame, epoch, e.reason());
                let update = FrameUpdate { job, frame, state };
                self.merge_updates(std::slice::from_ref(&update));
                self.publish(GossipMsg::Frames(vec![update])).await;
            }
        }
        if self.ledger.job(&job).is_some_and(|e| self.job_running(e)) {
            self.render.slots[slot].idle.insert(job, worker);
        }
        // Go straight on to the next frame: no idle gap between frames. The finished one is
        // stored meanwhile.
        self.claim_and_render().await;
    }

    /// Checks and stores a rendered frame off the loop, alongside the next render (Blender
    /// does not wait for the check; the claim holds meanwhile): the image is checked and
    /// its thumbnail made ([`Unchecked::check`]), then both are imported into the blob
    /// store and flushed (file and manifest) before anyone hears the frame is done, so a
    /// crash after the news cannot leave a result nobody has. A frame without a thumbnail
    /// still counts.
    fn store_frame(
        &mut self,
        job: JobId,
        frame: u32,
        epoch: u32,
        backup: bool,
        written: Unchecked,
    ) {
        let store = self.store.clone();
        let task = self.tasks.spawn(async move {
            let render_ms = written.render_ms();
            // Pinned until its result is merged: a collection in between keeps it.
            let result = tokio::task::spawn_blocking(move || {
                let rf = written.check().map_err(|e| NotStored::Check(e.reason()))?;
                let (path, thumb) = (rf.path, rf.thumb);
                #[cfg(feature = "test-faults")]
                faults::garbage_output(&path);
                let (output, pin) = store.import_owned_pinned(&path)?;
                let thumb = thumb.and_then(|t| match store.import_owned_pinned(&t) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        warn!(frame, "cannot store the frame's thumbnail: {e}");
                        None
                    }
                });
                #[cfg(feature = "test-faults")]
                faults::pause_before_flush(frame);
                store.flush()?;
                let (thumb, thumb_pin) = thumb.unzip();
                Ok(StoredFrame {
                    output,
                    thumb,
                    _pins: std::iter::once(pin).chain(thumb_pin).collect(),
                })
            })
            .await
            .unwrap_or_else(|e| Err(NotStored::Store(e.to_string())));
            TaskDone::Stored {
                job,
                frame,
                epoch,
                backup,
                render_ms,
                result,
            }
        });
        self.owners.insert(
            task.id(),
            super::TaskOwner::Store(job, frame, epoch, backup),
        );
    }

    /// A rendered frame is stored: announce the result (or the failure to store it).
    pub(super) async fn on_stored(
        &mut self,
        job: JobId,
        frame: u32,
        epoch: u32,
        backup: bool,
        render_ms: u64,
        result: Result<StoredFrame, NotStored>,
    ) {
        // Its pins are dropped once the result is merged below.
        let (state, _stored) = match result {
            Ok(stored) => {
                info!(job = %job.short(), frame, ms = render_ms, "frame done");
                let done = sign::done(
                    &self.identity,
                    &job,
                    frame,
                    self.incarnation,
                    epoch,
                    sign::Rendered {
                        output: stored.output,
                        thumb: stored.thumb,
                        render_ms,
                    },
                );
                (FrameState::from_done(done), Some(stored))
            }
            // A backup is best effort: the holder still renders the frame.
            Err(e) if backup => {
                warn!(job = %job.short(), frame, "backup render failed: {e}");
                return;
            }
            Err(NotStored::Check(reason)) => (self.failure(job, frame, epoch, reason), None),
            Err(NotStored::Store(e)) => {
                let why = format!("storing the frame failed: {e}");
                (self.failure(job, frame, epoch, why), None)
            }
        };
        let update = FrameUpdate { job, frame, state };
        self.merge_updates(std::slice::from_ref(&update));
        self.publish(GossipMsg::Frames(vec![update])).await;
    }

    fn failure(&self, job: JobId, frame: u32, epoch: u32, reason: String) -> FrameState {
        warn!(job = %job.short(), frame, "frame failed: {reason}");
        let reason = crate::ledger::frame::truncate_reason(&reason);
        FrameState::from_failure(sign::failure(&self.identity, &job, frame, epoch, reason))
    }

    /// A render task panicked: free its slot and record the frame as failed.
    pub(super) async fn on_task_panicked(&mut self, task: tokio::task::Id) {
        match self.owners.remove(&task) {
            Some(super::TaskOwner::SceneFetch(job)) => {
                let stats = self
                    .scenes
                    .get(&job)
                    .map(|s| s.stats().clone())
                    .unwrap_or_default();
                let retry = std::time::Instant::now() + std::time::Duration::from_secs(2);
                let why = "the project fetch crashed".to_string();
                self.scenes
                    .insert(job, SceneState::Retry(retry, stats, why));
                return;
            }
            Some(super::TaskOwner::Output(job, frame)) => {
                return self
                    .on_output_written(job, frame, Err("the output task crashed".into()), &[])
                    .await;
            }
            Some(super::TaskOwner::Replica(blob)) => {
                let crashed = super::replicas::CopyError::Fetch("the copy task crashed".into());
                return self.on_replicated(blob, Err(crashed)).await;
            }
            Some(super::TaskOwner::Store(job, frame, epoch, backup)) => {
                let crashed = Err(NotStored::Store("the store task crashed".into()));
                return self.on_stored(job, frame, epoch, backup, 0, crashed).await;
            }
            Some(super::TaskOwner::Collection) => {
                return self.on_collected(Err("the collection crashed".into()), None);
            }
            None => {}
        }
        let Some(slot) = self
            .render
            .slots
            .iter_mut()
            .find(|s| s.active.as_ref().is_some_and(|a| a.abort.id() == task))
        else {
            return;
        };
        let Some(a) = slot.active.take() else { return };
        self.render.progress_dirty = true;
        let state = self.failure(a.job, a.frame, a.epoch, "the render task crashed".into());
        let update = FrameUpdate {
            job: a.job,
            frame: a.frame,
            state,
        };
        self.merge_updates(std::slice::from_ref(&update));
        self.publish(GossipMsg::Frames(vec![update])).await;
    }

    /// Stops every render of `job` now (paused or cancelled): its Blender is killed, and the
    /// claim is released with a [`STOPPED`](crate::ledger::frame::STOPPED) failure that does
    /// not count as a failed attempt, so the frame is free again on resume.
    pub(super) async fn stop_renders_of(&mut self, job: &JobId) {
        let mut released = Vec::new();
        for slot in &mut self.render.slots {
            if slot.active.as_ref().is_some_and(|a| a.job == *job)
                && let Some(a) = slot.active.take()
            {
                info!(job = %job.short(), frame = a.frame, "job stopped; stopping this frame");
                a.abort.abort();
                self.render.progress_dirty = true;
                released.push(FrameUpdate {
                    job: *job,
                    frame: a.frame,
                    state: FrameState::from_failure(sign::failure(
                        &self.identity,
                        job,
                        a.frame,
                        a.epoch,
                        crate::ledger::frame::STOPPED.to_string(),
                    )),
                });
            }
            slot.idle.remove(job);
        }
        if !released.is_empty() {
            self.merge_updates(&released);
            self.publish(GossipMsg::Frames(released)).await;
        }
    }

    /// After remote news: stop rendering frames whose claim this peer lost.
    pub(super) fn after_ledger_change(&mut self, changed: &[(JobId, u32)]) {
        for slot in &mut self.render.slots {
            let Some(active) = &slot.active else { continue };
            if !changed.contains(&(active.job, active.frame)) {
                continue;
            }
            let Some(state) = self.ledger.frame(&active.job, active.frame) else {
                continue;
            };
            // A backup renders until the frame has a result; a claimed render also stops
            // when its claim is lost.
            let still_ours =
                state.render_goes_on(&self.me, self.incarnation, active.epoch, active.backup);
            if !still_ours {
                info!(job = %active.job.short(), frame = active.frame, "claim lost or frame done elsewhere; stopping this frame");
                if let Some(a) = slot.active.take() {
                    a.abort.abort();
                }
                self.render.progress_dirty = true;
            }
        }
    }
}

/// Fault injection for the test suite; compiled only with the `test-faults` feature.
#[cfg(feature = "test-faults")]
mod faults {
    /// `MESHD_FAULT_PAUSE_BEFORE_FLUSH_MS=N`: the first finished frame of this daemon is
    /// imported into the store, then the store task waits N ms before flushing it and
    /// announcing it: the window in which a crash must not leave a result behind.
    pub fn pause_before_flush(frame: u32) {
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let Some(ms) = std::env::var("MESHD_FAULT_PAUSE_BEFORE_FLUSH_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        if !DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!("MESHD_FAULT_PAUSE_BEFORE_FLUSH frame {frame}: stored, not flushed");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    /// `MESHD_FAULT_GARBAGE_OUTPUT=1`: a lying renderer. Every frame it renders is replaced,
    /// after Blender's own checks, by bytes that are no image; its results announce those.
    /// `MESHD_FAULT_GARBAGE_OUTPUT=1`: every rendered frame is replaced by random bytes;
    /// `=resize`: by a valid image of another size (8x8) in the same format.
    pub fn garbage_output(path: &std::path::Path) {
        match std::env::var("MESHD_FAULT_GARBAGE_OUTPUT").as_deref() {
            Ok("resize") => {
                tracing::warn!("MESHD_FAULT_GARBAGE_OUTPUT: serving a frame of the wrong size");
                let img = image::RgbImage::from_pixel(8, 8, image::Rgb([250, 0, 250]));
                let _ = img.save(path);
            }
            Ok(_) => {
                tracing::warn!("MESHD_FAULT_GARBAGE_OUTPUT: serving non-image bytes");
                let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
                let _ = std::fs::write(path, junk);
            }
            Err(_) => {}
        }
    }

    /// `MESHD_FAULT_PANIC_SCENE_FETCH=1`: the first project fetch task of this daemon panics.
    pub fn panic_scene_fetch_once() {
        static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if std::env::var_os("MESHD_FAULT_PANIC_SCENE_FETCH").is_some()
            && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("MESHD_FAULT_PANIC_SCENE_FETCH: the project fetch task panics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::DeviceInfo;

    fn info(devices: Vec<(DeviceKind, &str, Option<u64>)>) -> BlenderInfo {
        BlenderInfo {
            path: "blender".into(),
            version: "4.2.0".into(),
            devices: devices
                .into_iter()
                .map(|(kind, id, memory_mib)| DeviceInfo {
                    kind,
                    name: id.into(),
                    id: id.into(),
                    memory_mib,
                })
                .collect(),
            has_oidn: true,
        }
    }

    #[test]
    fn one_slot_per_gpu_of_the_best_kind() {
        let i = info(vec![
            (DeviceKind::Cpu, "CPU", None),
            (DeviceKind::Cuda, "CUDA_0", Some(24_000)),
            (DeviceKind::Cuda, "CUDA_1", Some(12_000)),
            (DeviceKind::Optix, "OPTIX_0", Some(24_000)),
            (DeviceKind::Optix, "OPTIX_1", Some(12_000)),
        ]);
        let slots = plan_slots(&i, false);
        assert_eq!(slots.len(), 2);
        assert!(slots.iter().all(|s| s.device == DeviceKind::Optix));
        assert_eq!(slots[1].device_id.as_deref(), Some("OPTIX_1"));
        let together = plan_slots(&i, true);
        assert_eq!(
            together,
            vec![SlotSpec {
                device: DeviceKind::Optix,
                device_id: None,
                memory_mib: Some(12_000)
            }]
        );
    }

    #[test]
    fn cpu_only_machine_has_one_cpu_slot() {
        let slots = plan_slots(&info(vec![(DeviceKind::Cpu, "CPU", None)]), false);
        assert_eq!(
            slots,
            vec![SlotSpec {
                device: DeviceKind::Cpu,
                device_id: None,
                memory_mib: None
            }]
        );
    }

    #[test]
    fn requirements_select_slots() {
        let gpu = SlotSpec {
            device: DeviceKind::Cuda,
            device_id: Some("CUDA_0".into()),
            memory_mib: Some(8_000),
        };
        let cpu = SlotSpec {
            device: DeviceKind::Cpu,
            device_id: None,
            memory_mib: None,
        };
        let any = DeviceRequirement::default();
        assert!(slot_fits(&any, &gpu) && slot_fits(&any, &cpu));
        let gpu_only = DeviceRequirement {
            gpu_only: true,
            ..Default::default()
        };
        assert!(slot_fits(&gpu_only, &gpu) && !slot_fits(&gpu_only, &cpu));
        let optix = DeviceRequirement {
            kind: Some(DeviceKind::Optix),
            ..Default::default()
        };
        assert!(!slot_fits(&optix, &gpu));
        let big = DeviceRequirement {
            min_vram_mib: Some(16_000),
            ..Default::default()
        };
        let small = DeviceRequirement {
            min_vram_mib: Some(4_000),
            ..Default::default()
        };
        assert!(!slot_fits(&big, &gpu) && slot_fits(&small, &gpu) && !slot_fits(&small, &cpu));
    }
}
