//! One frame's CRDT state: a claim register and grow-only sets of results and failures.
//!
//! [`FrameState::merge`] is the join of a semilattice, so states can be merged in any order,
//! any number of times, and always converge.

use std::collections::BTreeSet;

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::sign::Sig;
use super::sorted::SortedSet;
use crate::ids::{BlobId, JobId};

/// Longest failure reason accepted, in bytes.
pub const MAX_REASON: usize = 2048;

/// Most `Done` results kept per frame (the least ones; the canonical one is always kept).
pub const MAX_DONE: usize = 16;

/// Most failures kept per frame (the least ones).
pub const MAX_FAILURES: usize = 64;

/// Most lost results kept per frame (the least ones). A frame whose results were lost this
/// often is given up (see `policy::frame_status`): every result of it counts as lost.
pub const MAX_LOST: usize = 4;

/// A peer's claim on a frame. `incarnation` counts the holder daemon's starts: the claim is
/// live only while that peer's heartbeat for that incarnation is fresh. Signed by `peer`
/// (see [`super::sign`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    pub peer: PeerId,
    pub incarnation: u64,
    pub epoch: u32,
    pub sig: Sig,
}

/// A finished render. Ordered by field order; the least `Done` of a frame is canonical.
/// Signed by `peer`, and it carries that peer's signed claim at `epoch` by `incarnation`
/// (`claim_sig`): a result follows a claim its renderer made (see [`super::sign`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Done {
    pub epoch: u32,
    pub peer: PeerId,
    pub output: BlobId,
    pub render_ms: u64,
    /// The renderer's thumbnail of the output (a small JPEG, `render::thumb`), when it
    /// could make one.
    pub thumb: Option<BlobId>,
    pub incarnation: u64,
    pub claim_sig: Sig,
    pub sig: Sig,
}

/// The reason of a [`Failure`] that only releases a claim: the holder stopped the render
/// because the job was paused or cancelled. It does not count as a failed attempt.
pub const STOPPED: &str = "stopped: the job was paused or cancelled";

/// A failed render attempt by `peer` under its claim at `epoch`. Signed by `peer`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Failure {
    pub epoch: u32,
    pub peer: PeerId,
    pub reason: String,
    pub sig: Sig,
}

/// A result whose output nobody can serve any more: its renderer is gone and no replica
/// answers. Names the [`Done`] by its `(epoch, peer)` (a peer finishes a frame at most once
/// per epoch). Only the job's submitter declares a result lost, and signs it; see
/// docs/protocol.md, "Lost results".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lost {
    pub epoch: u32,
    pub peer: PeerId,
    /// The submitter fetched the result and its bytes are no image of the job's format
    /// (or its renderer was caught lying otherwise): the renderer is excluded from the
    /// job, its claims on it hold nothing (see `policy::frame_status_in`).
    pub unusable: bool,
    pub sig: Sig,
}

impl Lost {
    /// An unsigned declaration that `d` is lost (for tests of the CRDT).
    #[cfg(test)]
    pub fn of(d: &Done) -> Self {
        Lost {
            epoch: d.epoch,
            peer: d.peer,
            unusable: false,
            sig: Sig::default(),
        }
    }

    /// Whether this declares `d` lost.
    pub fn names(&self, d: &Done) -> bool {
        self.epoch == d.epoch && self.peer == d.peer
    }
}

