//! Fetching the projects of the jobs this peer may render, and telling the mesh which it
//! holds.
//!
//! At most [`MAX_SCENE_FETCHES`] projects are fetched at once. Each fetch asks the peers
//! whose heartbeats say they hold some of the project first, and learns of new holders as
//! heartbeats arrive ([`Daemon::refresh_holders`]); see `transfer::fetch`.

use std::collections::HashSet;
use std::sync::Arc;

use libp2p::PeerId;
use tracing::debug;

use super::{Daemon, SceneState, TaskDone};
use crate::ids::{BlobId, JobId};
use crate::ledger::JobEntry;
use crate::transfer::{FetchCtx, Holders};

/// Projects fetched at once.
const MAX_SCENE_FETCHES: usize = 3;

impl Daemon {
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
            .filter(|s| matches!(s, SceneState::Fetching(..)))
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
            let (ctx, holders) = self.project_fetch(entry);
            let ctx = ctx.with_stats(stats.clone());
            wanted.push((*id, entry.spec.project, ctx, stats, holders));
            fetching += 1;
        }
        let max_bytes = self.cfg.quota.project_bytes;
        for (id, project, ctx, stats, holders) in wanted {
            self.scenes.insert(id, SceneState::Fetching(stats, holders));
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

    /// A fetch context for a job's project: the peers known to hold some of it first
    /// (refreshed as heartbeats arrive: [`Daemon::refresh_holders`]), then the submitter, the
    /// seed, then every other connected peer. Also the holders, for the daemon to refresh.
    fn project_fetch(&self, entry: &JobEntry) -> (FetchCtx, Holders) {
        let submitter = entry.spec.submitter;
        let holders = Holders::new(self.project_holders(&entry.spec.project, submitter));
        let others = self.providers([]);
        let seeds = if submitter == self.me {
            Vec::new()
        } else {
            vec![submitter]
        };
        let ctx = FetchCtx::swarm(
            self.net.clone(),
            self.store.clone(),
            holders.clone(),
            others,
            seeds,
        );
        (ctx, holders)
    }

    /// The peers whose last heartbeat says they hold `project`: those with all of it first,
    /// then those still fetching it; not this peer nor the `seed`.
    fn project_holders(&self, project: &BlobId, seed: PeerId) -> Vec<PeerId> {
        let mut complete = Vec::new();
        let mut partial = Vec::new();
        for (peer, state) in &self.peers.peers {
            let Some(hb) = &state.heartbeat else { continue };
            if *peer == self.me || *peer == seed || !state.connected {
                continue;
            }
            for have in hb.projects.iter().filter(|h| h.project == *project) {
                if have.complete {
                    complete.push(*peer);
                } else {
                    partial.push(*peer);
                }
            }
        }
        complete.extend(partial);
        complete
    }

    /// Tells the project fetches under way who holds their project now: a look at each
    /// project this peer holds, and the peer table for each fetch (at most
    /// [`MAX_SCENE_FETCHES`]).
    pub(super) fn refresh_holders(&self) {
        for (job, state) in &self.scenes {
            let (SceneState::Fetching(_, holders), Some(entry)) = (state, self.ledger.job(job))
            else {
                continue;
            };
            holders.set(self.project_holders(&entry.spec.project, entry.spec.submitter));
        }
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
                    SceneState::Fetching(..) | SceneState::Retry(..) => false,
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
}

/// Fault injection for the test suite; compiled only with the `test-faults` feature.
#[cfg(feature = "test-faults")]
mod faults {
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
