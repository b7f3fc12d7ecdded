//! What this peer takes on per submitter: a member who submits a flood of jobs or frames,
//! or a huge project, gets this peer's time and disk only up to its quotas
//! (`meshd join --quota-jobs/--quota-frames/--quota-project-bytes`).
//!
//! Jobs of one submitter are taken in the order they were submitted: the oldest running
//! ones that fit the job and frame quotas. A job past them waits here (its project is not
//! fetched, no frame is claimed) until earlier ones are over; the rest of the mesh is not
//! affected. Pure: the daemon asks once per scheduling round.

use std::collections::{BTreeMap, HashSet};

use libp2p::PeerId;

use crate::ids::JobId;

/// Limits per submitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Running jobs of one submitter this peer works on.
    pub jobs: usize,
    /// Frames in all of those jobs.
    pub frames: u64,
    /// Bytes of one job's project (checked once its manifest is here).
    pub project_bytes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            jobs: 64,
            frames: 2_000_000,
            project_bytes: 200 << 30,
        }
    }
}

/// A running job, as the quota sees it.
#[derive(Clone, Copy, Debug)]
pub struct RunningJob {
    pub id: JobId,
    pub submitter: PeerId,
    pub created_unix_ms: u64,
    pub frames: u64,
}

/// The running jobs this peer may work on: per submitter, the oldest first while they fit.
/// A job alone over the frame quota is never taken.
pub fn within(jobs: impl IntoIterator<Item = RunningJob>, q: &Quota) -> HashSet<JobId> {
    let mut by_submitter: BTreeMap<PeerId, Vec<RunningJob>> = BTreeMap::new();
    for j in jobs {
        by_submitter.entry(j.submitter).or_default().push(j);
    }
    let mut out = HashSet::new();
    for (_, mut jobs) in by_submitter {
        jobs.sort_by_key(|j| (j.created_unix_ms, j.id));
        let mut frames = 0u64;
        for j in jobs.into_iter().take(q.jobs) {
            if frames + j.frames > q.frames {
                break;
            }
            frames += j.frames;
            out.insert(j.id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8, submitter: PeerId, created: u64, frames: u64) -> RunningJob {
        RunningJob {
            id: JobId([n; 32]),
            submitter,
            created_unix_ms: created,
            frames,
        }
    }

    #[test]
    fn each_submitter_gets_its_oldest_jobs_within_the_quota() {
        let a = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let b = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let q = Quota {
            jobs: 2,
            frames: 100,
            project_bytes: 0,
        };
        let jobs = [
            job(1, a, 30, 10),
            job(2, a, 10, 10),
            job(3, a, 20, 10),
            job(4, b, 5, 60),
            job(5, b, 6, 60),
        ];
        let ok = within(jobs, &q);
        // a: the two oldest; b: the second would pass 100 frames.
        assert_eq!(
            ok,
            HashSet::from([JobId([2; 32]), JobId([3; 32]), JobId([4; 32])])
        );
        assert!(within([job(9, a, 1, 101)], &q).is_empty());
    }
}
