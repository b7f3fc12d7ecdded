//! Archived and forgotten jobs.
//!
//! A job is archived when it is cancelled, or when its submitter has written every frame
//! and says so ([`RunState::Archived`](super::RunState::Archived)). An archived job keeps
//! only its spec, control and a summary in the ledger: its frame states leave memory, it
//! takes no part in claiming, digests or sync, and updates for it are ignored. A peer that
//! still lists it when syncing is sent its control, so it archives the job too.
//!
//! A forgotten job (`meshd rm`) leaves only its id, so that no peer can bring it back.

use std::collections::BTreeMap;

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::control::{JobControl, RunState};
use super::job::JobSpec;
use super::state::{FrameUpdate, JobEntry, Ledger};
use crate::ids::JobId;

/// What is kept of an archived job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedJob {
    pub spec: JobSpec,
    pub control: JobControl,
    /// Frames with a result when the job was archived.
    pub done: usize,
    /// Results beyond the canonical one, over all frames.
    pub duplicates: usize,
    /// Canonical results per renderer.
    pub rendered_by: Vec<(PeerId, u32)>,
}

impl ArchivedJob {
    /// Whether every frame was rendered (else the job was cancelled first).
    pub fn complete(&self) -> bool {
        self.done >= self.spec.frames.len()
    }
}

impl Ledger {
    /// Moves job `id` to the archive: its frame states leave the ledger. Returns the
    /// summary kept, or `None` if the job is not active here.
    pub fn archive(&mut self, id: &JobId) -> Option<&ArchivedJob> {
        let entry = self.jobs.remove(id)?;
        self.digests.remove(id);
        let (mut done, mut duplicates) = (0, 0);
        let mut by: BTreeMap<PeerId, u32> = BTreeMap::new();
        for state in entry.frames.values() {
            if let Some(d) = state.canonical() {
                done += 1;
                *by.entry(d.peer).or_default() += 1;
            }
            duplicates += state.duplicates();
        }
        let summary = ArchivedJob {
            spec: entry.spec,
            control: entry.control,
            done,
            duplicates,
            rendered_by: by.into_iter().collect(),
        };
        self.archived.insert(*id, summary);
        self.archived.get(id)
    }

    /// Puts back an archived job as stored (at start).
    pub fn restore_archived(&mut self, job: ArchivedJob) {
        let id = job.spec.id();
        self.jobs.remove(&id);
        self.digests.remove(&id);
        self.archived.insert(id, job);
    }

    /// Brings archived job `id` back with its frame states (as stored), as an active job.
    /// Returns whether it was archived.
    pub fn unarchive(&mut self, id: &JobId, frames: &[FrameUpdate]) -> bool {
        let Some(a) = self.archived.remove(id) else {
            return false;
        };
        self.jobs.insert(
            *id,
            JobEntry {
                tally: super::tally::Tally::new(&a.spec),
                spec: a.spec,
                control: a.control,
                frames: BTreeMap::new(),
            },
        );
        for u in frames.iter().filter(|u| u.job == *id) {
            let _ = self.apply_signed(u);
        }
        true
    }

    /// Forgets job `id` for good: only its id stays, so that it is never added again.
    /// Returns whether it was known.
    pub fn forget(&mut self, id: &JobId) -> bool {
        self.digests.remove(id);
        let known = self.jobs.remove(id).is_some() | self.archived.remove(id).is_some();
        self.forgotten.insert(*id);
        known
    }

    pub fn archived(&self, id: &JobId) -> Option<&ArchivedJob> {
        self.archived.get(id)
    }

    pub fn archived_jobs(&self) -> impl Iterator<Item = (&JobId, &ArchivedJob)> {
        self.archived.iter()
    }

    pub fn is_forgotten(&self, id: &JobId) -> bool {
        self.forgotten.contains(id)
    }

    /// Whether job `id` is archived or forgotten: news about it is ignored.
    pub fn is_retired(&self, id: &JobId) -> bool {
        self.archived.contains_key(id) || self.forgotten.contains(id)
    }
}

/// Whether a job in this control state may leave memory on a peer: it is cancelled or its
/// submitter archived it, and this peer has no frame of it left to write (`writing_here`).
pub fn archivable(control: &JobControl, writing_here: bool) -> bool {
    match control.run {
        RunState::Cancelled | RunState::Archived => !writing_here,
        RunState::Active | RunState::Paused => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobId;
    use crate::ledger::FrameState;
    use crate::ledger::frame::tests::key;
    use crate::ledger::state::tests::spec;

    #[test]
    fn an_archived_job_keeps_a_summary_and_ignores_news() {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-3", 0, 1)).unwrap();
        let done = |f: u32, p: u8| FrameUpdate {
            job: id,
            frame: f,
            // Signed: unarchiving reads states from the store, which are checked.
            state: FrameState::from_done(crate::ledger::sign::done(
                &key(p),
                &id,
                f,
                1,
                1,
                crate::ledger::sign::Rendered {
                    output: BlobId::of(&[f as u8, p]),
                    thumb: None,
                    render_ms: 1,
                },
            )),
        };
        for f in 1..=3 {
            l.apply(&done(f, 1)).unwrap();
        }
        l.apply(&done(2, 2)).unwrap();
        let a = l.archive(&id).unwrap().clone();
        assert_eq!((a.done, a.duplicates, a.complete()), (3, 1, true));
        assert_eq!(a.rendered_by.iter().map(|(_, n)| n).sum::<u32>(), 3);
        assert!(l.job(&id).is_none() && l.is_retired(&id));
        assert!(l.digests().is_empty(), "archived jobs are not synced");
        // News and the job itself are ignored from now on.
        assert_eq!(l.apply(&done(1, 3)), Ok(false));
        assert_eq!(l.insert_job(spec("1-3", 0, 1)), Ok((id, false)));
        assert!(l.job(&id).is_none());
        // Restored as stored: the same.
        let mut l2 = Ledger::new();
        l2.restore_archived(a.clone());
        assert_eq!(l2.archived(&id), Some(&a));
        // Brought back with its states: as it was.
        let mut before = Ledger::new();
        before.insert_job(spec("1-3", 0, 1)).unwrap();
        let states: Vec<FrameUpdate> = (1..=3).map(|f| done(f, 1)).chain([done(2, 2)]).collect();
        for u in &states {
            before.apply(u).unwrap();
        }
        assert!(l2.unarchive(&id, &states));
        assert_eq!(l2, before);
        assert!(!l2.unarchive(&id, &states));
        // Forgotten: gone, and never added again.
        assert!(l.forget(&id));
        assert!(l.archived(&id).is_none() && l.is_forgotten(&id));
        assert_eq!(l.insert_job(spec("1-3", 0, 1)), Ok((id, false)));
        assert!(l.job(&id).is_none());
    }

    #[test]
    fn who_archives() {
        let c = JobControl::initial(0);
        assert!(!archivable(&c, false));
        assert!(archivable(&c.next(RunState::Cancelled, 0), false));
        assert!(!archivable(&c.next(RunState::Cancelled, 0), true));
        let archived = c.next(RunState::Archived, 0);
        assert!(archivable(&archived, false));
        assert!(
            !archivable(&archived, true),
            "not while frames remain to write here"
        );
    }
}
