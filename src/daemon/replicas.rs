//! Keeping finished frames alive after their renderer is gone.
//!
//! When a peer hears of a result it did not render, it computes the frame's replica
//! holders ([`replica_holders`]: `--replicas` live peers, less the renderer and the
//! submitter, by rendezvous hash) and, if it is one of them, fetches the output and keeps
//! it (the cache protects results, see `cache.rs`). The submitter then finds the frame at a
//! replica even if the renderer died between render and delivery; when no copy is left the
//! submitter declares the result lost (`outputs.rs`) and the frame is rendered again.
//!
//! News from gossip counts, and so does news from sync (gossip between two peers may need a
//! third that is gone) for jobs still running or whose submitter is not connected. Work per event is
//! proportional to the frames that changed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::{Daemon, TaskDone};
use crate::ids::{BlobId, JobId};
use crate::ledger::{JobState, job_state, replica_holders};

/// Copies fetched at once.
const PARALLEL: usize = 4;
/// Attempts per copy before giving up (the renderer may be gone already).
const ATTEMPTS: u32 = 5;

/// A copy to make.
#[derive(Debug)]
struct Want {
    job: JobId,
    frame: u32,
    from: PeerId,
    attempts: u32,
    next: Instant,
    running: bool,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    wants: HashMap<BlobId, Want>,
}

/// Why a copy of a result was not kept.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// It could not be fetched (yet).
    Fetch(String),
    /// Its bytes are no frame of the job: no image of its format, or not at its size.
    Unusable(String),
}

impl Daemon {
    /// After news of `changed` frames: queue copies of results this peer should hold. News
    /// from a sync (`catch_up`) may be old: it counts only for jobs still running or whose
    /// submitter is not connected (it would fetch them itself), so a peer joining a mesh
    /// with a long history does not copy it all.
    pub(super) fn note_results(&mut self, changed: &[(JobId, u32)], catch_up: bool) {
        if self.cfg.replicas == 0 || changed.is_empty() {
            return;
        }
        let view = self.view();
        let live = view.live_peers();
        let connected = self.peers.connected();
        // Per job, once: whether old news of it still calls for copies.
        let mut wanted_job: HashMap<JobId, bool> = HashMap::new();
        let mut new = Vec::new();
        for (job, frame) in changed {
            let Some(entry) = self.ledger.job(job) else {
                continue;
            };
            let submitter = entry.spec.submitter;
            if submitter == self.me {
                continue; // the submitter fetches every frame anyway
            }
            let wanted = *wanted_job.entry(*job).or_insert_with(|| {
                !catch_up
                    || !connected.contains(&submitter)
                    || job_state(entry, &view, &self.policy) == JobState::Running
            });
            let Some(state) = entry.frames.get(frame).filter(|_| wanted) else {
                continue;
            };
            for d in state.results() {
                if d.peer == self.me
                    || self.replicas.wants.contains_key(&d.output)
                    || self.store.has_blob(&d.output)
                {
                    continue;
                }
                let candidates: Vec<PeerId> = live
                    .iter()
                    .filter(|p| **p != d.peer && **p != submitter)
                    .copied()
                    .collect();
                if replica_holders(job, *frame, &candidates, self.cfg.replicas).contains(&self.me) {
                    new.push((*job, *frame, d.peer, d.output));
                }
            }
        }
        for (job, frame, from, output) in new {
            debug!(job = %job.short(), frame, "keeping a copy of this frame");
            self.replicas.wants.insert(
                output,
                Want {
                    job,
                    frame,
                    from,
                    attempts: 0,
                    next: Instant::now(),
                    running: false,
                },
            );
        }
        self.replicate();
    }

    /// Starts due copies, at most [`PARALLEL`] at once.
    pub(super) fn replicate(&mut self) {
        let now = Instant::now();
        let mut running = self.replicas.wants.values().filter(|w| w.running).count();
        let due: Vec<BlobId> = self
            .replicas
            .wants
            .iter()
            .filter(|(_, w)| !w.running && w.next <= now)
            .map(|(b, _)| *b)
            .collect();
        for blob in due {
            if running >= PARALLEL {
                break;
            }
            let Some(w) = self.replicas.wants.get_mut(&blob) else {
                continue;
            };
            w.running = true;
            running += 1;
            let (from, job) = (w.from, w.job);
            let providers = self.providers(std::iter::once(from));
            let net = self.net.clone();
            let store = self.store.clone();
            let stats = self.frames_moved(job);
            // Checked like the submitter checks it: a copy of no frame is not worth keeping.
            let spec = self
                .ledger
                .job(&job)
                .map(|e| (e.spec.settings.format, e.spec.size));
            let task = self.tasks.spawn(async move {
                let result = async {
                    let ctx = crate::transfer::FetchCtx::new(
                        net.clone(),
                        store.clone(),
                        providers.clone(),
                    )
                    .with_stats(stats.clone());
                    let path = ctx
                        .fetch(blob)
                        .await
                        .map_err(|e| CopyError::Fetch(e.to_string()))?;
                    let Some((format, size)) = spec else {
                        return Ok(());
                    };
                    tokio::task::spawn_blocking(move || {
                        super::outputs::check_output(&path, format, size)
                    })
                    .await
                    .map_err(|e| CopyError::Fetch(e.to_string()))?
                    .map_err(CopyError::Unusable)
                }
                .await;
                TaskDone::Replicated { blob, result }
            });
            self.owners
                .insert(task.id(), super::TaskOwner::Replica(blob));
        }
    }

    pub(super) async fn on_replicated(&mut self, blob: BlobId, result: Result<(), CopyError>) {
        let Some(w) = self.replicas.wants.get_mut(&blob) else {
            return;
        };
        w.running = false;
        match result {
            Ok(()) => {
                info!(job = %w.job.short(), frame = w.frame, "holding a copy of the frame");
                self.replicas.wants.remove(&blob);
            }
            Err(CopyError::Unusable(why)) => {
                let (job, frame, from) = (w.job, w.frame, w.from);
                self.replicas.wants.remove(&blob);
                warn!(job = %job.short(), frame, peer = %from, "not keeping a copy: {why}");
                // Its renderer signed these bytes as the frame.
                self.punish(from, "it signed a result that is no frame of its job")
                    .await;
            }
            Err(CopyError::Fetch(e)) => {
                w.attempts += 1;
                if w.attempts >= ATTEMPTS {
                    debug!(job = %w.job.short(), frame = w.frame, "giving up on a copy: {e}");
                    self.replicas.wants.remove(&blob);
                } else {
                    w.next = Instant::now() + Duration::from_secs(1 << w.attempts.min(4));
                }
            }
        }
    }
}