/// The hash that orders claims of equal epoch: `blake3(job ‖ frame ‖ epoch ‖ peer ‖
/// incarnation)`, integers little-endian.
fn claim_rank(job: &JobId, frame: u32, c: &Claim) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(job.as_bytes());
    h.update(&frame.to_le_bytes());
    h.update(&c.epoch.to_le_bytes());
    h.update(&c.peer.to_bytes());
    h.update(&c.incarnation.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Whether claim `a` beats claim `b` on `frame` of `job`: the higher epoch wins; at equal
/// epoch the lower `blake3(job ‖ frame ‖ epoch ‖ peer ‖ incarnation)` wins. A strict total
/// order: identical claims give `false`, and of two different claims exactly one beats the
/// other.
pub fn claim_beats(job: &JobId, frame: u32, a: &Claim, b: &Claim) -> bool {
    if a.epoch != b.epoch {
        return a.epoch > b.epoch;
    }
    if a == b {
        return false;
    }
    let (ra, rb) = (claim_rank(job, frame, a), claim_rank(job, frame, b));
    if ra != rb {
        return ra < rb;
    }
    // Only on a blake3 collision, or for two signatures of one claim (only its signer can
    // make those): fall back to the claims themselves so the order stays total.
    (a.peer.to_bytes(), a.incarnation, a.sig) < (b.peer.to_bytes(), b.incarnation, b.sig)
}

/// The CRDT state of one frame. The empty state (the default) means nothing is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameState {
    /// The winning claim seen so far.
    pub claim: Option<Claim>,
    /// Finished renders; the least is canonical.
    pub done: SortedSet<Done>,
    /// Failed attempts.
    pub failures: SortedSet<Failure>,
    /// Results declared lost: they no longer count.
    pub lost: SortedSet<Lost>,
}

/// Inserts the elements of `from` missing from `into`, then keeps the `cap` least.
/// Returns whether `into` changed. Keeping the least `cap` elements of a union is itself
/// a join, so the result does not depend on merge order.
fn union_capped<T: Ord + Clone>(into: &mut SortedSet<T>, from: &SortedSet<T>, cap: usize) -> bool {
    let mut changed = false;
    for x in from {
        if into.len() >= cap && into.last().is_some_and(|max| x > max) {
            // `into` is full of smaller elements; so is everything after `x` in `from`.
            break;
        }
        if into.insert(x.clone()) {
            changed = true;
            if into.len() > cap {
                into.pop_last();
            }
        }
    }
    // Only a state built by hand can hold more than `cap`; bring it back into the lattice.
    while into.len() > cap {
        into.pop_last();
        changed = true;
    }
    changed
}

impl Failure {
    /// Whether this is a real failed attempt (not a claim released by [`STOPPED`]).
    pub fn counts(&self) -> bool {
        self.reason != STOPPED
    }
}

impl FrameState {
    /// Whether a render of this frame by `me` (running as `incarnation`) should go on: the
    /// frame has no result that counts yet, and the render is a backup (which holds no
    /// claim) or the winning claim is the one it started under: same peer, same epoch and
    /// this very incarnation. A claim of an earlier incarnation of `me` at the same epoch
    /// (published before a crash, then lost from its store) is another render's claim,
    /// and a dead one.
    pub fn render_goes_on(&self, me: &PeerId, incarnation: u64, epoch: u32, backup: bool) -> bool {
        self.canonical().is_none()
            && (backup
                || self.claim.as_ref().is_some_and(|c| {
                    c.peer == *me && c.incarnation == incarnation && c.epoch == epoch
                }))
    }

    /// A delta holding only a claim.
    pub fn from_claim(claim: Claim) -> Self {
        FrameState {
            claim: Some(claim),
            ..Default::default()
        }
    }

    /// A delta holding only a result.
    pub fn from_done(done: Done) -> Self {
        FrameState {
            done: SortedSet::from([done]),
            ..Default::default()
        }
    }

    /// A delta holding only a failure.
    pub fn from_failure(failure: Failure) -> Self {
        FrameState {
            failures: SortedSet::from([failure]),
            ..Default::default()
        }
    }

    /// Joins `other` into `self`: the winning claim by [`claim_beats`], the union of the
    /// results and of the failures (each capped at its least [`MAX_DONE`] / [`MAX_FAILURES`]
    /// elements). Returns `true` iff `self` changed.
    pub fn merge(&mut self, job: &JobId, frame: u32, other: &FrameState) -> bool {
        let mut changed = false;
        if let Some(theirs) = &other.claim {
            let take = match &self.claim {
                None => true,
                Some(ours) => claim_beats(job, frame, theirs, ours),
            };
            if take {
                self.claim = Some(theirs.clone());
                changed = true;
            }
        }
        changed |= union_capped(&mut self.done, &other.done, MAX_DONE);
        changed |= union_capped(&mut self.failures, &other.failures, MAX_FAILURES);
        changed |= union_capped(&mut self.lost, &other.lost, MAX_LOST);
        changed
    }

