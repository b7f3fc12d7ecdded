//! Archiving jobs that are over, and `meshd rm`.
//!
//! The submitter archives a job mesh-wide once every frame is written to its output dir:
//! it sets the job's control to [`RunState::Archived`]. Every peer then moves the job out
//! of memory ([`crate::ledger::archive`]) unless it is still writing the job's frames itself
//! (`meshd fetch`); cancelled jobs go at once. An archived job costs nothing per tick, is
//! left out of sync, and its results are no longer protected from cache collection here.
//! Its frame states stay on disk, so `meshd fetch` can bring it back.

use tracing::{info, warn};

use super::Daemon;
use crate::api::types::{ControlResponse, JobView};
use crate::ids::JobId;
use crate::ledger::{ArchivedJob, JobState, RunState, archivable};
use crate::net::GossipMsg;

impl Daemon {
    /// Whether this peer writes job `id`'s frames and fewer than `want` are written yet.
    fn writing_here(&self, id: &JobId, want: usize) -> bool {
        self.local_jobs.contains_key(id) && self.written.get(id).map_or(0, |w| w.len()) < want
    }

    /// Archives job `id` here if its control allows (see [`archivable`]). Frames to write
    /// here hold it back: every frame of an archived job, every result of a cancelled one.
    pub(super) async fn maybe_archive(&mut self, id: &JobId) {
        let Some(entry) = self.ledger.job(id) else {
            return;
        };
        let want = match entry.control.run {
            RunState::Cancelled => entry.results(),
            _ => entry.spec.frames.len(),
        };
        if !archivable(&entry.control, self.writing_here(id, want)) {
            return;
        }
        self.archive_here(id).await;
    }

    /// Moves job `id` out of memory here, whatever its control says.
    async fn archive_here(&mut self, id: &JobId) {
        self.stop_renders_of(id).await;
        // Its project stays listed until the next collection removes its files.
        self.write_retry.retain(|(j, _), _| j != id);
        self.write_ready.retain(|(j, _)| j != id);
        let Some(summary) = self.ledger.archive(id) else {
            return;
        };
        info!(job = %id.short(), done = summary.done, "job archived");
        if let Err(e) = self.store.put_archived(id, summary) {
            warn!("cannot persist the archived job: {e}");
        }
        self.settle.recheck(&self.ledger, id);
    }

    /// Archives here the jobs that are over (every frame has a result, or cancelled) and
    /// whose submitter has not been live for `--archive-orphans-after`: a submitter that
    /// never comes back never archives them, and they would stay in memory for ever. Work
    /// per call: the active jobs (called every few seconds).
    pub(super) async fn archive_orphans(&mut self) {
        let now = std::time::Instant::now();
        let live = self.view().live_peers();
        let mut due = Vec::new();
        for (id, entry) in self.ledger.jobs() {
            let orphaned = self.settle.is_over(id)
                && entry.spec.submitter != self.me
                && !self.local_jobs.contains_key(id)
                && !live.contains(&entry.spec.submitter);
            if !orphaned {
                self.orphans.remove(id);
                continue;
            }
            let since = *self.orphans.entry(*id).or_insert(now);
            if now.saturating_duration_since(since) >= self.cfg.archive_orphans_after {
                due.push(*id);
            }
        }
        for id in due {
            self.orphans.remove(&id);
            info!(job = %id.short(), "its submitter has been gone too long; archiving the job here");
            self.archive_here(&id).await;
        }
    }

    /// Of `jobs`, those that `peer` submitted and that are archived here as orphans (their
    /// control is not final) become active again: their submitter is back.
    pub(super) fn revive_orphans_of(&mut self, peer: libp2p::PeerId, jobs: &[JobId]) {
        let back: std::collections::BTreeSet<JobId> = jobs
            .iter()
            .filter(|id| {
                self.ledger
                    .archived(id)
                    .is_some_and(|a| a.spec.submitter == peer && !a.control.run.is_final())
            })
            .copied()
            .collect();
        for id in back {
            self.revive_orphan(&id);
        }
    }

    /// Brings back a job archived here as an orphan, its submitter being back.
    fn revive_orphan(&mut self, id: &JobId) {
        let updates = match self.store.job_frames(id) {
            Ok(u) => u,
            Err(e) => return warn!("cannot read the archived job's frames: {e}"),
        };
        self.ledger.unarchive(id, &updates);
        if let Err(e) = self.store.unarchive(id) {
            warn!("cannot record the job as active: {e}");
        }
        self.settle.recheck(&self.ledger, id);
        info!(job = %id.short(), "its submitter is back; the job is active here again");
    }

