//! The tail of a job: backup renders of stragglers.
//!
//! When a peer has nothing left to claim, it may render a frame that another peer holds
//! (a *backup*) if it would finish sooner than the holder. The backup publishes no claim:
//! the holder keeps rendering, both results are valid, and the first `Done` to arrive ends
//! the other render (each renderer stops a frame once it has a result that counts). So a
//! slow or stuck peer does not hold up the end of a job, and nothing is taken from it.
//!
//! Who renders what comes from each peer's claims and heartbeats (what it renders, and for
//! how long: `daemon/peers.rs`); speeds from the job's results ([`mean_render_ms`]). Among the idle peers, the
//! fastest take the stragglers with the most to gain, one each, so that idle peers do not
//! all pile onto the same frame.

use std::collections::BTreeMap;

use libp2p_identity::PeerId;

use super::policy::{FrameStatus, PeerView, RetryPolicy, frame_status_in, mean_render_ms};
use super::state::JobEntry;
use crate::ids::JobId;

/// A frame a peer reports rendering.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    pub peer: PeerId,
    pub job: JobId,
    pub frame: u32,
    /// How long it has been rendering, as of now.
    pub elapsed_ms: u64,
    /// Fraction of samples done, when known.
    pub progress: Option<f64>,
}

/// A straggler's frame for this peer to render as a backup, under the holder's epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupChoice {
    pub job: JobId,
    pub frame: u32,
    pub epoch: u32,
    /// Expected milliseconds saved over waiting for the holder.
    pub gain_ms: f64,
}

/// A backup is started only if it is expected to finish this much sooner than the holder
/// (relative to the backup's own render time): a margin for the cost of starting Blender
/// and for estimates that are only means.
const MARGIN: f64 = 0.25;

/// Expected milliseconds left of a render: from its sample progress when known, else from
/// the renderer's mean (`expected`). A render already past its expected time is assumed to
/// need as long again as it has overrun (the longer a render overruns, the less its mean
/// says about it, and the likelier it is stuck).
pub fn remaining_ms(expected: f64, elapsed_ms: u64, progress: Option<f64>) -> f64 {
    let elapsed = elapsed_ms as f64;
    match progress {
        Some(p) if p > 0.05 && p < 1.0 => elapsed * (1.0 - p) / p,
        _ => (expected - elapsed).abs(),
    }
}

