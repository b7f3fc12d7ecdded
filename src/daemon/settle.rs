//! Which jobs are over, kept up to date per change, so that the periodic work (claiming,
//! fetching projects, writing outputs) skips them at no cost per frame: per-tick work
//! follows the jobs still active, not the history.
//!
//! A job is over when every frame has a result that counts, or when it is cancelled. Neither
//! depends on who is alive, so the set changes only with the ledger: a frame gaining or
//! losing its result (a result declared lost), a control change, a new job.

use std::collections::{HashMap, HashSet};

use crate::ids::JobId;
use crate::ledger::{Ledger, RunState};

#[derive(Debug, Default)]
pub(super) struct Settled {
    /// Frames with a result, per job.
    with_result: HashMap<JobId, usize>,
    over: HashSet<JobId>,
}

impl Settled {
    /// Counts every job once (at start).
    pub(super) fn of(ledger: &Ledger) -> Self {
        let mut s = Settled::default();
        for (id, _) in ledger.jobs() {
            s.count(ledger, id);
        }
        s
    }

    /// Counts one job from scratch (a job brought back from the archive).
    pub(super) fn count(&mut self, ledger: &Ledger, id: &JobId) {
        let n = ledger.job(id).map_or(0, |e| {
            e.frames
                .values()
                .filter(|f| f.canonical().is_some())
                .count()
        });
        self.with_result.insert(*id, n);
        self.recheck(ledger, id);
    }

    /// A frame of `job` changed: it had a result before (`had`) and has one now (`has`).
    pub(super) fn frame_changed(&mut self, job: JobId, had: bool, has: bool) {
        let n = self.with_result.entry(job).or_insert(0);
        match (had, has) {
            (false, true) => *n += 1,
            (true, false) => *n = n.saturating_sub(1),
            _ => {}
        }
    }

    /// Re-evaluates `job` from its counts and control (O(1)).
    pub(super) fn recheck(&mut self, ledger: &Ledger, job: &JobId) {
        let Some(e) = ledger.job(job) else {
            self.over.remove(job);
            self.with_result.remove(job);
            return;
        };
        let done = self.with_result.get(job).copied().unwrap_or(0);
        if done >= e.spec.frames.len() || e.control.run == RunState::Cancelled {
            self.over.insert(*job);
        } else {
            self.over.remove(job);
        }
    }

    /// Frames of `job` with a result that counts.
    pub(super) fn results(&self, job: &JobId) -> usize {
        self.with_result.get(job).copied().unwrap_or(0)
    }

    pub(super) fn is_over(&self, job: &JobId) -> bool {
        self.over.contains(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::frame::tests::peer;
    use crate::ledger::state::tests::spec;
    use crate::ledger::{Done, FrameState, FrameUpdate, Lost};

    #[test]
    fn a_job_is_over_when_every_frame_has_a_result_and_not_after_one_is_lost() {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-2", 0, 1)).unwrap();
        let mut s = Settled::of(&l);
        assert!(!s.is_over(&id));
        let done = |f: u32| Done {
            epoch: 1,
            peer: peer(1),
            output: crate::ids::BlobId::of(&f.to_le_bytes()),
            render_ms: 1,
        };
        let apply = |l: &mut Ledger, s: &mut Settled, f: u32, state: FrameState| {
            let had = l.frame(&id, f).is_some_and(|x| x.canonical().is_some());
            l.apply(&FrameUpdate {
                job: id,
                frame: f,
                state,
            })
            .unwrap();
            let has = l.frame(&id, f).is_some_and(|x| x.canonical().is_some());
            s.frame_changed(id, had, has);
            s.recheck(l, &id);
        };
        apply(&mut l, &mut s, 1, FrameState::from_done(done(1)));
        assert!(!s.is_over(&id));
        apply(&mut l, &mut s, 2, FrameState::from_done(done(2)));
        assert!(s.is_over(&id));
        apply(&mut l, &mut s, 2, FrameState::from_lost(Lost::of(&done(2))));
        assert!(!s.is_over(&id), "a lost result makes the job active again");
        // Counting from scratch agrees with counting per change.
        assert_eq!(Settled::of(&l).is_over(&id), s.is_over(&id));
    }
}
