//! Pure decisions over the merged ledger: what each frame's status is, how far a job has
//! come, and which frame this peer should claim next.
//!
//! Liveness is not in the CRDT. The caller passes what it knows about peers as a
//! [`PeerView`], built from the local receive times of their heartbeats.

use std::collections::{BTreeMap, BTreeSet};

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::control::RunState;
use super::frame::{Claim, Done, FrameState};
use super::job::JobSpec;
use super::state::{JobEntry, Ledger};
use super::tail::remaining_ms;
use crate::ids::JobId;

/// What the caller knows about other peers, judged by local receive times only.
pub trait PeerView {
    /// Whether `peer`'s heartbeat for `incarnation` arrived recently, so its claims hold.
    /// For this peer itself: whether `incarnation` is the running one.
    fn claim_live(&self, peer: &PeerId, incarnation: u64) -> bool;
    /// Peers (this one included) that are alive and able to render, or about to (still
    /// probing their Blender).
    fn live_renderers(&self) -> Vec<PeerId>;
    /// Whether live renderer `peer` may render a job of this spec at all (its Blender
    /// version and devices fit the job's requirements). Default: every renderer fits.
    fn fits(&self, _peer: &PeerId, _spec: &JobSpec) -> bool {
        true
    }
    /// What `peer` (another peer) reports rendering now, as of now. Default: nothing known,
    /// so the peer counts as free.
    fn in_flight(&self, _peer: &PeerId) -> Vec<super::tail::Running> {
        Vec::new()
    }
    /// Render slots `peer` reports (one per GPU, or one for its CPU). Default: one.
    fn slots(&self, _peer: &PeerId) -> usize {
        1
    }
}

/// Live renderers that may render this job.
pub fn fitting_renderers(entry: &JobEntry, view: &impl PeerView) -> Vec<PeerId> {
    view.live_renderers()
        .into_iter()
        .filter(|p| view.fits(p, &entry.spec))
        .collect()
}

/// Retry limits.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// A frame with this many failed attempts is given up.
    pub max_failures_per_frame: usize,
    /// A peer with this many failed attempts in a job renders no more of it.
    pub max_failures_per_peer_job: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_failures_per_frame: 3,
            max_failures_per_peer_job: 3,
        }
    }
}

/// A frame's status as this peer sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameStatus {
    /// Nobody holds a live claim: free to claim.
    Pending,
    /// Held by a live claim.
    InFlight(Claim),
    /// Rendered; the canonical result.
    Done(Done),
    /// Given up after too many failed attempts.
    Failed,
}

/// The status of a frame: `Done` if it has any result not declared lost (the canonical one);
/// `Failed` after `max_failures_per_frame` failed attempts or
/// [`MAX_LOST`](super::frame::MAX_LOST) lost results;
/// `InFlight` if its claim's holder has neither
/// reported a failure nor a result under that claim and is live for the claim's
/// incarnation; else `Pending`.
pub fn frame_status(state: &FrameState, view: &impl PeerView, policy: &RetryPolicy) -> FrameStatus {
    status_of(state, view, policy, None)
}

/// [`frame_status`] of a frame of `entry`'s job: a claim of a peer excluded from the job
/// (the submitter declared a result of theirs unusable: `Tally::excluded`) holds
/// nothing, so a liar cannot keep frames from honest peers by claiming them.
pub fn frame_status_in(
    entry: &JobEntry,
    state: &FrameState,
    view: &impl PeerView,
    policy: &RetryPolicy,
) -> FrameStatus {
    status_of(state, view, policy, Some(entry))
}

fn status_of(
    state: &FrameState,
    view: &impl PeerView,
    policy: &RetryPolicy,
    entry: Option<&JobEntry>,
) -> FrameStatus {
    if let Some(done) = state.canonical() {
        return FrameStatus::Done(done.clone());
    }
    if (state.failure_count() >= policy.max_failures_per_frame
        && failed_widely(state, view, policy, entry))
        || state.lost.len() >= super::frame::MAX_LOST
    {
        return FrameStatus::Failed;
    }
    let no_one = BTreeMap::new();
    let excluded = entry.map_or(&no_one, |e| &e.tally.excluded);
    if let Some(c) = &state.claim
        && !state.failed_at(&c.peer, c.epoch)
        // A claim whose render ended in a result (since declared lost) holds nothing.
        && !state.finished_at(&c.peer, c.epoch)
        && view.claim_live(&c.peer, c.incarnation)
        && !excluded.contains_key(&c.peer)
    {
        return FrameStatus::InFlight(c.clone());
    }
    FrameStatus::Pending
}

/// Whether a frame's failed attempts speak for more than one peer: at least two peers
/// failed it, or no live renderer (fitting the job and not blocked on it, when `entry`
/// says which) that has not failed it is left. So one member cannot fail a frame on its own (its failures are
/// signed by it alone) while another renderer could still try; a mesh of one renderer
/// still gives up after its attempts. Looked at only once the attempts are spent.
fn failed_widely(
    state: &FrameState,
    view: &impl PeerView,
    policy: &RetryPolicy,
    entry: Option<&JobEntry>,
) -> bool {
    let failers: BTreeSet<&PeerId> = state
        .failures
        .iter()
        .filter(|f| f.counts())
        .map(|f| &f.peer)
        .collect();
    if failers.len() >= 2 {
        return true;
    }
    let renderers = match entry {
        Some(e) => fitting_renderers(e, view)
            .into_iter()
            .filter(|p| !peer_blocked(e, p, policy))
            .collect(),
        None => view.live_renderers(),
    };
    renderers.iter().all(|p| failers.contains(p))
}

/// Failed attempts per peer over the job's frames.
fn failures_by_peer(entry: &JobEntry) -> &BTreeMap<PeerId, usize> {
    &entry.tally.failures
}

fn blocked_in(counts: &BTreeMap<PeerId, usize>, peer: &PeerId, policy: &RetryPolicy) -> bool {
    counts.get(peer).copied().unwrap_or(0) >= policy.max_failures_per_peer_job
}

/// Whether `peer` has failed `max_failures_per_peer_job` attempts or more in this job.
pub fn peer_blocked(entry: &JobEntry, peer: &PeerId, policy: &RetryPolicy) -> bool {
    blocked_in(failures_by_peer(entry), peer, policy)
}

/// Overall state of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
    /// The submitter paused it: nobody renders it until it is resumed.
    Paused,
    /// The submitter cancelled it: nobody renders it again.
    Cancelled,
}