    /// A delta declaring a result lost.
    pub fn from_lost(lost: Lost) -> Self {
        FrameState {
            lost: SortedSet::from([lost]),
            ..Default::default()
        }
    }

    /// Whether `d` was declared lost. Once [`MAX_LOST`] results are lost every result is:
    /// the set keeps only its least entries, so a dropped one must not count again.
    pub fn is_lost(&self, d: &Done) -> bool {
        self.lost.len() >= MAX_LOST || self.lost.iter().any(|l| l.names(d))
    }

    /// Results that still count (not declared lost), least first.
    pub fn results(&self) -> impl Iterator<Item = &Done> {
        self.done.iter().filter(|d| !self.is_lost(d))
    }

    /// The canonical result: the least `Done` not declared lost.
    pub fn canonical(&self) -> Option<&Done> {
        self.results().next()
    }

    /// Results beyond the canonical one.
    pub fn duplicates(&self) -> usize {
        self.results().count().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.claim.is_none()
            && self.done.is_empty()
            && self.failures.is_empty()
            && self.lost.is_empty()
    }

    /// Number of distinct epochs at which `peer` failed this frame (several reasons given
    /// for one attempt count once).
    pub fn failed_by(&self, peer: &PeerId) -> usize {
        let epochs: BTreeSet<u32> = self
            .failures
            .iter()
            .filter(|f| f.peer == *peer && f.counts())
            .map(|f| f.epoch)
            .collect();
        epochs.len()
    }

    /// Number of distinct failed attempts, `(epoch, peer)` pairs.
    pub fn failure_count(&self) -> usize {
        let mut n = 0;
        let mut prev: Option<(u32, &PeerId)> = None;
        // Sorted by (epoch, peer, reason), so equal attempts are adjacent.
        for f in self.failures.iter().filter(|f| f.counts()) {
            let key = (f.epoch, &f.peer);
            if prev != Some(key) {
                n += 1;
                prev = Some(key);
            }
        }
        n
    }

    /// Whether `peer` finished this frame under its claim at `epoch` (a result, counting or
    /// declared lost): that claim holds no render any more.
    pub fn finished_at(&self, peer: &PeerId, epoch: u32) -> bool {
        self.done
            .iter()
            .any(|d| d.epoch == epoch && d.peer == *peer)
    }

    /// Whether `peer` reported a failure at `epoch` (or released its claim there).
    pub fn failed_at(&self, peer: &PeerId, epoch: u32) -> bool {
        self.failures
            .iter()
            .any(|f| f.epoch == epoch && f.peer == *peer)
    }

    /// The highest epoch this state mentions (claim, results or failures); 0 if none.
    pub fn max_epoch(&self) -> u32 {
        let claim = self.claim.as_ref().map_or(0, |c| c.epoch);
        let done = self.done.last().map_or(0, |d| d.epoch);
        let failed = self.failures.last().map_or(0, |f| f.epoch);
        let lost = self.lost.last().map_or(0, |l| l.epoch);
        claim.max(done).max(failed).max(lost)
    }

    /// Checks a state received from a peer against the size limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.done.len() > MAX_DONE {
            return Err(format!(
                "{} results for one frame (at most {MAX_DONE})",
                self.done.len()
            ));
        }
        if self.lost.len() > MAX_LOST {
            return Err(format!(
                "{} lost results for one frame (at most {MAX_LOST})",
                self.lost.len()
            ));
        }
        if self.failures.len() > MAX_FAILURES {
            return Err(format!(
                "{} failures for one frame (at most {MAX_FAILURES})",
                self.failures.len()
            ));
        }
        if let Some(f) = self.failures.iter().find(|f| f.reason.len() > MAX_REASON) {
            return Err(format!(
                "failure reason of {} bytes (at most {MAX_REASON})",
                f.reason.len()
            ));
        }
        Ok(())
    }
}

