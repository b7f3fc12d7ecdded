//! Which jobs are over, kept up to date per change, so that the periodic work (claiming,
//! fetching projects, writing outputs) skips them at no cost per frame: per-tick work
//! follows the jobs still active, not the history.
//!
//! A job is over when every frame has a result that counts, or when it is cancelled. Neither
//! depends on who is alive, so the set changes only with the ledger: a frame gaining or
//! losing its result (a result declared lost), a control change, a new job.

use std::collections::HashSet;

use crate::ids::JobId;
use crate::ledger::{Ledger, RunState};

#[derive(Debug, Default)]
pub(super) struct Settled {
    over: HashSet<JobId>,
}

impl Settled {
    /// Looks at every job once (at start).
    pub(super) fn of(ledger: &Ledger) -> Self {
        let mut s = Settled::default();
        for (id, _) in ledger.jobs() {
            s.recheck(ledger, id);
        }
        s
    }

    /// Re-evaluates `job` from its tally (frames left) and control (O(1)).
    pub(super) fn recheck(&mut self, ledger: &Ledger, job: &JobId) {
        let Some(e) = ledger.job(job) else {
            self.over.remove(job);
            return;
        };
        if e.tally.unfinished.is_empty() || e.control.run == RunState::Cancelled {
            self.over.insert(*job);
        } else {
            self.over.remove(job);
        }
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
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch: 1,
            peer: peer(1),
            output: crate::ids::BlobId::of(&f.to_le_bytes()),
            render_ms: 1,
            thumb: None,
        };
        let apply = |l: &mut Ledger, s: &mut Settled, f: u32, state: FrameState| {
            l.apply(&FrameUpdate {
                job: id,
                frame: f,
                state,
            })
            .unwrap();
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