/// Frame counts of a job by status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobProgress {
    pub total: usize,
    pub done: usize,
    pub in_flight: usize,
    pub pending: usize,
    pub failed: usize,
    /// Results beyond the canonical one, over all frames.
    pub duplicates: usize,
    pub state: JobState,
}

/// Counts the job's frames by [`frame_status`]. The job is `Done` when every frame is;
/// `Failed` when every frame is done or failed and some failed, or when frames are pending,
/// none is in flight, and every live renderer that [fits](PeerView::fits) the job is
/// [blocked](peer_blocked) on it; otherwise
/// `Running` (also when no renderer is live: one may join later).
pub fn job_progress(entry: &JobEntry, view: &impl PeerView, policy: &RetryPolicy) -> JobProgress {
    let total = entry.spec.frames.len();
    // Frames with a result are done whatever the view; only the unfinished ones are looked at.
    let done = total.saturating_sub(entry.tally.unfinished.len());
    let duplicates = entry.tally.duplicates;
    let (mut in_flight, mut pending, mut failed) = (0, 0, 0);
    for frame in &entry.tally.unfinished {
        let Some(state) = entry.frames.get(frame) else {
            pending += 1; // the empty state
            continue;
        };
        match frame_status_in(entry, state, view, policy) {
            FrameStatus::Pending => pending += 1,
            FrameStatus::InFlight(_) => in_flight += 1,
            FrameStatus::Done(_) => {}
            FrameStatus::Failed => failed += 1,
        }
    }

    let state = if done == total {
        JobState::Done
    } else if entry.control.run == RunState::Cancelled {
        JobState::Cancelled
    } else if entry.control.run == RunState::Paused {
        JobState::Paused
    } else if failed > 0 && done + failed == total {
        JobState::Failed
    } else if pending > 0 && in_flight == 0 {
        let live = fitting_renderers(entry, view);
        let counts = failures_by_peer(entry);
        if !live.is_empty() && live.iter().all(|p| blocked_in(counts, p, policy)) {
            JobState::Failed
        } else {
            JobState::Running
        }
    } else {
        JobState::Running
    };
    JobProgress {
        total,
        done,
        in_flight,
        pending,
        failed,
        duplicates,
        state,
    }
}

/// The state [`job_progress`] gives, without counting every frame: the scan of the
/// unfinished frames stops at the first one that settles it (a frame in flight, or one
/// pending or done while a live renderer may still take the job), so a running job of
/// 100,000 frames costs a few frames, not all of them. The scheduler asks this on every
/// claim; only `status` needs the counts.
pub fn job_state(entry: &JobEntry, view: &impl PeerView, policy: &RetryPolicy) -> JobState {
    let unfinished = &entry.tally.unfinished;
    if unfinished.is_empty() {
        return JobState::Done;
    }
    if entry.control.run == RunState::Cancelled {
        return JobState::Cancelled;
    } else if entry.control.run == RunState::Paused {
        return JobState::Paused;
    }
    // Failed with frames pending and none in flight only when every live renderer that
    // fits the job is blocked on it: asked only when a frame that is not in flight comes
    // up (a running job's first unfinished frame is mostly in flight).
    let mut blocked = None;
    let mut all_blocked = || {
        *blocked.get_or_insert_with(|| {
            let live = fitting_renderers(entry, view);
            let counts = failures_by_peer(entry);
            !live.is_empty() && live.iter().all(|p| blocked_in(counts, p, policy))
        })
    };
    let (mut pending, mut failed) = (false, 0);
    for frame in unfinished {
        let status = entry
            .frames
            .get(frame)
            .map_or(FrameStatus::Pending, |state| {
                frame_status_in(entry, state, view, policy)
            });
        match status {
            FrameStatus::InFlight(_) => return JobState::Running,
            FrameStatus::Failed => failed += 1,
            FrameStatus::Pending | FrameStatus::Done(_) if !all_blocked() => {
                return JobState::Running;
            }
            FrameStatus::Pending => pending = true,
            FrameStatus::Done(_) => {}
        }
    }
    if failed == unfinished.len() || pending {
        JobState::Failed
    } else {
        JobState::Running
    }
}

/// The job's pending frames, counted up to `limit` (the count [`job_progress`] gives, or
/// `limit` if that is more).
pub fn pending_up_to(
    entry: &JobEntry,
    view: &impl PeerView,
    policy: &RetryPolicy,
    limit: usize,
) -> usize {
    let mut n = 0;
    for frame in &entry.tally.unfinished {
        if n >= limit {
            break;
        }
        let pending = entry.frames.get(frame).is_none_or(|state| {
            frame_status_in(entry, state, view, policy) == FrameStatus::Pending
        });
        n += usize::from(pending);
    }
    n
}

/// A frame this peer should claim, with the claim to announce.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimChoice {
    pub job: JobId,
    pub frame: u32,
    pub claim: Claim,
}

/// Mean render time (ms) of each peer's results that count in this job.
pub fn mean_render_ms(entry: &JobEntry) -> BTreeMap<PeerId, f64> {
    entry.tally.mean_render_ms()
}

/// Whether `me` should leave the job's last `pending` frames to faster live peers: in the
/// time `me` takes for one frame (its mean so far), the live peers faster than it finish
/// at least `pending` new frames between them, so a frame `me` took would be the last one
/// in. A faster peer first finishes what it renders now ([`PeerView::in_flight`]: its claims
/// heard since its last heartbeat, and what that heartbeat reported, with the expected time
/// left, [`remaining_ms`]), and any other claims in this job it holds (open in the ledger
/// but in neither: a claim that came by sync). Each of its other slots
/// ([`PeerView::slots`]) then does `floor(time left / its mean)` frames. A peer with no
/// result in the job yet always takes.
pub fn leave_to_faster(
    id: &JobId,
    entry: &JobEntry,
    me: &PeerId,
    live: &[PeerId],
    pending: usize,
    view: &impl PeerView,
) -> bool {
    faster_capacity(id, entry, me, live, view, &mean_render_ms(entry))
        .is_some_and(|c| c >= pending as f64)
}

