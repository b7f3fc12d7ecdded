//! Job control: pause, resume, cancel and priority, decided by the job's submitter and spread
//! like every other state.
//!
//! A job's [`JobControl`] is a last-writer-wins register written only by the submitter,
//! which numbers its changes (`seq`, one above the highest it has seen). Merge keeps the
//! higher `seq`; at equal `seq` (only possible from a submitter that lost its database) the
//! greater `(run, priority)`, so the merge is still a join. `Cancelled` is final: the
//! submitter refuses to change a cancelled job.

use serde::{Deserialize, Serialize};

use super::sign::Sig;

/// Whether a job's frames may be rendered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    #[default]
    Active,
    Paused,
    Cancelled,
    /// The submitter has written every frame: peers may archive the job (see
    /// [`super::archive`]). Final, like `Cancelled`.
    Archived,
}

impl RunState {
    /// Whether the job is over for good: no change follows.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Cancelled | RunState::Archived)
    }
}

/// The control register of one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobControl {
    /// The submitter's change counter; 0 means never changed (the spec's priority holds).
    pub seq: u64,
    pub run: RunState,
    pub priority: i32,
    /// The submitter's signature ([`super::sign::sign_control`]); none on the initial
    /// control, which never travels.
    pub sig: Sig,
}

impl JobControl {
    /// The control of a job nobody changed yet.
    pub fn initial(priority: i32) -> Self {
        JobControl {
            seq: 0,
            run: RunState::Active,
            priority,
            sig: Sig::default(),
        }
    }

    fn key(&self) -> (u64, RunState, i32, Sig) {
        (self.seq, self.run, self.priority, self.sig)
    }

    /// Joins `other` into `self`; returns whether `self` changed.
    pub fn merge(&mut self, other: &JobControl) -> bool {
        if other.key() > self.key() {
            *self = *other;
            true
        } else {
            false
        }
    }

    /// The next change the submitter makes from this state (unsigned: see
    /// [`super::sign::sign_control`]).
    pub fn next(&self, run: RunState, priority: i32) -> JobControl {
        JobControl {
            seq: self.seq + 1,
            run,
            priority,
            sig: Sig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb() -> impl Strategy<Value = JobControl> {
        (0u64..4, 0u8..4, -2i32..3).prop_map(|(seq, r, priority)| JobControl {
            sig: Sig::default(),
            seq,
            run: [
                RunState::Active,
                RunState::Paused,
                RunState::Cancelled,
                RunState::Archived,
            ][r as usize],
            priority,
        })
    }

    fn join(a: &JobControl, b: &JobControl) -> JobControl {
        let mut x = *a;
        x.merge(b);
        x
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in arb(), b in arb(), c in arb()) {
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
            prop_assert_eq!(join(&a, &a), a);
        }
    }

    #[test]
    fn the_latest_change_wins() {
        let start = JobControl::initial(0);
        let paused = start.next(RunState::Paused, 0);
        let resumed = paused.next(RunState::Active, 5);
        let mut seen = start;
        assert!(seen.merge(&resumed));
        assert!(!seen.merge(&paused), "an older change arriving late loses");
        assert_eq!((seen.run, seen.priority), (RunState::Active, 5));
    }
}