    /// Archives, at start, the jobs whose control says so.
    pub(super) async fn archive_settled(&mut self) {
        let ids: Vec<JobId> = self
            .ledger
            .jobs()
            .filter(|(_, e)| e.control.run.is_final())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.maybe_archive(&id).await;
        }
    }

    /// A frame of `id` was written here. On the submitter, once every frame is: archive it
    /// mesh-wide. Elsewhere (`meshd fetch`), or for a cancelled job: archive it here once
    /// nothing is left to write.
    pub(super) async fn archive_if_delivered(&mut self, id: &JobId) {
        let Some(entry) = self.ledger.job(id) else {
            return;
        };
        if entry.spec.submitter == self.me
            && !entry.control.run.is_final()
            && !self.writing_here(id, entry.spec.frames.len())
        {
            let mut next = entry
                .control
                .next(RunState::Archived, entry.control.priority);
            crate::ledger::sign::sign_control(&self.identity, id, &mut next);
            self.merge_control_from(None, *id, next).await;
            let _ = self.store.flush();
            self.publish(GossipMsg::Control(*id, next)).await;
        } else {
            self.maybe_archive(id).await;
        }
    }

    /// `meshd rm`: forgets a job here for good (its frame states, its output bookkeeping;
    /// its blobs go with the next collection). A running job must be cancelled first.
    pub(super) fn remove(&mut self, id: &JobId) -> Result<ControlResponse, String> {
        let (name, control) = match (self.ledger.job(id), self.ledger.archived(id)) {
            (_, Some(a)) => (a.spec.name.clone(), a.control),
            (Some(e), None) => {
                let over = self.settle.is_over(id)
                    || crate::ledger::job_state(e, &self.view(), &self.policy) == JobState::Failed;
                if !over {
                    return Err(format!(
                        "job {} is still running: `meshd cancel` it first",
                        e.spec.name
                    ));
                }
                (e.spec.name.clone(), e.control)
            }
            (None, None) => return Err("no such job".into()),
        };
        self.render.drop_job(id);
        self.scenes.remove(id);
        self.frames_moved.remove(id);
        self.write_retry.retain(|(j, _), _| j != id);
        self.write_ready.retain(|(j, _)| j != id);
        self.local_jobs.remove(id);
        self.written.remove(id);
        self.ledger.forget(id);
        self.settle.recheck(&self.ledger, id);
        self.store.forget_job(id).map_err(|e| e.to_string())?;
        let _ = self.store.flush();
        info!(job = %id.short(), "job removed");
        Ok(ControlResponse {
            id: id.to_hex(),
            name,
            run: control.run,
            priority: control.priority,
        })
    }

    /// `meshd fetch` of an archived job: its frame states come back from disk, and it stays
    /// here until its frames are written.
    pub(super) fn unarchive(&mut self, id: &JobId) -> Result<(), String> {
        let Some(a) = self.ledger.archived(id).cloned() else {
            return Ok(());
        };
        if !a.complete() {
            return Err(format!(
                "job {} was cancelled before it finished: nothing to fetch",
                a.spec.name
            ));
        }
        let updates = self.store.job_frames(id).map_err(|e| e.to_string())?;
        self.ledger.unarchive(id, &updates);
        self.store.unarchive(id).map_err(|e| e.to_string())?;
        self.settle.recheck(&self.ledger, id);
        info!(job = %id.short(), "archived job brought back to fetch its frames");
        Ok(())
    }
}

impl Daemon {
    /// How `meshd status` shows an archived job: its summary, without frames.
    pub(super) fn archived_view(&self, id: &JobId, a: &ArchivedJob) -> JobView {
        let local = self.local_jobs.get(id);
        JobView {
            id: id.to_hex(),
            name: a.spec.name.clone(),
            state: if a.complete() {
                JobState::Done
            } else {
                JobState::Cancelled
            },
            frames_total: a.spec.frames.len(),
            frames_done: a.done,
            frames_in_flight: 0,
            frames_failed: 0,
            duplicates: a.duplicates,
            submitter: a.spec.submitter.to_string(),
            created_unix_ms: a.spec.created_unix_ms,
            priority: a.control.priority,
            out_dir: local.map(|l| l.out_dir.clone()),
            frames_written: local.map(|_| self.written.get(id).map_or(0, |w| w.len())),
            failure: None,
            waiting: None,
            frames: Vec::new(),
            blender_version: a.spec.blender_version.clone(),
            require_blender: a.spec.require_blender.clone(),
            bytes_moved: self.bytes_moved(id),
            project: self.project_view(id),
            archived: true,
            cost_usd: self.cloud.job_spend(id),
        }
    }
}
