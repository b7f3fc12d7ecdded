//! Keeping the blob store within `--cache-size`, and `meshd gc`.
//!
//! Protected, never removed: the project (manifest and every file) of each running job and of
//! each job submitted here whose frames are not all written; every result not yet written to
//! its submitter's output dir as far as this peer can tell (on the submitter: frames not yet
//! written; elsewhere: every result, since delivery is not acknowledged); blobs being fetched;
//! thumbnails of every result of an active job (a few KiB each: dashboards show them).
//! Everything else goes oldest-use first, and work dirs of jobs that are over go with it.

use std::collections::HashSet;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Daemon, SceneState, TaskDone};
use crate::ids::BlobId;
use crate::store::gc::{GcReport, remove_work_dirs};
use crate::transfer::project::{MAX_PROJECT_MANIFEST_BYTES, ProjectManifest};

impl Daemon {
    /// Blobs that must stay, and the jobs whose work dirs must stay.
    fn protected(&self) -> (HashSet<BlobId>, HashSet<String>) {
        let mut blobs = HashSet::new();
        let mut jobs = HashSet::new();
        for (id, entry) in self.ledger.jobs() {
            let written = self.written.get(id);
            let local = self.local_jobs.contains_key(id);
            let mut undelivered = false;
            for (frame, state) in &entry.frames {
                blobs.extend(state.done.iter().filter_map(|d| d.thumb));
                if local {
                    if state.canonical().is_some()
                        && !written.is_some_and(|w| w.contains_key(frame))
                    {
                        blobs.extend(state.results().map(|d| d.output));
                        undelivered = true;
                    }
                } else {
                    blobs.extend(state.done.iter().map(|d| d.output));
                }
            }
            let fetching = matches!(self.scenes.get(id), Some(SceneState::Fetching(..)));
            let unwritten = local && (undelivered || entry.frames.len() < entry.spec.frames.len());
            if self.job_running(entry) || unwritten || fetching {
                jobs.insert(id.to_hex());
                blobs.insert(entry.spec.project);
                let manifest = match self.scenes.get(id) {
                    Some(SceneState::Ready(c, _)) => Some(c.manifest.clone()),
                    _ => self
                        .store
                        .read_blob(&entry.spec.project, MAX_PROJECT_MANIFEST_BYTES)
                        .and_then(|b| ProjectManifest::decode(&b).ok()),
                };
                if let Some(m) = manifest {
                    blobs.extend(m.blobs());
                }
            }
        }
        // Warm workers keep their job's files open.
        for j in self.render.jobs_in_use() {
            jobs.insert(j.to_hex());
            if let Some(e) = self.ledger.job(&j) {
                blobs.insert(e.spec.project);
            }
            if let Some(SceneState::Ready(c, _)) = self.scenes.get(&j) {
                blobs.extend(c.manifest.blobs());
            }
        }
        (blobs, jobs)
    }

    /// Starts a collection down to `limit` bytes; `reply` gets the report.
    pub(super) fn collect_garbage(
        &mut self,
        limit: u64,
        reply: Option<oneshot::Sender<Result<GcReport, String>>>,
    ) {
        if self.collecting {
            if let Some(r) = reply {
                let _ = r.send(Err("a collection is already running; try again".into()));
            }
            return;
        }
        let (protected, keep_jobs) = self.protected();
        // Taken with the protected set: blobs unpinned from now on reached the ledger
        // after it was computed, and the collection keeps them (store/pins.rs).
        let mark = self.store.pin_mark();
        // Work dirs of jobs that are over go; forget their laid-out projects with them.
        let over: Vec<_> = self
            .scenes
            .keys()
            .filter(|j| !keep_jobs.contains(&j.to_hex()))
            .copied()
            .collect();
        for j in over {
            self.scenes.remove(&j);
        }
        // Output writes in flight are safe: their frames are not "written" yet, so protected.
        let store = self.store.clone();
        let work = self.cfg.data_dir.join("work");
        self.collecting = true;
        let task = self.tasks.spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                let mut report = store
                    .collect(&protected, mark, limit)
                    .map_err(|e| e.to_string())?;
                report.work_dirs_removed = remove_work_dirs(&work, &keep_jobs);
                Ok(report)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            TaskDone::Collected { result, reply }
        });
        self.owners.insert(task.id(), super::TaskOwner::Collection);
    }

    pub(super) fn on_collected(
        &mut self,
        result: Result<GcReport, String>,
        reply: Option<oneshot::Sender<Result<GcReport, String>>>,
    ) {
        self.collecting = false;
        match &result {
            Ok(r) if r.blobs_removed + r.partials_removed + r.work_dirs_removed > 0 => info!(
                blobs = r.blobs_removed,
                freed = r.bytes_freed,
                partials = r.partials_removed,
                work_dirs = r.work_dirs_removed,
                kept = r.bytes_kept,
                "cache collected"
            ),
            Ok(_) => {}
            Err(e) => warn!("cache collection failed: {e}"),
        }
        if let Some(r) = reply {
            let _ = r.send(result);
        }
    }
}