/// Picks a backup render for `me`, which has nothing else to claim in `entry`'s job (id
/// `id`), or `None`. `running` is what every peer reports in flight; `idle` the live
/// renderers with nothing in flight (`me` included), which may render this job.
pub fn choose_backup(
    id: &JobId,
    entry: &JobEntry,
    me: &PeerId,
    view: &impl PeerView,
    policy: &RetryPolicy,
    running: &[Running],
    idle: &[PeerId],
) -> Option<BackupChoice> {
    let means = mean_render_ms(entry);
    let job_mean = {
        let (sum, n) = means
            .values()
            .fold((0.0, 0usize), |(s, n), m| (s + m, n + 1));
        (n > 0).then(|| sum / n as f64)?
    };
    let speed = |p: &PeerId| means.get(p).copied().unwrap_or(job_mean);
    let mine = speed(me);

    // Renders per frame, to leave out frames already backed up.
    let mut renders: BTreeMap<u32, usize> = BTreeMap::new();
    for r in running.iter().filter(|r| r.job == *id) {
        *renders.entry(r.frame).or_default() += 1;
    }
    let mut candidates: Vec<BackupChoice> = Vec::new();
    for r in running.iter().filter(|r| r.job == *id && r.peer != *me) {
        if renders.get(&r.frame).copied().unwrap_or(0) > 1 {
            continue;
        }
        let Some(state) = entry.frames.get(&r.frame) else {
            continue;
        };
        let FrameStatus::InFlight(claim) = frame_status_in(entry, state, view, policy) else {
            continue;
        };
        if claim.peer != r.peer || state.failed_by(me) > 0 {
            continue;
        }
        let left = remaining_ms(speed(&r.peer), r.elapsed_ms, r.progress);
        let gain = left - mine * (1.0 + MARGIN);
        if gain > 0.0 {
            candidates.push(BackupChoice {
                job: *id,
                frame: r.frame,
                epoch: claim.epoch,
                gain_ms: gain,
            });
        }
    }
    if candidates.is_empty() {
        return None;
    }
    candidates.sort_by(|a, b| b.gain_ms.total_cmp(&a.gain_ms).then(a.frame.cmp(&b.frame)));
    // The fastest idle peers take the stragglers with the most to gain, one each.
    let mut ranked: Vec<(f64, Vec<u8>)> = idle
        .iter()
        .filter(|p| view.fits(p, &entry.spec))
        .map(|p| (speed(p), p.to_bytes()))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let me_bytes = me.to_bytes();
    let rank = ranked.iter().position(|(_, p)| *p == me_bytes)?;
    candidates.into_iter().nth(rank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobId;
    use crate::ledger::frame::tests::peer;
    use crate::ledger::state::tests::spec;
    use crate::ledger::{Claim, Done, FrameState, FrameUpdate, Ledger};
    use std::collections::BTreeSet;

    struct View(BTreeSet<PeerId>);

    impl PeerView for View {
        fn claim_live(&self, p: &PeerId, _: u64) -> bool {
            self.0.contains(p)
        }
        fn live_renderers(&self) -> Vec<PeerId> {
            self.0.iter().copied().collect()
        }
    }

    /// Frames 1-8 done: peer 1 at 1 s a frame, peer 2 at 4 s; frame 9 claimed by peer 2,
    /// frame 10 by peer 3 (no result yet).
    fn tail() -> (Ledger, JobId) {
        let mut l = Ledger::new();
        let (id, _) = l.insert_job(spec("1-10", 0, 1)).unwrap();
        for f in 1..=8 {
            let (p, ms) = if f % 2 == 0 { (1, 1000) } else { (2, 4000) };
            l.apply(&FrameUpdate {
                job: id,
                frame: f,
                state: FrameState::from_done(Done {
                    incarnation: 0,
                    claim_sig: Default::default(),
                    sig: Default::default(),
                    epoch: 1,
                    peer: peer(p),
                    output: BlobId::of(&[f as u8]),
                    render_ms: ms,
                    thumb: None,
                }),
            })
            .unwrap();
        }
        for (f, p) in [(9, 2), (10, 3)] {
            l.apply(&FrameUpdate {
                job: id,
                frame: f,
                state: FrameState::from_claim(Claim {
                    sig: Default::default(),
                    peer: peer(p),
                    incarnation: 1,
                    epoch: 1,
                }),
            })
            .unwrap();
        }
        (l, id)
    }

    fn running(p: u8, frame: u32, elapsed_ms: u64) -> Running {
        Running {
            peer: peer(p),
            job: crate::ledger::state::tests::spec("1-10", 0, 1).id(),
            frame,
            elapsed_ms,
            progress: None,
        }
    }

    #[test]
    fn remaining_time_follows_progress_then_the_mean_then_overrun() {
        assert_eq!(remaining_ms(4000.0, 1000, None), 3000.0);
        assert_eq!(remaining_ms(4000.0, 1000, Some(0.5)), 1000.0);
        assert_eq!(remaining_ms(4000.0, 10_000, None), 6000.0);
        assert_eq!(remaining_ms(4000.0, 3800, None), 200.0);
    }

    #[test]
    fn a_fast_idle_peer_backs_up_a_slow_holder_and_nobody_piles_on() {
        let (l, id) = tail();
        let e = l.job(&id).unwrap();
        let view = View((1..=4).map(peer).collect());
        let policy = RetryPolicy::default();
        let run = [running(2, 9, 500), running(3, 10, 500)];
        // Peer 1 (1 s a frame) gains on both; frame 9's slow holder has more left (3.5 s
        // against the job mean's 2 s for peer 3, less 0.5 s).
        let b = choose_backup(&id, e, &peer(1), &view, &policy, &run, &[peer(1), peer(4)]).unwrap();
        assert_eq!((b.frame, b.epoch), (9, 1));
        // The second idle peer (no results: job mean, 2.5 s) takes the next straggler if it
        // still gains, else nothing.
        let second = choose_backup(&id, e, &peer(4), &view, &policy, &run, &[peer(1), peer(4)]);
        assert!(second.is_none(), "{second:?}");
        // A frame already backed up is left alone.
        let run2 = [running(2, 9, 500), running(4, 9, 100)];
        assert!(choose_backup(&id, e, &peer(1), &view, &policy, &run2, &[peer(1)]).is_none());
        // A holder nearly done is not worth a backup.
        let nearly = [running(2, 9, 3800)];
        assert!(choose_backup(&id, e, &peer(1), &view, &policy, &nearly, &[peer(1)]).is_none());
        // A slow peer never backs up a fast one.
        let fast = [running(1, 9, 0)];
        assert!(choose_backup(&id, e, &peer(2), &view, &policy, &fast, &[peer(2)]).is_none());
        // A dead holder's frame is pending, not a backup's business.
        let view3 = View([1, 3, 4].into_iter().map(peer).collect());
        assert!(choose_backup(&id, e, &peer(1), &view3, &policy, &run[..1], &[peer(1)]).is_none());
    }
}
