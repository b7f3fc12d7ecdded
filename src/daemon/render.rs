//! Claiming frames and rendering them with one persistent Blender per job.
//!
//! The daemon renders one frame at a time per peer. A claim is published before the render
//! starts; if the ledger later shows the claim lost (a higher epoch, or someone else's result),
//! the render task is aborted, which drops its [`Worker`] and so kills that Blender.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use libp2p::PeerId;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::{Daemon, SceneState, TaskDone};
use crate::ids::JobId;
use crate::ledger::{
    Done, Failure, FrameState, FrameUpdate, JobEntry, JobState, choose_claim, job_progress,
};
use crate::net::GossipMsg;
use crate::render::settings::{DeviceKind, DeviceRequirement};
use crate::render::{BlenderInfo, FrameError, RenderedFrame, Worker, WorkerConfig};

/// The frame being rendered right now.
struct Active {
    job: JobId,
    frame: u32,
    epoch: u32,
    abort: AbortHandle,
    started: Instant,
}

#[derive(Default)]
pub(super) struct RenderState {
    active: Option<Active>,
    /// Warm workers between frames, one per job.
    idle: HashMap<JobId, Worker>,
}

impl RenderState {
    pub(super) fn current(&self) -> Option<(JobId, u32)> {
        self.active.as_ref().map(|a| (a.job, a.frame))
    }

    pub(super) fn stop(&mut self) {
        if let Some(a) = self.active.take() {
            a.abort.abort();
        }
        self.idle.clear();
    }
}

pub(super) struct RenderDone {
    job: JobId,
    frame: u32,
    epoch: u32,
    worker: Worker,
    result: Result<RenderedFrame, FrameError>,
}

pub(super) async fn probe_blender(explicit: Option<PathBuf>) -> Result<BlenderInfo, String> {
    let path = crate::render::find_blender(explicit.as_deref()).map_err(|e| e.to_string())?;
    crate::render::probe(&path).await.map_err(|e| e.to_string())
}

/// Whether this peer's Blender satisfies a job's device requirement; the kind to use if so.
pub(super) fn device_for(req: &DeviceRequirement, info: &BlenderInfo) -> Option<DeviceKind> {
    DeviceKind::PREFERENCE.into_iter().find(|kind| {
        if req.gpu_only && !kind.is_gpu() {
            return false;
        }
        if req.kind.is_some_and(|k| k != *kind) {
            return false;
        }
        let devices: Vec<_> = info.devices.iter().filter(|d| d.kind == *kind).collect();
        let present = *kind == DeviceKind::Cpu || !devices.is_empty();
        let memory_ok = match req.min_vram_mib {
            None => true,
            Some(min) => devices
                .iter()
                .any(|d| d.memory_mib.is_some_and(|m| m >= min)),
        };
        present && memory_ok
    })
}

impl Daemon {
    pub(super) fn render_device(&self) -> Option<DeviceKind> {
        self.blender.as_ref().map(|b| b.best_device())
    }

    fn job_dir(&self, job: &JobId) -> PathBuf {
        self.cfg.data_dir.join("work").join(job.to_hex())
    }

    fn job_running(&self, entry: &JobEntry) -> bool {
        job_progress(entry, &self.view(), &self.policy).state == JobState::Running
    }

    /// Starts fetching the scene of every running job this peer could render.
    pub(super) fn fetch_scenes(&mut self) {
        if !self.can_render() {
            return;
        }
        let now = Instant::now();
        let mut wanted = Vec::new();
        for (id, entry) in self.ledger.jobs() {
            let due = match self.scenes.get(id) {
                None => true,
                Some(SceneState::Retry(at)) => *at <= now,
                Some(_) => false,
            };
            if due && self.job_running(entry) {
                wanted.push((*id, entry.spec.clone(), self.providers_for(id, entry)));
            }
        }
        for (id, spec, providers) in wanted {
            self.scenes.insert(id, SceneState::Fetching);
            let net = self.net.clone();
            let store = self.store.clone();
            let dir = self.job_dir(&id);
            self.tasks.spawn(async move {
                let result = async {
                    let blob = crate::transfer::fetch(&net, &store, spec.scene, &providers)
                        .await
                        .map_err(|e| e.to_string())?;
                    // Blender resolves `//` paths next to the .blend: give it its own name.
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    let scene = dir.join(&spec.scene_file);
                    if !scene.exists() && std::fs::hard_link(&blob, &scene).is_err() {
                        std::fs::copy(&blob, &scene).map_err(|e| e.to_string())?;
                    }
                    Ok(scene)
                }
                .await;
                TaskDone::SceneFetched { job: id, result }
            });
        }
        // Let go of warm Blenders for jobs that are over.
        let over: Vec<JobId> = self
            .render
            .idle
            .keys()
            .filter(|j| self.ledger.job(j).is_none_or(|e| !self.job_running(e)))
            .copied()
            .collect();
        for j in over {
            debug!(job = %j.short(), "job over; stopping its Blender");
            self.render.idle.remove(&j);
        }
    }