/// The frames the live peers faster than `me` finish between them in the time `me` takes
/// for one ([`leave_to_faster`]); `None` when `me` has no result in the job yet.
/// `means`: [`mean_render_ms`] of the job.
fn faster_capacity(
    id: &JobId,
    entry: &JobEntry,
    me: &PeerId,
    live: &[PeerId],
    view: &impl PeerView,
    means: &BTreeMap<PeerId, f64>,
) -> Option<f64> {
    let &mine = means.get(me).filter(|m| **m > 0.0)?;
    let mut capacity = 0.0;
    for p in live.iter().filter(|p| *p != me) {
        let Some(&theirs) = means.get(p).filter(|t| **t > 0.0 && **t < mine) else {
            continue;
        };
        // Time left of each render it has going now.
        let mut busy: Vec<f64> = Vec::new();
        let mut reported_here = 0;
        for r in view.in_flight(p) {
            let finished = r.job == *id
                && entry
                    .frames
                    .get(&r.frame)
                    .is_some_and(|s| s.canonical().is_some());
            if finished {
                continue; // that slot is free, or renders one of the claims below
            }
            reported_here += usize::from(r.job == *id);
            busy.push(remaining_ms(theirs, r.elapsed_ms, r.progress));
        }
        let since_heartbeat = entry.tally.open_claims_of(p).saturating_sub(reported_here);
        busy.extend(std::iter::repeat_n(theirs, since_heartbeat));
        let slots = view.slots(p).max(busy.len()).max(1);
        let free = slots - busy.len();
        capacity += free as f64 * (mine / theirs).floor();
        for left in busy {
            capacity += ((mine - left) / theirs).floor().max(0.0);
        }
    }
    Some(capacity)
}

/// The rendezvous hash `blake3(job ‖ frame ‖ peer)` (frame little-endian).
fn rendezvous(job: &JobId, frame: u32, peer: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(job.as_bytes());
    h.update(&frame.to_le_bytes());
    h.update(peer);
    *h.finalize().as_bytes()
}

/// The peers that keep a copy of a frame's result: of `candidates` (live peers, less the
/// renderer and the submitter, who holds its own copy once written), the `r` with the
/// least `blake3(job ‖ frame ‖ peer)`. Every peer computes the same set from the same
/// candidates; when views differ, a few extra copies are made, never fewer.
pub fn replica_holders(job: &JobId, frame: u32, candidates: &[PeerId], r: usize) -> Vec<PeerId> {
    let mut ranked: Vec<([u8; 32], PeerId)> = candidates
        .iter()
        .map(|p| (rendezvous(job, frame, &p.to_bytes()), *p))
        .collect();
    ranked.sort();
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().take(r).map(|(_, p)| p).collect()
}

/// A render expected to end within this many milliseconds counts as ending now: its peer
/// chooses its next frame along with the peers choosing now ([`choose_claim`]).
const ENDING_MS: f64 = 250.0;

