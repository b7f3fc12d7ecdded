//! Claiming frames and rendering them with persistent Blender workers.
//!
//! Each render slot ([`super::slots`]) renders one frame at a time and keeps a warm
//! [`Worker`] (one Blender process) per job between frames. A claim is published before a
//! render starts; if the ledger later shows the claim lost (a higher epoch, or someone else's
//! result), the render task is aborted, which drops its worker and so kills that Blender, and
//! the slot claims another frame at once. A rendered frame is checked and stored off the loop
//! before its result is announced.

use std::path::PathBuf;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::slots::{Active, ProgressMsg, slot_fits};
use super::{Daemon, SceneState, TaskDone};
use crate::ids::JobId;
use crate::ledger::{FrameState, FrameUpdate, JobEntry, JobState, choose_claim, job_state, sign};
use crate::net::GossipMsg;
use crate::render::settings::DeviceKind;
use crate::render::{BlenderInfo, FrameError, ProjectLayout, Unchecked, Worker, WorkerConfig};

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
        version: crate::ledger::job::SIMULATED_BLENDER.into(),
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
        job_state(entry, &self.view(), &self.policy) == JobState::Running
    }

    /// Whether some slot of this peer can render the job, with a Blender the job accepts.
    pub(super) fn can_take(&self, entry: &JobEntry) -> bool {
        self.blender
            .as_ref()
            .is_some_and(|b| entry.spec.blender_fits(&b.version))
            && self
                .render
                .slots
                .iter()
                .any(|s| slot_fits(&entry.spec.settings.device, &s.spec))
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
                // Going straight on from a frame being stored: the claim goes out with that
                // frame's result, a few milliseconds later, in one message (other peers
                // counted this one among the choosers as its render was ending). Half the
                // claims-topic messages; 10-15% of the daemons' CPU on the scale benchmark.
                let storing = self
                    .owners
                    .values()
                    .any(|o| matches!(o, super::TaskOwner::Store(..)));
                if storing {
                    self.held_claims.push(update);
                } else {
                    self.publish(GossipMsg::Frames(vec![update])).await;
                }
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
        // Others learn of a claimed render from its claim; a backup makes none, so it goes
        // out with the next heartbeat (at most a second from now).
        if backup {
            self.render.progress_dirty = true;
        }
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
        match result {
            // Its result tells others the render ended (the next claim goes with it).
            Ok(written) => self.store_frame(job, frame, epoch, backup, written),
            // A backup is best effort: the holder still renders the frame.
            Err(e) if backup => {
                self.render.progress_dirty = true;
                warn!(job = %job.short(), frame, "backup render failed: {}", e.reason())
            }
            Err(e) => {
                self.render.progress_dirty = true;
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

    /// A rendered frame is stored: announce the result (or the failure to store it), with
    /// the claims held meanwhile ([`Daemon::held_claims`]).
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
        let mut msg = vec![update];
        msg.append(&mut self.held_claims);
        self.publish(GossipMsg::Frames(msg)).await;
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

    /// After remote news: stop rendering frames whose claim this peer lost, and claim
    /// another at once for each slot that frees (not at the next tick: at a job's tail,
    /// peers choosing at once collide on the few frames left).
    pub(super) async fn after_ledger_change(&mut self, changed: &[(JobId, u32)]) {
        let mut freed = false;
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
                freed = true;
            }
        }
        if freed {
            self.claim_and_render().await;
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
}
