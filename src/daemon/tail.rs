//! Backup renders at the tail of a job: when a free slot finds nothing to claim, it may
//! render a straggler's frame that it would finish sooner ([`crate::ledger::tail`]). Looked
//! for at most twice a second, and only among jobs with frames in flight.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::peers::running;
use super::slots::{SlotSpec, slot_fits};
use super::{Daemon, SceneState};
use crate::ids::JobId;
use crate::ledger::tail::{BackupChoice, Running, choose_backup};
use crate::ledger::{JobState, PeerView, RunState, job_state, peer_blocked};

/// Least time between two looks for a straggler.
const CHECK_EVERY: Duration = Duration::from_millis(500);

impl Daemon {
    /// What every live peer (this one included) is rendering now, by its heartbeat.
    fn running_now(&self) -> Vec<Running> {
        let mut out: Vec<Running> = self
            .render
            .in_flight()
            .iter()
            .map(|f| running(self.me, f))
            .collect();
        let view = self.view();
        for peer in self.peers.peers.keys() {
            out.extend(view.in_flight(peer));
        }
        out
    }

    /// A straggler's frame for a free slot of `spec` to back up, if one is worth it.
    pub(super) fn choose_backup_for(&mut self, spec: &SlotSpec) -> Option<BackupChoice> {
        let now = Instant::now();
        if self
            .render
            .backup_checked
            .is_some_and(|t| now.saturating_duration_since(t) < CHECK_EVERY)
        {
            return None;
        }
        self.render.backup_checked = Some(now);
        let running = self.running_now();
        let busy: HashSet<PeerId> = running.iter().map(|r| r.peer).collect();
        let view = self.view();
        let idle: Vec<PeerId> = view
            .live_renderers()
            .into_iter()
            .filter(|p| *p == self.me || !busy.contains(p))
            .collect();
        let mut jobs: Vec<(i32, u64, JobId)> = running
            .iter()
            .map(|r| r.job)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|id| {
                let e = self.ledger.job(&id)?;
                if e.tally.excluded.contains_key(&self.me) {
                    return None;
                }
                Some((-e.priority(), e.spec.created_unix_ms, id))
            })
            .collect();
        jobs.sort();
        for (_, _, id) in jobs {
            let Some(e) = self.ledger.job(&id) else {
                continue;
            };
            if self.settle.is_over(&id)
                || e.control.run != RunState::Active
                || !matches!(self.scenes.get(&id), Some(SceneState::Ready(..)))
                || !slot_fits(&e.spec.settings.device, spec)
                || peer_blocked(e, &self.me, &self.policy)
                || job_state(e, &view, &self.policy) != JobState::Running
            {
                continue;
            }
            if let Some(b) = choose_backup(&id, e, &self.me, &view, &self.policy, &running, &idle) {
                return Some(b);
            }
        }
        None
    }
}