/// Picks the next frame for `me` (running as `incarnation`) to claim, or `None`.
///
/// Jobs are tried by priority (highest first), then `created_unix_ms` (oldest first), then
/// id. A job is skipped unless `eligible` accepts it, it is `Running`, `me` is not
/// [blocked](peer_blocked) on it, and faster peers would not finish its pending frames
/// sooner ([`leave_to_faster`]). Its candidates are its `Pending` frames in ascending
/// order, less those `me` has failed while another live renderer that fits the job and is
/// not blocked on it has not, among the first `window` (at least 1) unfinished frames (more
/// if none of those is a candidate). Of them `me` takes its
/// [`pick_frame`](super::pick::pick_frame), so peers choosing at once with the same view
/// take different frames. The
/// claim's epoch is one above the highest epoch the frame's state mentions (1 for a fresh
/// frame), so it beats every earlier claim. The first job with a candidate wins.
pub fn choose_claim(
    ledger: &Ledger,
    me: &PeerId,
    incarnation: u64,
    view: &impl PeerView,
    policy: &RetryPolicy,
    eligible: impl Fn(&JobId, &JobEntry) -> bool,
    window: usize,
) -> Option<ClaimChoice> {
    let window = window.max(1);
    let live = view.live_renderers();

    let mut jobs: Vec<(&JobId, &JobEntry)> = ledger.jobs().collect();
    jobs.sort_by(|(ia, a), (ib, b)| {
        b.priority()
            .cmp(&a.priority())
            .then(a.spec.created_unix_ms.cmp(&b.spec.created_unix_ms))
            .then(ia.cmp(ib))
    });

    for (id, entry) in jobs {
        if !eligible(id, entry) {
            continue;
        }
        let counts = failures_by_peer(entry);
        // Blocked after failing too often, or excluded by the submitter.
        if blocked_in(counts, me, policy) || entry.tally.excluded.contains_key(me) {
            continue;
        }
        if job_state(entry, view, policy) != JobState::Running {
            continue;
        }
        let unblocked: Vec<PeerId> = live
            .iter()
            .filter(|p| !blocked_in(counts, p, policy))
            .copied()
            .collect();
        // Left to faster peers when they finish the pending frames first: the pending
        // frames are counted only up to what they can finish.
        let means = mean_render_ms(entry);
        if let Some(capacity) = faster_capacity(id, entry, me, &unblocked, view, &means) {
            let can = capacity.floor() as usize;
            if pending_up_to(entry, view, policy, can.saturating_add(1)) <= can {
                continue;
            }
        }
        // Others who could take the job's frames now, or try a frame `me` failed: live,
        // fitting the job, not blocked on it nor excluded.
        let others: Vec<PeerId> = live
            .iter()
            .filter(|p| {
                *p != me
                    && !blocked_in(counts, p, policy)
                    && !entry.tally.excluded.contains_key(p)
                    && view.fits(p, &entry.spec)
            })
            .copied()
            .collect();

        // The window is the first `window` unfinished frames, in flight or not (extended
        // until it holds a candidate): a claim heard by some peers and not yet by others
        // takes a candidate away without bringing a new one in, so their views differ by
        // that frame only.
        let mut candidates = Vec::new();
        for (seen, &frame) in entry.tally.unfinished.iter().enumerate() {
            if seen >= window && !candidates.is_empty() {
                break;
            }
            if let Some(state) = entry.frames.get(&frame) {
                if frame_status_in(entry, state, view, policy) != FrameStatus::Pending {
                    continue;
                }
                if state.failed_by(me) > 0 && others.iter().any(|p| state.failed_by(p) == 0) {
                    // Someone who has not failed it yet should try it.
                    continue;
                }
            }
            candidates.push(frame);
        }
        // Who chooses along with `me`: the others with a free slot for the job, and those
        // whose heartbeat reports a render of it about to end (they choose within a gossip
        // round trip too). A peer whose fresh claim is seen renders, and leaves the line
        // with its frame.
        let choosers: Vec<(PeerId, usize)> = others
            .iter()
            .map(|p| {
                let open = entry.tally.open_claims_by(p, |inc| view.claim_live(p, inc));
                let ending = means.get(p).map_or(0, |&mean| {
                    view.in_flight(p)
                        .iter()
                        .filter(|r| {
                            r.job == *id
                                && entry.frames.get(&r.frame).is_some_and(|s| {
                                    s.canonical().is_none()
                                        && s.claim.as_ref().is_some_and(|c| c.peer == *p)
                                })
                                && remaining_ms(mean, r.elapsed_ms, r.progress) <= ENDING_MS
                        })
                        .count()
                });
                (*p, view.slots(p).saturating_sub(open) + ending)
            })
            .filter(|(_, turns)| *turns > 0)
            .collect();
        if let Some(frame) = super::pick::pick_frame(id, me, &choosers, &candidates) {
            let epoch = entry
                .frames
                .get(&frame)
                .map_or(0, FrameState::max_epoch)
                .saturating_add(1);
            return Some(ClaimChoice {
                job: *id,
                frame,
                claim: Claim {
                    sig: Default::default(),
                    peer: *me,
                    incarnation,
                    epoch,
                },
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobId;
    use crate::ledger::frame::tests::peer;
    use crate::ledger::frame::{Done, Failure};
    use crate::ledger::state::FrameUpdate;
    use crate::ledger::state::tests::spec;
    use std::collections::BTreeSet;

    /// Peers with a fresh heartbeat, by incarnation; all of them render.
    #[derive(Default)]
    struct View {
        live: BTreeSet<(PeerId, u64)>,
        /// Live renderers whose devices or Blender do not fit any job.
        unfit: BTreeSet<PeerId>,
        /// What peers report rendering.
        running: Vec<super::super::tail::Running>,
    }

    impl View {
        fn with(peers: &[(u8, u64)]) -> Self {
            View {
                live: peers.iter().map(|&(p, i)| (peer(p), i)).collect(),
                ..Default::default()
            }
        }
    }

    impl PeerView for View {
        fn claim_live(&self, peer: &PeerId, incarnation: u64) -> bool {
            self.live.contains(&(*peer, incarnation))
        }
        fn live_renderers(&self) -> Vec<PeerId> {
            let set: BTreeSet<PeerId> = self.live.iter().map(|(p, _)| *p).collect();
            set.into_iter().collect()
        }
        fn fits(&self, peer: &PeerId, _: &JobSpec) -> bool {
            !self.unfit.contains(peer)
        }
        fn in_flight(&self, peer: &PeerId) -> Vec<super::super::tail::Running> {
            self.running
                .iter()
                .filter(|r| r.peer == *peer)
                .cloned()
                .collect()
        }
    }

    fn claim(p: u8, incarnation: u64, epoch: u32) -> Claim {
        Claim {
            sig: Default::default(),
            peer: peer(p),
            incarnation,
            epoch,
        }
    }

    #[test]
    fn replica_holders_are_stable_and_bounded() {
        let job = crate::ids::JobId::of(b"j");
        let peers: Vec<PeerId> = (1..8).map(peer).collect();
        let a = replica_holders(&job, 3, &peers, 2);
        assert_eq!(a.len(), 2);
        let mut shuffled = peers.clone();
        shuffled.reverse();
        assert_eq!(
            replica_holders(&job, 3, &shuffled, 2),
            a,
            "order does not matter"
        );
        // A peer leaving only replaces itself.
        let fewer: Vec<PeerId> = peers.iter().filter(|p| **p != a[0]).copied().collect();
        assert!(replica_holders(&job, 3, &fewer, 2).contains(&a[1]));
        assert!(replica_holders(&job, 3, &peers[..1], 2).len() == 1);
        assert!(replica_holders(&job, 3, &peers, 0).is_empty());
        // Different frames spread over different peers.
        let firsts: BTreeSet<PeerId> = (0..40)
            .map(|f| replica_holders(&job, f, &peers, 1)[0])
            .collect();
        assert!(firsts.len() >= 4, "{}", firsts.len());
    }

    #[test]
    fn claims_of_a_peer_excluded_from_the_job_hold_nothing() {
        use crate::ledger::frame::Lost;
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-2", 0, 1)).unwrap();
        let view = View::with(&[(1, 1), (2, 1)]);
        let policy = RetryPolicy::default();
        let update = |frame, state| FrameUpdate {
            job: id,
            frame,
            state,
        };
        l.apply(&update(1, FrameState::from_claim(claim(2, 1, 1))))
            .unwrap();
        let status = |l: &Ledger| {
            let entry = l.job(&id).unwrap();
            frame_status_in(entry, entry.frames.get(&1).unwrap(), &view, &policy)
        };
        assert!(matches!(status(&l), FrameStatus::InFlight(_)));
        // The submitter finds a result of peer 2 on frame 2 is no image.
        let liar = Done {
            epoch: 1,
            peer: peer(2),
            output: BlobId::of(b"junk"),
            render_ms: 1,
            thumb: None,
            incarnation: 1,
            claim_sig: Default::default(),
            sig: Default::default(),
        };
        let mut lost = Lost::of(&liar);
        lost.unusable = true;
        l.apply(&update(2, FrameState::from_done(liar))).unwrap();
        l.apply(&update(2, FrameState::from_lost(lost))).unwrap();
        assert_eq!(
            status(&l),
            FrameStatus::Pending,
            "peer 2's claim holds nothing"
        );
        let entry = l.job(&id).unwrap();
        let state = entry.frames.get(&1).unwrap();
        assert!(
            matches!(
                frame_status(state, &view, &policy),
                FrameStatus::InFlight(_)
            ),
            "outside the job, the claim is as live as its holder"
        );
        let c = choose_claim(&l, &peer(1), 1, &view, &policy, |_, _| true, 4);
        assert!(
            c.is_some_and(|c| c.claim.epoch == 2),
            "peer 1 takes both frames"
        );
        let excluded = choose_claim(&l, &peer(2), 1, &view, &policy, |_, _| true, 4);
        assert!(excluded.is_none(), "peer 2 claims no frame of the job");
    }

    #[test]
    fn a_lost_result_sends_the_frame_back_to_pending_and_is_given_up_after_max_lost() {
        use crate::ledger::frame::{Lost, MAX_LOST};
        let (mut l, id) = {
            let mut l = Ledger::new();
            let (id, _) = l.insert_job(spec("1", 0, 1)).unwrap();
            (l, id)
        };
        let view = View::with(&[(1, 1), (2, 1)]);
        let policy = RetryPolicy::default();
        let done = |epoch| Done {
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch,
            peer: peer(1),
            output: BlobId::of(&epoch.to_le_bytes()),
            render_ms: 1,
            thumb: None,
        };
        let apply = |l: &mut Ledger, state| {
            l.apply(&FrameUpdate {
                job: id,
                frame: 1,
                state,
            })
            .unwrap();
        };
        apply(&mut l, FrameState::from_done(done(1)));
        assert!(matches!(
            frame_status(l.frame(&id, 1).unwrap(), &view, &policy),
            FrameStatus::Done(_)
        ));
        apply(&mut l, FrameState::from_lost(Lost::of(&done(1))));
        let st = l.frame(&id, 1).unwrap();
        assert_eq!(frame_status(st, &view, &policy), FrameStatus::Pending);
        let choice = choose_claim(&l, &peer(2), 1, &view, &policy, |_, _| true, 4).unwrap();
        assert_eq!(
            choice.claim.epoch, 2,
            "the new claim beats the lost result's epoch"
        );
        // A new result counts again; a late copy of the lost one does not.
        apply(&mut l, FrameState::from_done(done(2)));
        apply(&mut l, FrameState::from_done(done(1)));
        assert_eq!(l.frame(&id, 1).unwrap().canonical(), Some(&done(2)));
        for e in 2..=MAX_LOST as u32 {
            apply(&mut l, FrameState::from_lost(Lost::of(&done(e))));
        }
        assert_eq!(
            frame_status(l.frame(&id, 1).unwrap(), &view, &policy),
            FrameStatus::Failed
        );
    }

    #[test]
    fn a_lost_result_of_a_live_renderer_sends_the_frame_back_to_pending() {
        // Peer 1 claimed, rendered and is alive, but its output cannot be served (its
        // store lost the file): the submitter declares the result lost. The claim is
        // spent; it must not keep the frame "in flight" for ever.
        let (mut l, id) = one_job("1");
        let view = View::with(&[(1, 1), (2, 1)]);
        let policy = RetryPolicy::default();
        let done = Done {
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch: 1,
            peer: peer(1),
            output: BlobId::of(b"gone"),
            render_ms: 1,
            thumb: None,
        };
        apply(&mut l, id, 1, FrameState::from_claim(claim(1, 1, 1)));
        apply(&mut l, id, 1, FrameState::from_done(done.clone()));
        apply(
            &mut l,
            id,
            1,
            FrameState::from_lost(crate::ledger::Lost::of(&done)),
        );
        let st = l.frame(&id, 1).unwrap();
        assert_eq!(
            st.claim,
            Some(claim(1, 1, 1)),
            "the claim is still the winning one"
        );
        assert_eq!(frame_status(st, &view, &policy), FrameStatus::Pending);
        let again = choose_claim(&l, &peer(1), 1, &view, &policy, |_, _| true, 4).unwrap();
        assert_eq!(again.claim.epoch, 2);
    }

    #[test]
    fn a_failed_frame_is_not_left_for_peers_that_cannot_take_the_job() {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1", 0, 1)).unwrap();
        l.apply(&FrameUpdate {
            job: id,
            frame: 1,
            state: failure(1, 1),
        })
        .unwrap();
        let policy = RetryPolicy::default();
        let pick = |view: &View| choose_claim(&l, &peer(1), 1, view, &policy, |_, _| true, 4);
        // Peer 2 fits: it should try the frame first.
        assert!(pick(&View::with(&[(1, 1), (2, 1)])).is_none());
        // Peer 2 cannot render this job: peer 1 tries again.
        let mut unfit = View::with(&[(1, 1), (2, 1)]);
        unfit.unfit.insert(peer(2));
        assert_eq!(pick(&unfit).map(|c| c.frame), Some(1));
    }

    #[test]
    fn a_job_fails_when_every_fitting_renderer_is_blocked() {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-4", 0, 1)).unwrap();
        for f in 1..=3 {
            l.apply(&FrameUpdate {
                job: id,
                frame: f,
                state: failure(1, 1),
            })
            .unwrap();
        }
        let policy = RetryPolicy::default();
        let mut view = View::with(&[(1, 1), (2, 1)]);
        let entry = l.job(&id).unwrap();
        assert_eq!(job_progress(entry, &view, &policy).state, JobState::Running);
        view.unfit.insert(peer(2));
        assert_eq!(
            job_progress(entry, &view, &policy).state,
            JobState::Failed,
            "peer 2 can never render it, peer 1 is blocked"
        );
    }

    #[test]
    fn a_slow_peer_leaves_the_last_frames_to_faster_ones() {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-20", 0, 1)).unwrap();
        let done = |p: u8, f: u32, ms: u64| result(id, p, f, ms);
        // Peer 1 takes 4 s a frame, peers 2 and 3 take 1 s: while 1 renders one frame they
        // render 8 between them.
        l.apply(&done(1, 1, 4000)).unwrap();
        l.apply(&done(2, 2, 1000)).unwrap();
        l.apply(&done(3, 3, 1000)).unwrap();
        let view = View::with(&[(1, 1), (2, 1), (3, 1)]);
        let live = view.live_renderers();
        let entry = l.job(&id).unwrap();
        assert!(
            !leave_to_faster(&id, entry, &peer(1), &live, 17, &view),
            "17 pending: plenty for all"
        );
        assert!(
            leave_to_faster(&id, entry, &peer(1), &live, 8, &view),
            "8 pending: the fast ones finish first"
        );
        assert!(
            !leave_to_faster(&id, entry, &peer(2), &live, 1, &view),
            "nobody is faster than 2"
        );
        // Faster peers that are not live do not count; a peer with no result yet takes.
        assert!(!leave_to_faster(
            &id,
            entry,
            &peer(1),
            &[peer(1), peer(2)],
            8,
            &view
        ));
        assert!(!leave_to_faster(&id, entry, &peer(4), &live, 1, &view));
        let policy = RetryPolicy::default();
        for f in 4..=12 {
            l.apply(&done(2, f, 1000)).unwrap();
        }
        // 8 frames left: peer 1 claims nothing, peer 2 does.
        assert!(choose_claim(&l, &peer(1), 1, &view, &policy, |_, _| true, 4).is_none());
        assert!(choose_claim(&l, &peer(2), 1, &view, &policy, |_, _| true, 4).is_some());
    }

    #[test]
    fn a_slow_peer_counts_what_faster_ones_still_have_in_flight() {
        let (l, id) = with_results(&[(1, 1, 4000), (2, 2, 1000), (3, 3, 1000)]);
        let mut view = View::with(&[(1, 1), (2, 1), (3, 1)]);
        let live = view.live_renderers();
        let running = |p: u8, frame: u32, elapsed_ms: u64| super::super::tail::Running {
            peer: peer(p),
            job: id,
            frame,
            elapsed_ms,
            progress: None,
        };
        // Free, peers 2 and 3 do 4 frames each in peer 1's 4 s: 8 pending are theirs.
        assert!(peer1_leaves(&l, &id, &live, 8, &view));
        // Each has 0.5 s left of a frame in flight: 3 new frames each in 4 s, so 6 pending
        // are theirs and a seventh is better taken by peer 1.
        view.running = vec![running(2, 4, 500), running(3, 5, 500)];
        let entry = l.job(&id).unwrap();
        assert!(leave_to_faster(&id, entry, &peer(1), &live, 6, &view));
        assert!(!leave_to_faster(&id, entry, &peer(1), &live, 7, &view));
        // A frame reported in flight that already has a result is over: the peer is free.
        view.running = vec![running(2, 3, 900), running(3, 5, 500)];
        assert!(peer1_leaves(&l, &id, &live, 7, &view));
    }

    /// Whether peer 1 leaves the job's `pending` frames to faster peers.
    fn peer1_leaves(l: &Ledger, id: &JobId, live: &[PeerId], pending: usize, view: &View) -> bool {
        leave_to_faster(id, l.job(id).unwrap(), &peer(1), live, pending, view)
    }

    /// Peer `p`'s result for frame `f` of job `id`, rendered in `ms` (unsigned: the
    /// policy does not check signatures).
    fn result(id: JobId, p: u8, f: u32, ms: u64) -> FrameUpdate {
        FrameUpdate {
            job: id,
            frame: f,
            state: FrameState::from_done(Done {
                incarnation: 1,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: 1,
                peer: peer(p),
                output: BlobId::of(&f.to_le_bytes()),
                render_ms: ms,
                thumb: None,
            }),
        }
    }

    /// A 20-frame job with results `(peer, frame, render_ms)`.
    fn with_results(results: &[(u8, u32, u64)]) -> (Ledger, JobId) {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-20", 0, 1)).unwrap();
        for &(p, f, ms) in results {
            l.apply(&result(id, p, f, ms)).unwrap();
        }
        (l, id)
    }

    /// The scheduling gap a benchmark timeline showed: a slow peer left the last frame to a
    /// faster one whose heartbeat still said it was free, though it had claimed a frame
    /// since; the frame waited for the next heartbeat.
    #[test]
    fn a_claim_made_since_the_last_heartbeat_counts_as_busy() {
        let (mut l, id) = with_results(&[(1, 1, 1050), (2, 2, 1000)]);
        let view = View::with(&[(1, 1), (2, 1)]);
        let live = view.live_renderers();
        // Peer 2 looks free: it would finish the one frame left first.
        assert!(peer1_leaves(&l, &id, &live, 1, &view));
        // It has just claimed frame 3 (gossip is here, its next heartbeat is not): it is
        // busy for a whole frame, and peer 1 takes the last one.
        l.apply(&FrameUpdate {
            job: id,
            frame: 3,
            state: FrameState::from_claim(Claim {
                peer: peer(2),
                incarnation: 1,
                epoch: 1,
                sig: Default::default(),
            }),
        })
        .unwrap();
        assert!(!peer1_leaves(&l, &id, &live, 1, &view));
    }

    fn failure(p: u8, epoch: u32) -> FrameState {
        FrameState::from_failure(Failure {
            sig: Default::default(),
            epoch,
            peer: peer(p),
            reason: "crashed".into(),
        })
    }

    fn apply(l: &mut Ledger, job: JobId, frame: u32, state: FrameState) {
        l.apply(&FrameUpdate { job, frame, state }).unwrap();
    }

    fn one_job(frames: &str) -> (Ledger, JobId) {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec(frames, 0, 1)).unwrap();
        (l, id)
    }

    fn choose(l: &Ledger, me: u8, view: &View, window: usize) -> Option<ClaimChoice> {
        let p = RetryPolicy::default();
        choose_claim(l, &peer(me), 1, view, &p, |_, _| true, window)
    }

    #[test]
    fn dead_holder_frees_the_frame() {
        let (mut l, id) = one_job("1");
        apply(&mut l, id, 1, FrameState::from_claim(claim(1, 7, 4)));
        let p = RetryPolicy::default();
        let state = l.frame(&id, 1).unwrap();
        let alive = View::with(&[(0, 1), (1, 7)]);
        assert_eq!(
            frame_status(state, &alive, &p),
            FrameStatus::InFlight(claim(1, 7, 4))
        );
        assert_eq!(choose(&l, 0, &alive, 4), None);
        // Peer 1 restarted (incarnation 8): its old claim is dead.
        let restarted = View::with(&[(0, 1), (1, 8)]);
        assert_eq!(frame_status(state, &restarted, &p), FrameStatus::Pending);
        let c = choose(&l, 0, &restarted, 4).unwrap();
        assert_eq!((c.job, c.frame), (id, 1));
        assert_eq!(c.claim, claim(0, 1, 5));
        // The new claim wins once merged.
        apply(&mut l, id, 1, FrameState::from_claim(c.claim.clone()));
        assert_eq!(l.frame(&id, 1).unwrap().claim, Some(c.claim));
    }

    #[test]
    fn holder_failure_frees_the_frame() {
        let (mut l, id) = one_job("1");
        apply(&mut l, id, 1, FrameState::from_claim(claim(1, 1, 1)));
        apply(&mut l, id, 1, failure(1, 1));
        let view = View::with(&[(0, 1), (1, 1)]);
        let p = RetryPolicy::default();
        assert_eq!(
            frame_status(l.frame(&id, 1).unwrap(), &view, &p),
            FrameStatus::Pending
        );
        assert_eq!(choose(&l, 0, &view, 1).unwrap().claim.epoch, 2);
        // Peer 1 leaves it to peer 0, who has not failed it.
        assert_eq!(choose(&l, 1, &view, 1), None);
        // Alone, peer 1 retries it.
        assert_eq!(
            choose(&l, 1, &View::with(&[(1, 1)]), 1).map(|c| c.frame),
            Some(1)
        );
    }

    #[test]
    fn done_wins_and_counts_duplicates() {
        let (mut l, id) = one_job("1-2");
        for p in [2, 1] {
            let done = Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: 1,
                peer: peer(p),
                output: BlobId::of(&[p]),
                render_ms: 10,
                thumb: None,
            };
            apply(&mut l, id, 1, FrameState::from_done(done));
        }
        apply(&mut l, id, 1, FrameState::from_claim(claim(3, 1, 9)));
        let view = View::with(&[(3, 1)]);
        let p = RetryPolicy::default();
        let state = l.frame(&id, 1).unwrap();
        let FrameStatus::Done(d) = frame_status(state, &view, &p) else {
            panic!("not done")
        };
        assert_eq!(Some(&d), state.canonical());
        let prog = job_progress(l.job(&id).unwrap(), &view, &p);
        assert_eq!((prog.done, prog.pending, prog.duplicates), (1, 1, 1));
        assert_eq!(prog.state, JobState::Running);
        assert_eq!(choose(&l, 3, &view, 8).map(|c| c.frame), Some(2));
    }

    #[test]
    fn one_peer_alone_cannot_fail_a_frame_another_could_render() {
        let (mut l, id) = one_job("1");
        // Peer 2 signs failures at three epochs on its own (a liar, or a broken machine).
        for e in 1..=3 {
            apply(&mut l, id, 1, failure(2, e));
        }
        let p = RetryPolicy::default();
        let both = View::with(&[(1, 1), (2, 1)]);
        let status = |l: &Ledger, view: &View| {
            let entry = l.job(&id).unwrap();
            frame_status_in(entry, entry.frames.get(&1).unwrap(), view, &p)
        };
        assert_eq!(
            status(&l, &both),
            FrameStatus::Pending,
            "peer 1 has not tried"
        );
        let c = choose(&l, 1, &both, 8).expect("peer 1 takes it");
        assert_eq!((c.frame, c.claim.epoch), (1, 4));
        // Alone, peer 2's attempts are all there is: the frame is given up.
        let alone = View::with(&[(2, 1)]);
        assert_eq!(status(&l, &alone), FrameStatus::Failed);
        // Once peer 1 fails it too, it is failed for everyone.
        apply(&mut l, id, 1, failure(1, 4));
        assert_eq!(status(&l, &both), FrameStatus::Failed);
    }

    #[test]
    fn frame_failed_three_times_is_failed() {
        let (mut l, id) = one_job("1-2");
        for (p, e) in [(1, 1), (2, 2), (1, 3)] {
            apply(&mut l, id, 1, failure(p, e));
        }
        let view = View::with(&[(0, 1)]);
        let p = RetryPolicy::default();
        assert_eq!(
            frame_status(l.frame(&id, 1).unwrap(), &view, &p),
            FrameStatus::Failed
        );
        assert_eq!(choose(&l, 0, &view, 8).map(|c| c.frame), Some(2));
        let done = Done {
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch: 1,
            peer: peer(0),
            output: BlobId::of(b"2"),
            render_ms: 1,
            thumb: None,
        };
        apply(&mut l, id, 2, FrameState::from_done(done));
        let prog = job_progress(l.job(&id).unwrap(), &view, &p);
        assert_eq!(
            (prog.done, prog.failed, prog.state),
            (1, 1, JobState::Failed)
        );
        assert_eq!(choose(&l, 0, &view, 8), None);
    }

    /// One random update of a frame: a claim, a failure or a result, by peer 0-3.
    fn arb_update(frames: u32) -> impl Strategy<Value = (u32, FrameState)> {
        (1..=frames, 0..3u8, 0..4u8, 1..3u64, 1..4u32).prop_map(|(frame, kind, p, inc, epoch)| {
            let state = match kind {
                0 => FrameState::from_claim(claim(p, inc, epoch)),
                1 => failure(p, epoch),
                _ => FrameState::from_done(Done {
                    incarnation: inc,
                    claim_sig: Default::default(),
                    sig: Default::default(),
                    epoch,
                    peer: peer(p),
                    output: BlobId::of(&[p, frame as u8]),
                    render_ms: 10,
                    thumb: None,
                }),
            };
            (frame, state)
        })
    }

    use proptest::prelude::*;

    proptest! {
        /// `job_state` (which stops at the first frame that settles it) and
        /// `pending_up_to` agree with the full count of `job_progress` on any ledger and
        /// view.
        #[test]
        fn job_state_and_pending_up_to_agree_with_the_full_count(
            frames in 1..7u32,
            updates in proptest::collection::vec(arb_update(6), 0..24),
            live in proptest::collection::vec((0..4u8, 1..3u64), 0..5),
            unfit in proptest::collection::btree_set(0..4u8, 0..3),
            per_frame in 1..4usize,
            per_peer in 1..4usize,
        ) {
            let (mut l, id) = one_job(&format!("1-{frames}"));
            for (frame, state) in updates.into_iter().filter(|(f, _)| *f <= frames) {
                // Some random updates are refused; the ledger stays as it was.
                let _ = l.apply(&FrameUpdate { job: id, frame, state });
            }
            let mut view = View::with(&live);
            view.unfit = unfit.into_iter().map(peer).collect();
            let policy = RetryPolicy {
                max_failures_per_frame: per_frame,
                max_failures_per_peer_job: per_peer,
            };
            let entry = l.job(&id).unwrap();
            let full = job_progress(entry, &view, &policy);
            prop_assert_eq!(job_state(entry, &view, &policy), full.state);
            for limit in 0..=frames as usize + 1 {
                prop_assert_eq!(
                    pending_up_to(entry, &view, &policy, limit),
                    full.pending.min(limit)
                );
            }
        }
    }

    #[test]
    fn blocked_peer_never_chooses_the_job() {
        let (mut l, id) = one_job("1-10");
        for f in 1..=3 {
            apply(&mut l, id, f, failure(1, 1));
        }
        let p = RetryPolicy::default();
        let entry = l.job(&id).unwrap();
        assert!(peer_blocked(entry, &peer(1), &p));
        assert!(!peer_blocked(entry, &peer(0), &p));
        let view = View::with(&[(0, 1), (1, 1)]);
        assert_eq!(choose(&l, 1, &view, 8), None);
        assert!(choose(&l, 0, &view, 8).is_some());
        assert_eq!(job_progress(entry, &view, &p).state, JobState::Running);
        // Only the blocked peer is left: the job has failed.
        let alone = View::with(&[(1, 1)]);
        assert_eq!(job_progress(entry, &alone, &p).state, JobState::Failed);
        // Nobody is live: it waits for a renderer to join.
        assert_eq!(
            job_progress(entry, &View::default(), &p).state,
            JobState::Running
        );
    }

    #[test]
    fn job_failed_when_all_live_renderers_blocked() {
        let (mut l, id) = one_job("1-10");
        for f in 1..=3 {
            apply(&mut l, id, f, failure(1, 1));
            apply(&mut l, id, f + 3, failure(2, 1));
        }
        let p = RetryPolicy::default();
        let view = View::with(&[(1, 1), (2, 1)]);
        let prog = job_progress(l.job(&id).unwrap(), &view, &p);
        assert_eq!(prog.state, JobState::Failed);
        assert_eq!((prog.pending, prog.failed, prog.total), (10, 0, 10));
        assert_eq!(choose(&l, 1, &view, 8), None);
        assert_eq!(choose(&l, 2, &view, 8), None);
        // A fresh renderer joins: the job runs again.
        let more = View::with(&[(1, 1), (2, 1), (3, 1)]);
        assert_eq!(
            job_progress(l.job(&id).unwrap(), &more, &p).state,
            JobState::Running
        );
        assert!(choose(&l, 3, &more, 8).is_some());
    }

    #[test]
    fn peers_mostly_choose_different_frames() {
        let mut l = Ledger::new();
        let ids: Vec<JobId> = (0..40)
            .map(|t| l.insert_job(spec("1-100", 0, t)).unwrap().0)
            .collect();
        let view = View::with(&[(1, 1), (2, 1)]);
        let p = RetryPolicy::default();
        let mut same = 0;
        for id in &ids {
            let only = |j: &JobId, _: &JobEntry| j == id;
            let a = choose_claim(&l, &peer(1), 1, &view, &p, only, 16).unwrap();
            let b = choose_claim(&l, &peer(2), 1, &view, &p, only, 16).unwrap();
            assert!(a.frame <= 16 && b.frame <= 16);
            if a.frame == b.frame {
                same += 1;
            }
        }
        assert!(same <= 10, "{same} of 40 collided");
        // Window 1 is plain first-pending order.
        assert_eq!(choose(&l, 1, &view, 1).map(|c| c.frame), Some(1));
        assert_eq!(choose(&l, 1, &view, 0).map(|c| c.frame), Some(1));
    }

    #[test]
    fn priority_then_age_order() {
        let mut l = Ledger::new();
        let (old_low, _) = l.insert_job(spec("1", 0, 1)).unwrap();
        let (new_high, _) = l.insert_job(spec("1", 5, 3)).unwrap();
        let (old_high, _) = l.insert_job(spec("1", 5, 2)).unwrap();
        let view = View::with(&[(0, 1)]);
        let mut order = Vec::new();
        while let Some(c) = choose(&l, 0, &view, 4) {
            order.push(c.job);
            apply(&mut l, c.job, c.frame, FrameState::from_claim(c.claim));
        }
        assert_eq!(order, vec![old_high, new_high, old_low]);
        // Eligibility filters jobs out.
        let p = RetryPolicy::default();
        let mut l2 = l.clone();
        l2.remove_job(&old_high);
        let c = choose_claim(&l2, &peer(1), 1, &view, &p, |j, _| *j == old_low, 4);
        assert_eq!(c, None, "old_low is claimed by a live peer");
        let c = choose_claim(
            &l2,
            &peer(0),
            2,
            &View::with(&[(0, 2)]),
            &p,
            |j, _| *j == old_low,
            4,
        );
        assert_eq!(c.map(|c| (c.job, c.claim.epoch)), Some((old_low, 2)));
    }

    #[test]
    fn peers_finishing_frames_at_once_choose_apart() {
        // Peers 0 to 5 render 1-second frames; 0 and 1 are about to finish theirs (their
        // heartbeats say so), the others have just begun. Each of 0 and 1 sees the other's
        // claim still open: without the heartbeat both would pick their favourite alone.
        let (mut l, id) = one_job("1-400");
        for p in 0..6u8 {
            l.apply(&result(id, p, 300 + u32::from(p), 1000)).unwrap();
            apply(
                &mut l,
                id,
                1 + u32::from(p),
                FrameState::from_claim(claim(p, 1, 1)),
            );
        }
        let mut view = View::with(&(0..6).map(|p| (p, 1)).collect::<Vec<_>>());
        view.running = (0..6u8)
            .map(|p| super::super::tail::Running {
                peer: peer(p),
                job: id,
                frame: 1 + u32::from(p),
                elapsed_ms: if p < 2 { 990 } else { 100 },
                progress: None,
            })
            .collect();
        let a = choose(&l, 0, &view, 12).unwrap().frame;
        let b = choose(&l, 1, &view, 12).unwrap().frame;
        assert_ne!(a, b);
        // Their picks are those of a line of the two of them (peers 2 to 5 are busy).
        let candidates: Vec<u32> = (7..=12).collect();
        let line = [(peer(0), 1), (peer(1), 1)];
        assert_eq!(
            Some(a),
            super::super::pick::pick_frame(&id, &peer(0), &line, &candidates)
        );
        assert_eq!(
            Some(b),
            super::super::pick::pick_frame(&id, &peer(1), &line, &candidates)
        );
    }

    #[test]
    fn renderers_choosing_at_once_claim_different_frames() {
        // A job starts: 32 renderers with the same view choose before hearing each other.
        let (mut l, id) = one_job("1-400");
        let all: Vec<(u8, u64)> = (0..32).map(|p| (p, 1)).collect();
        let view = View::with(&all);
        let window = 64;
        let picks: Vec<u32> = (0..32)
            .map(|p| choose(&l, p, &view, window).unwrap().frame)
            .collect();
        let distinct: BTreeSet<u32> = picks.iter().copied().collect();
        assert_eq!(distinct.len(), 32, "{picks:?}");
        // Half of the claims arrive: those peers render (their slot is taken) and leave the
        // line with their frames; the others, choosing now, take the frames they took above.
        for p in 0..16u8 {
            let c = claim(p, 1, 1);
            apply(&mut l, id, picks[p as usize], FrameState::from_claim(c));
        }
        for p in 16..32u8 {
            assert_eq!(
                choose(&l, p, &view, window).unwrap().frame,
                picks[p as usize]
            );
        }
    }
}