    /// Peers likely to hold a job's blobs: the submitter, then those that rendered its frames,
    /// then everyone connected.
    pub(super) fn providers_for(&self, id: &JobId, entry: &JobEntry) -> Vec<PeerId> {
        let mut out = vec![entry.spec.submitter];
        for state in entry.frames.values() {
            for d in &state.done {
                out.push(d.peer);
            }
        }
        let _ = id;
        out.extend(self.peers.connected());
        let mut seen = std::collections::HashSet::new();
        out.retain(|p| *p != self.me && seen.insert(*p));
        out
    }

    /// Claims the best frame this peer may take and starts rendering it.
    pub(super) async fn claim_and_render(&mut self) {
        if !self.can_render() || self.render.active.is_some() {
            return;
        }
        let Some(info) = self.blender.clone() else {
            return;
        };
        let choice = {
            let view = self.view();
            let window = (2 * crate::ledger::PeerView::live_renderers(&view).len()).max(4);
            let scenes = &self.scenes;
            let eligible = |id: &JobId, e: &JobEntry| {
                matches!(scenes.get(id), Some(SceneState::Ready(_)))
                    && device_for(&e.spec.settings.device, &info).is_some()
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
        let Some(choice) = choice else { return };
        let (job, frame, epoch) = (choice.job, choice.frame, choice.claim.epoch);
        let update = FrameUpdate {
            job,
            frame,
            state: FrameState::from_claim(choice.claim),
        };
        self.merge_updates(std::slice::from_ref(&update));
        self.publish(GossipMsg::Frames(vec![update])).await;

        let Some(entry) = self.ledger.job(&job) else {
            return;
        };
        let Some(SceneState::Ready(scene)) = self.scenes.get(&job) else {
            return;
        };
        let settings = entry.spec.settings.clone();
        let device = device_for(&settings.device, &info).unwrap_or(DeviceKind::Cpu);
        let job_dir = self.job_dir(&job);
        let worker = self.render.idle.remove(&job).unwrap_or_else(|| {
            Worker::new(WorkerConfig {
                blender: info.path.clone(),
                scene: scene.clone(),
                work_dir: job_dir.join("worker"),
                scripts_allowed: settings.allow_scripts && self.cfg.allow_scripts,
                settings,
                device,
                device_id: None,
                max_frames_per_process: self.cfg.frames_per_worker,
                max_rss_mib: None,
                frame_timeout: None,
            })
        });
        let out_dir = job_dir.join("out");
        info!(job = %job.short(), frame, epoch, "rendering");
        let abort = self.tasks.spawn(async move {
            let mut worker = worker;
            let result = worker.render(frame, &out_dir, None).await;
            TaskDone::Rendered(Box::new(RenderDone {
                job,
                frame,
                epoch,
                worker,
                result,
            }))
        });
        self.render.active = Some(Active {
            job,
            frame,
            epoch,
            abort,
            started: Instant::now(),
        });
    }

    pub(super) async fn on_rendered(&mut self, done: RenderDone) {
        let RenderDone {
            job,
            frame,
            epoch,
            worker,
            result,
        } = done;
        let is_current = self
            .render
            .active
            .as_ref()
            .is_some_and(|a| a.job == job && a.frame == frame && a.epoch == epoch);
        if !is_current {
            return;
        }
        let started = self.render.active.take().map(|a| a.started);
        let state = match result {
            Ok(rf) => match self.store.import_owned(&rf.path) {
                Ok(output) => {
                    info!(job = %job.short(), frame, ms = rf.render_ms, "frame done");
                    FrameState::from_done(Done {
                        epoch,
                        peer: self.me,
                        output,
                        render_ms: rf.render_ms,
                    })
                }
                Err(e) => self.failure(job, frame, epoch, format!("storing the frame failed: {e}")),
            },
            Err(e) => self.failure(job, frame, epoch, e.reason()),
        };
        let _ = started;
        let update = FrameUpdate { job, frame, state };
        self.merge_updates(std::slice::from_ref(&update));
        self.publish(GossipMsg::Frames(vec![update])).await;
        if self.ledger.job(&job).is_some_and(|e| self.job_running(e)) {
            self.render.idle.insert(job, worker);
        }
        // Go straight on to the next frame: no idle gap between frames.
        self.claim_and_render().await;
    }

    fn failure(&self, job: JobId, frame: u32, epoch: u32, reason: String) -> FrameState {
        warn!(job = %job.short(), frame, "frame failed: {reason}");
        FrameState::from_failure(Failure {
            epoch,
            peer: self.me,
            reason: crate::ledger::frame::truncate_reason(&reason),
        })
    }

    /// After remote news: stop rendering a frame whose claim this peer lost.
    pub(super) fn after_ledger_change(&mut self, changed: &[(JobId, u32)]) {
        let Some(active) = &self.render.active else {
            return;
        };
        if !changed.contains(&(active.job, active.frame)) {
            return;
        }
        let Some(state) = self.ledger.frame(&active.job, active.frame) else {
            return;
        };
        let still_ours = state.done.is_empty()
            && state
                .claim
                .as_ref()
                .is_some_and(|c| c.peer == self.me && c.epoch == active.epoch);
        if !still_ours {
            info!(job = %active.job.short(), frame = active.frame, "claim lost; stopping this frame");
            if let Some(a) = self.render.active.take() {
                a.abort.abort();
            }
        }
    }
}