/// Makes `s` fit a [`Failure::reason`]: line breaks become spaces and the text is cut to
/// at most [`MAX_REASON`] bytes on a character boundary.
pub fn truncate_reason(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_REASON));
    for c in s.chars() {
        let c = if matches!(c, '\n' | '\r') { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use libp2p_identity::Keypair;
    use proptest::prelude::*;

    /// A deterministic identity for tests: the key of [`peer`]`(i)`.
    pub(crate) fn key(i: u8) -> Keypair {
        Keypair::ed25519_from_bytes([i; 32]).expect("32 bytes is a valid ed25519 secret")
    }

    /// A deterministic peer id for tests.
    pub(crate) fn peer(i: u8) -> PeerId {
        key(i).public().to_peer_id()
    }

    pub(crate) fn job_id() -> JobId {
        JobId::of(b"test job")
    }

    pub(crate) fn arb_claim() -> impl Strategy<Value = Claim> {
        (0u8..4, 0u64..2, 0u32..4).prop_map(|(p, incarnation, epoch)| Claim {
            sig: Sig::default(),
            peer: peer(p),
            incarnation,
            epoch,
        })
    }

    pub(crate) fn arb_state() -> impl Strategy<Value = FrameState> {
        let done = (0u32..3, 0u8..4, 0u8..2, 0u64..2).prop_map(|(epoch, p, o, render_ms)| Done {
            incarnation: 0,
            claim_sig: Sig::default(),
            sig: Sig::default(),
            epoch,
            peer: peer(p),
            output: BlobId::of(&[o]),
            render_ms,
            thumb: None,
        });
        let failure = (0u32..3, 0u8..4, 0u8..2).prop_map(|(epoch, p, r)| Failure {
            sig: Sig::default(),
            epoch,
            peer: peer(p),
            reason: format!("reason {r}"),
        });
        let lost = (0u32..3, 0u8..4).prop_map(|(epoch, p)| Lost {
            unusable: p == 3,
            sig: Sig::default(),
            epoch,
            peer: peer(p),
        });
        (
            prop::option::of(arb_claim()),
            prop::collection::btree_set(done, 0..3),
            prop::collection::btree_set(failure, 0..3),
            prop::collection::btree_set(lost, 0..3),
        )
            .prop_map(|(claim, done, failures, lost)| FrameState {
                claim,
                done: done.into_iter().collect(),
                failures: failures.into_iter().collect(),
                lost: lost.into_iter().collect(),
            })
    }

    #[test]
    fn a_render_stops_when_its_claim_is_beaten_even_by_its_own_earlier_incarnation() {
        let me = peer(1);
        let claim = |incarnation, epoch| {
            FrameState::from_claim(Claim {
                sig: Default::default(),
                peer: me,
                incarnation,
                epoch,
            })
        };
        // Incarnation 2 renders under its claim at epoch 1.
        let mut state = claim(2, 1);
        assert!(state.render_goes_on(&me, 2, 1, false));
        // Incarnation 1 claimed the same frame at the same epoch before a crash lost that
        // claim from its store; when the old claim arrives, whichever of the two ranks first
        // wins. Where the old one wins, the render stops: the old incarnation is dead, so
        // others take the frame at epoch 2, and going on would render it twice.
        let old = claim(1, 1);
        state.merge(&job_id(), 7, &old);
        let old_won = state.claim.as_ref().is_some_and(|c| c.incarnation == 1);
        assert_eq!(state.render_goes_on(&me, 2, 1, false), !old_won);
        let mut beaten = claim(2, 1);
        beaten.claim = Some(Claim {
            sig: Default::default(),
            peer: me,
            incarnation: 1,
            epoch: 1,
        });
        assert!(
            !beaten.render_goes_on(&me, 2, 1, false),
            "a claim of an earlier incarnation is not this render's"
        );
        // Another peer's claim, a later epoch, or a result: the render stops; a backup
        // goes on until there is a result.
        let other = FrameState::from_claim(Claim {
            sig: Default::default(),
            peer: peer(2),
            incarnation: 1,
            epoch: 2,
        });
        assert!(!other.render_goes_on(&me, 2, 1, false));
        assert!(other.render_goes_on(&me, 2, 1, true));
        let mut done = claim(2, 1);
        done.merge(
            &job_id(),
            7,
            &FrameState::from_done(Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: 1,
                peer: peer(2),
                output: BlobId::of(b"x"),
                render_ms: 1,
                thumb: None,
            }),
        );
        assert!(!done.render_goes_on(&me, 2, 1, false));
        assert!(!done.render_goes_on(&me, 2, 1, true));
    }

    fn join(a: &FrameState, b: &FrameState) -> FrameState {
        let mut out = a.clone();
        out.merge(&job_id(), 7, b);
        out
    }

    proptest! {
        #[test]
        fn merge_commutative(a in arb_state(), b in arb_state()) {
            prop_assert_eq!(join(&a, &b), join(&b, &a));
        }

        #[test]
        fn merge_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
        }

        #[test]
        fn merge_idempotent(a in arb_state(), b in arb_state()) {
            prop_assert_eq!(join(&a, &a), a.clone());
            let ab = join(&a, &b);
            let mut again = ab.clone();
            prop_assert!(!again.merge(&job_id(), 7, &b));
            prop_assert_eq!(again, ab);
        }

        #[test]
        fn merge_reports_change(a in arb_state(), b in arb_state()) {
            let mut m = a.clone();
            let changed = m.merge(&job_id(), 7, &b);
            prop_assert_eq!(changed, m != a);
        }

        #[test]
        fn canonical_is_least_done_not_lost(a in arb_state(), b in arb_state()) {
            let ab = join(&a, &b);
            let lost: BTreeSet<Lost> = a.lost.iter().chain(&b.lost).cloned().collect();
            let counting: BTreeSet<&Done> = a.done.iter().chain(&b.done)
                .filter(|d| lost.len() < MAX_LOST && !lost.iter().any(|l| l.names(d))).collect();
            prop_assert_eq!(ab.canonical(), counting.first().copied());
            prop_assert_eq!(ab.duplicates(), counting.len().saturating_sub(1));
            // Once lost, a result never counts again, whatever arrives later.
            for l in &lost {
                let mut again = ab.clone();
                again.merge(&job_id(), 7, &a);
                again.merge(&job_id(), 7, &b);
                prop_assert!(again.results().all(|d| !l.names(d)));
            }
        }

        #[test]
        fn claim_order_is_strict_total(
            a in arb_claim(), b in arb_claim(), c in arb_claim(), frame in 0u32..3,
        ) {
            let j = job_id();
            let beats = |x: &Claim, y: &Claim| claim_beats(&j, frame, x, y);
            prop_assert!(!beats(&a, &a));
            if a != b {
                prop_assert!(beats(&a, &b) != beats(&b, &a));
            } else {
                prop_assert!(!beats(&a, &b) && !beats(&b, &a));
            }
            if beats(&a, &b) && beats(&b, &c) {
                prop_assert!(beats(&a, &c));
            }
        }
    }

    #[test]
    fn higher_epoch_wins_and_hash_breaks_ties() {
        let j = job_id();
        let c = |p: u8, inc: u64, epoch: u32| Claim {
            sig: Default::default(),
            peer: peer(p),
            incarnation: inc,
            epoch,
        };
        assert!(claim_beats(&j, 1, &c(0, 0, 2), &c(1, 0, 1)));
        assert!(!claim_beats(&j, 1, &c(0, 0, 1), &c(1, 0, 2)));
        let (a, b) = (c(0, 0, 1), c(1, 0, 1));
        assert_eq!(
            claim_beats(&j, 1, &a, &b),
            claim_rank(&j, 1, &a) < claim_rank(&j, 1, &b)
        );
        // The winner at equal epoch varies with the frame.
        let wins: BTreeSet<bool> = (0..32).map(|f| claim_beats(&j, f, &a, &b)).collect();
        assert_eq!(wins.len(), 2);
    }

    #[test]
    fn caps_keep_least_elements() {
        let j = job_id();
        let mut s = FrameState::default();
        for e in (0..40u32).rev() {
            let d = FrameState::from_done(Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: e,
                peer: peer(0),
                output: BlobId::of(b"x"),
                render_ms: 1,
                thumb: None,
            });
            s.merge(&j, 1, &d);
        }
        assert_eq!(s.done.len(), MAX_DONE);
        assert_eq!(s.canonical().map(|d| d.epoch), Some(0));
        assert_eq!(s.duplicates(), MAX_DONE - 1);
        assert!(s.validate().is_ok());
        let late = FrameState::from_done(Done {
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch: 99,
            peer: peer(1),
            output: BlobId::of(b"y"),
            render_ms: 1,
            thumb: None,
        });
        assert!(!s.merge(&j, 1, &late));
        for e in 0..100u32 {
            s.merge(
                &j,
                1,
                &FrameState::from_failure(Failure {
                    sig: Default::default(),
                    epoch: e,
                    peer: peer(1),
                    reason: "boom".into(),
                }),
            );
        }
        assert_eq!(s.failures.len(), MAX_FAILURES);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn failure_counts() {
        let mut s = FrameState::default();
        for (epoch, p, reason) in [(1, 0, "a"), (1, 0, "b"), (2, 0, "a"), (2, 1, "a")] {
            s.failures.insert(Failure {
                sig: Default::default(),
                epoch,
                peer: peer(p),
                reason: reason.into(),
            });
        }
        assert_eq!(s.failed_by(&peer(0)), 2);
        assert_eq!(s.failed_by(&peer(1)), 1);
        assert_eq!(s.failed_by(&peer(2)), 0);
        assert_eq!(s.failure_count(), 3);
        assert!(s.failed_at(&peer(1), 2));
        assert!(!s.failed_at(&peer(1), 1));
        assert_eq!(s.max_epoch(), 2);
    }

    #[test]
    fn validate_limits() {
        let mut s = FrameState::from_failure(Failure {
            sig: Default::default(),
            epoch: 1,
            peer: peer(0),
            reason: "x".repeat(MAX_REASON),
        });
        assert!(s.validate().is_ok());
        s.failures.insert(Failure {
            sig: Default::default(),
            epoch: 2,
            peer: peer(0),
            reason: "x".repeat(MAX_REASON + 1),
        });
        assert!(s.validate().is_err());
        let mut s = FrameState::default();
        for e in 0..=MAX_DONE as u32 {
            s.done.insert(Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: e,
                peer: peer(0),
                output: BlobId::of(b"x"),
                render_ms: 0,
                thumb: None,
            });
        }
        assert!(s.validate().is_err());
        let mut s = FrameState::default();
        for e in 0..=MAX_FAILURES as u32 {
            s.failures.insert(Failure {
                sig: Default::default(),
                epoch: e,
                peer: peer(0),
                reason: String::new(),
            });
        }
        assert!(s.validate().is_err());
    }

    #[test]
    fn truncate_reason_is_safe() {
        assert_eq!(truncate_reason("a\nb\r\nc"), "a b  c");
        let long = "é".repeat(MAX_REASON);
        let t = truncate_reason(&long);
        assert!(t.len() <= MAX_REASON);
        assert_eq!(t.len(), MAX_REASON);
        let odd = format!("a{}", "é".repeat(MAX_REASON));
        let t = truncate_reason(&odd);
        assert_eq!(t.len(), MAX_REASON - 1);
        assert!(t.is_char_boundary(t.len()));
    }

    #[test]
    fn deltas_and_empty() {
        assert!(FrameState::default().is_empty());
        let c = Claim {
            sig: Default::default(),
            peer: peer(0),
            incarnation: 1,
            epoch: 1,
        };
        let s = FrameState::from_claim(c.clone());
        assert!(!s.is_empty());
        assert_eq!(s.claim, Some(c));
        assert_eq!(s.canonical(), None);
        assert_eq!(s.duplicates(), 0);
    }
}
