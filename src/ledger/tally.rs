//! Per-job aggregates, kept up to date on every merge, so that the scheduler's questions
//! (which frames are left, how many duplicates, who failed how often, who renders how fast)
//! cost time proportional to what is still active in a job, not to its history.
//!
//! A frame's contribution is a function of its state alone: on each change the old
//! state's contribution is taken out and the new one's put in. [`Tally::of`] computes the
//! same from scratch, which the tests compare against.

use std::collections::{BTreeMap, BTreeSet};

use libp2p_identity::PeerId;

use super::frame::FrameState;
use super::job::JobSpec;

/// What a job's frame states add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// The job's frames without a result that counts (pending, in flight or given up), in
    /// ascending order.
    pub unfinished: BTreeSet<u32>,
    /// Results beyond one per frame.
    pub duplicates: usize,
    /// Failed attempts per peer: distinct epochs per frame, stops for pause or cancel left
    /// out.
    pub failures: BTreeMap<PeerId, usize>,
    /// Per peer, over its results that count: total render milliseconds and their number.
    pub renders: BTreeMap<PeerId, (u64, u64)>,
    /// Open claims per holder and incarnation: frames it claimed that have no result and
    /// no failure or result of its own under that claim (whether live or not). A peer
    /// holds about as many as it has render slots; many more is a claim flood.
    pub open_claims: BTreeMap<(PeerId, u64), usize>,
    /// Peers excluded from the job: the submitter declared a result of theirs unusable
    /// (with the number of such declarations).
    pub excluded: BTreeMap<PeerId, usize>,
}

impl Tally {
    /// The tally of a job with no frame state yet: every frame unfinished.
    pub fn new(spec: &JobSpec) -> Self {
        Tally {
            unfinished: spec.frames.iter().collect(),
            ..Tally::default()
        }
    }

    /// The tally of `frames`, computed from scratch.
    pub fn of<'a>(
        spec: &JobSpec,
        frames: impl IntoIterator<Item = (&'a u32, &'a FrameState)>,
    ) -> Self {
        let mut t = Tally::new(spec);
        for (frame, state) in frames {
            t.changed(*frame, None, state);
        }
        t
    }

    /// Frame `frame` went from `before` (none: the empty state) to `after`.
    pub fn changed(&mut self, frame: u32, before: Option<&FrameState>, after: &FrameState) {
        if let Some(b) = before {
            self.account(b, false);
        }
        self.account(after, true);
        if after.canonical().is_some() {
            self.unfinished.remove(&frame);
        } else {
            self.unfinished.insert(frame);
        }
    }

    /// Open claims of `peer`, over its incarnations.
    pub fn open_claims_of(&self, peer: &PeerId) -> usize {
        self.open_claims
            .range((*peer, 0)..=(*peer, u64::MAX))
            .map(|(_, n)| n)
            .sum()
    }

    /// Open claims of `peer` made by incarnations `live` accepts (its running one: claims of
    /// an incarnation that died are not being rendered).
    pub fn open_claims_by(&self, peer: &PeerId, live: impl Fn(u64) -> bool) -> usize {
        self.open_claims
            .range((*peer, 0)..=(*peer, u64::MAX))
            .filter(|((_, incarnation), _)| live(*incarnation))
            .map(|(_, n)| n)
            .sum()
    }

    /// Mean render milliseconds of each peer's results that count.
    pub fn mean_render_ms(&self) -> BTreeMap<PeerId, f64> {
        self.renders
            .iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(p, (sum, n))| (*p, *sum as f64 / *n as f64))
            .collect()
    }

    /// Adds (`add`) or takes out a state's contribution to the sums.
    fn account(&mut self, state: &FrameState, add: bool) {
        let apply = |v: &mut usize, by: usize| {
            *v = if add { *v + by } else { v.saturating_sub(by) };
        };
        apply(&mut self.duplicates, state.duplicates());
        // Sorted by (epoch, peer, reason): repeats of one attempt are adjacent.
        let mut prev = None;
        for f in state.failures.iter().filter(|f| f.counts()) {
            let key = (f.epoch, f.peer);
            if prev != Some(key) {
                apply(self.failures.entry(f.peer).or_insert(0), 1);
                prev = Some(key);
            }
        }
        if let Some(c) = &state.claim
            && state.canonical().is_none()
            && !state.failed_at(&c.peer, c.epoch)
            && !state.finished_at(&c.peer, c.epoch)
        {
            apply(
                self.open_claims.entry((c.peer, c.incarnation)).or_insert(0),
                1,
            );
        }
        for l in state.lost.iter().filter(|l| l.unusable) {
            apply(self.excluded.entry(l.peer).or_insert(0), 1);
        }
        for d in state.results() {
            let e = self.renders.entry(d.peer).or_insert((0, 0));
            if add {
                e.0 += d.render_ms;
                e.1 += 1;
            } else {
                e.0 = e.0.saturating_sub(d.render_ms);
                e.1 = e.1.saturating_sub(1);
            }
        }
        if !add {
            self.failures.retain(|_, n| *n > 0);
            self.renders.retain(|_, (_, n)| *n > 0);
            self.open_claims.retain(|_, n| *n > 0);
            self.excluded.retain(|_, n| *n > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ledger::frame::tests::{arb_state, job_id};
    use crate::ledger::state::tests::spec;

    proptest! {
        /// Kept up to date merge by merge, the tally equals one computed from scratch.
        #[test]
        fn the_running_tally_equals_one_from_scratch(
            updates in prop::collection::vec((1u32..6, arb_state()), 0..24)
        ) {
            let spec = spec("1-5", 0, 1);
            let mut frames: BTreeMap<u32, FrameState> = BTreeMap::new();
            let mut tally = Tally::new(&spec);
            for (frame, delta) in updates {
                let before = frames.get(&frame).cloned();
                let state = frames.entry(frame).or_default();
                if state.merge(&job_id(), frame, &delta) {
                    tally.changed(frame, before.as_ref(), state);
                }
            }
            prop_assert_eq!(&tally, &Tally::of(&spec, &frames));
        }
    }
}
