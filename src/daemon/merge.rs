//! Joining what peers send into the ledger: frame updates and jobs checked for forgery and
//! authorship, claim floods, and what a peer that lied loses (`punish`).

use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::Daemon;
use crate::ids::JobId;
use crate::ledger::{FrameUpdate, JobSpec};

impl Daemon {
    pub(super) fn merge_updates(&mut self, updates: &[FrameUpdate]) -> Vec<(JobId, u32)> {
        let (changed, forged) = self.merge_checked(updates, false);
        if let Some(e) = forged {
            warn!("an entry made here does not verify: {e}");
        }
        changed
    }

    /// Joins frame deltas `sender` sent (their signatures already `checked`, or not yet);
    /// a forged one costs it its connection, and a peer found holding far more open claims
    /// than it has render slots is disconnected too.
    pub(super) async fn merge_from(
        &mut self,
        sender: PeerId,
        updates: &[FrameUpdate],
        checked: bool,
    ) -> Vec<(JobId, u32)> {
        let (changed, forged) = self.merge_checked(updates, checked);
        if let Some(e) = forged {
            self.punish(sender, &format!("it sent a {e}")).await;
        }
        let mut flooders = Vec::new();
        for u in updates {
            if let Some(c) = &u.state.claim
                && c.peer != self.me
                && !flooders.contains(&c.peer)
                && self.claims_flood(&u.job, &c.peer, c.incarnation)
            {
                flooders.push(c.peer);
            }
        }
        for peer in flooders {
            self.punish(peer, FLOODING).await;
        }
        // Results of liars keep arriving through honest peers: never waited for.
        self.forsake_liars_in(&changed).await;
        changed
    }

    /// Whether `peer` (as `incarnation`) holds more open claims in `job` than its
    /// heartbeat's render slots allow: twice the slots (a finished frame's claim stays
    /// open while it is stored and the next is claimed) and a margin.
    pub(super) fn claims_flood(&self, job: &JobId, peer: &PeerId, incarnation: u64) -> bool {
        // Judged against the slots of the same incarnation only: a restarted peer's old
        // claims were made with the slots it had then.
        let Some(hb) = self
            .peers
            .peers
            .get(peer)
            .and_then(|s| s.heartbeat.as_ref())
        else {
            return false; // not live: its claims hold nothing anyway
        };
        if hb.incarnation != incarnation || hb.probing {
            return false;
        }
        let open = self.ledger.job(job).map_or(0, |e| {
            let held = e.tally.open_claims.get(&(*peer, incarnation));
            held.copied().unwrap_or(0)
        });
        open > 2 * hb.slots as usize + 2
    }

    /// Joins every update whose entries verify ([`Ledger::apply_signed`]; `checked`: they
    /// were verified already, off the loop); returns the changed keys and the first
    /// forgery found, whose update is dropped.
    pub(super) fn merge_checked(
        &mut self,
        updates: &[FrameUpdate],
        checked: bool,
    ) -> (Vec<(JobId, u32)>, Option<crate::ledger::LedgerError>) {
        let mut changed = Vec::new();
        let mut forged = None;
        for u in updates {
            let applied = if checked {
                self.ledger.apply(u)
            } else {
                self.ledger.apply_signed(u)
            };
            match applied {
                Ok(true) => {
                    if let Some(state) = self.ledger.frame(&u.job, u.frame)
                        && let Err(e) = self.store.put_frame(&u.job, u.frame, state)
                    {
                        warn!("cannot persist frame state: {e}");
                    }
                    if self.has_result(&u.job, u.frame) {
                        self.queue_write(u.job, u.frame);
                    }
                    self.settle.recheck(&self.ledger, &u.job);
                    changed.push((u.job, u.frame));
                }
                Ok(false) => {}
                Err(e) if e.is_forgery() => {
                    forged.get_or_insert(e);
                }
                Err(e) => debug!("ignored frame update: {e}"),
            }
        }
        (changed, forged)
    }

    /// `peer` lied (a forged or nonsensical entry, a result that is no image): it is
    /// disconnected and refused from now on, and its heartbeats no longer count, so its
    /// claims lapse. Nothing it signed is removed: the ledger stays one CRDT everywhere.
    pub(super) async fn punish(&mut self, peer: PeerId, why: &str) {
        if peer == self.me || !self.banned.insert(peer) {
            return;
        }
        warn!(%peer, "disconnecting a peer that misbehaved: {why}");
        self.peers.forget_heartbeat(&peer);
        if let Err(e) = self.net.ban(peer).await {
            warn!("cannot disconnect {peer}: {e}");
        }
        self.forsake_liars().await;
    }

    pub(super) fn has_result(&self, job: &JobId, frame: u32) -> bool {
        self.ledger
            .frame(job, frame)
            .is_some_and(|s| s.canonical().is_some())
    }

    /// Adds a job from a peer, the store or a submit (signed by its submitter). Returns
    /// true if it was new; a forged job is an error.
    pub(super) fn add_job(&mut self, spec: JobSpec) -> Result<bool, crate::ledger::LedgerError> {
        match self.ledger.insert_signed_job(spec.clone()) {
            Ok((id, true)) => {
                self.settle.recheck(&self.ledger, &id);
                if let Err(e) = self.store.put_job(&spec) {
                    warn!("cannot persist job: {e}");
                }
                info!(job = %id.short(), name = %spec.name, frames = spec.frames.len(), "new job");
                self.fetch_scenes(); // now, not at the next tick
                Ok(true)
            }
            Ok((_, false)) => Ok(false),
            Err(e) if e.is_forgery() => Err(e),
            Err(e) => {
                warn!("rejected job: {e}");
                Ok(false)
            }
        }
    }

    /// Adds jobs `sender` sent; a forged one costs it its connection.
    pub(super) async fn add_jobs_from(&mut self, sender: PeerId, specs: Vec<JobSpec>) {
        for spec in specs {
            let _id = spec.id();
            match self.add_job(spec) {
                Err(e) => return self.punish(sender, &format!("it sent a {e}")).await,
                #[cfg(feature = "test-faults")]
                Ok(true) => self.lie_about_job(_id).await,
                Ok(_) => {}
            }
        }
    }
}

/// Why a peer holding too many open claims is disconnected (see `Daemon::claims_flood`).
pub(super) const FLOODING: &str = "it holds far more claims than it has render slots";

/// Whether every claim, result and failure in `state` names `author` as its peer, and only
/// the job's submitter declares results lost.
pub(super) fn authored_by(
    state: &crate::ledger::FrameState,
    author: &PeerId,
    submitter: Option<PeerId>,
) -> bool {
    state.claim.as_ref().is_none_or(|c| c.peer == *author)
        && state.done.iter().all(|d| d.peer == *author)
        && state.failures.iter().all(|f| f.peer == *author)
        && (state.lost.is_empty() || submitter == Some(*author))
}
