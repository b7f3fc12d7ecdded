//! What this daemon knows about other peers, and the liveness view the ledger policy asks.
//!
//! Liveness is judged only by the local time at which a peer's latest heartbeat arrived
//! (DESIGN principle 6); the heartbeat's content never carries a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::slots::{SlotSpec, peer_fits, slot_fits};
use crate::ledger::tail::Running;
use crate::ledger::{JobEntry, PeerView};
use crate::net::{Heartbeat, InFlight};

#[derive(Debug, Default)]
pub struct PeerState {
    pub connected: bool,
    pub addrs: Vec<Multiaddr>,
    pub agent: Option<String>,
    /// Local receive time of the latest heartbeat.
    pub heard: Option<Instant>,
    pub heartbeat: Option<Heartbeat>,
}

#[derive(Debug, Default)]
pub struct PeerTable {
    pub peers: HashMap<PeerId, PeerState>,
}

impl PeerTable {
    pub fn entry(&mut self, peer: PeerId) -> &mut PeerState {
        self.peers.entry(peer).or_default()
    }

    pub fn heartbeat(&mut self, peer: PeerId, hb: Heartbeat, now: Instant) {
        let e = self.entry(peer);
        // Ignore reordered gossip: an older seq from the same incarnation says nothing new.
        if let Some(old) = &e.heartbeat
            && (old.incarnation, old.seq) > (hb.incarnation, hb.seq)
        {
            return;
        }
        e.heard = Some(now);
        e.heartbeat = Some(hb);
    }

    /// Drops what `peer`'s heartbeats said: it is no longer live (see `Daemon::punish`).
    pub fn forget_heartbeat(&mut self, peer: &PeerId) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.heard = None;
            e.heartbeat = None;
        }
    }

    pub fn connected(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, s)| s.connected)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// A frame `peer` reported in flight, `since` ago, as of now.
pub(super) fn running(peer: PeerId, f: &InFlight, since: Duration) -> Running {
    Running {
        peer,
        job: f.job,
        frame: f.frame,
        elapsed_ms: f.elapsed_ms.saturating_add(since.as_millis() as u64),
        progress: (f.total > 0).then(|| f64::from(f.current) / f64::from(f.total)),
    }
}

/// The ledger's view of who is alive, at one instant.
pub struct LiveView<'a> {
    pub me: PeerId,
    pub incarnation: u64,
    pub can_render: bool,
    /// This peer is still probing its Blender.
    pub probing: bool,
    pub table: &'a PeerTable,
    pub lease: Duration,
    pub now: Instant,
    /// When this daemon started: for one lease after that, claims of peers not heard from
    /// yet count as live (their heartbeats have not had time to arrive).
    pub started: Instant,
    /// This peer's Blender version and render slots, when it renders.
    pub local: Option<(&'a str, &'a [SlotSpec])>,
}

impl LiveView<'_> {
    fn fresh(&self, s: &PeerState) -> bool {
        s.heard
            .is_some_and(|t| self.now.saturating_duration_since(t) <= self.lease)
    }

    /// Peers whose latest heartbeat is fresh, renderers or not, and this one.
    pub fn live_peers(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .table
            .peers
            .iter()
            .filter(|(_, s)| self.fresh(s))
            .map(|(p, _)| *p)
            .collect();
        out.push(self.me);
        out
    }
}

impl PeerView for LiveView<'_> {
    fn claim_live(&self, peer: &PeerId, incarnation: u64) -> bool {
        if *peer == self.me {
            return incarnation == self.incarnation;
        }
        let starting = self.now.saturating_duration_since(self.started) < self.lease;
        match self
            .table
            .peers
            .get(peer)
            .and_then(|s| s.heartbeat.as_ref().map(|h| (s, h)))
        {
            // A claim from a newer incarnation than the last heartbeat: the peer restarted
            // and claimed before its new heartbeat got here. An older one: it restarted
            // since, and that render is gone.
            Some((s, h)) => self.fresh(s) && incarnation >= h.incarnation,
            None => starting,
        }
    }

    fn fits(&self, peer: &PeerId, entry: &JobEntry) -> bool {
        if *peer == self.me {
            // Still probing: what it will have is not known yet; count it as fitting.
            return self.probing
                || self.local.is_some_and(|(version, slots)| {
                    entry.spec.blender_fits(version)
                        && slots
                            .iter()
                            .any(|s| slot_fits(&entry.spec.settings.device, s))
                });
        }
        self.table
            .peers
            .get(peer)
            .and_then(|s| s.heartbeat.as_ref())
            .is_some_and(|h| {
                h.probing
                    || h.blender
                        .as_deref()
                        .is_some_and(|v| peer_fits(&entry.spec, v, &h.devices))
            })
    }

    fn slots(&self, peer: &PeerId) -> usize {
        self.table
            .peers
            .get(peer)
            .and_then(|s| s.heartbeat.as_ref())
            .map_or(1, |h| h.slots as usize)
    }

    fn in_flight(&self, peer: &PeerId) -> Vec<Running> {
        let Some((Some(hb), Some(heard))) = self
            .table
            .peers
            .get(peer)
            .map(|s| (s.heartbeat.as_ref(), s.heard))
        else {
            return Vec::new();
        };
        let since = self.now.saturating_duration_since(heard);
        if since > self.lease {
            return Vec::new();
        }
        hb.rendering
            .iter()
            .map(|f| running(*peer, f, since))
            .collect()
    }

    fn live_renderers(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .table
            .peers
            .iter()
            .filter(|(_, s)| {
                self.fresh(s)
                    && s.heartbeat
                        .as_ref()
                        .is_some_and(|h| h.can_render || h.probing)
            })
            .map(|(p, _)| *p)
            .collect();
        if self.can_render || self.probing {
            out.push(self.me);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(incarnation: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            seq,
            incarnation,
            can_render: true,
            blender: None,
            devices: vec![],
            render_device: None,
            rendering: vec![],
            addrs: vec![],
            projects: vec![],
            probing: false,
            slots: 1,
        }
    }

    #[test]
    fn lease_follows_local_receive_time() {
        let me = PeerId::random();
        let other = PeerId::random();
        let mut t = PeerTable::default();
        let t0 = Instant::now();
        t.heartbeat(other, hb(2, 1), t0);
        let view = |now| LiveView {
            me,
            incarnation: 1,
            can_render: false,
            probing: false,
            table: &t,
            lease: Duration::from_secs(30),
            now,
            started: t0 - Duration::from_secs(3600),
            local: None,
        };
        assert!(view(t0 + Duration::from_secs(29)).claim_live(&other, 2));
        assert!(
            !view(t0 + Duration::from_secs(29)).claim_live(&other, 1),
            "old incarnation"
        );
        assert!(
            !view(t0 + Duration::from_secs(31)).claim_live(&other, 2),
            "lease expired"
        );
        assert_eq!(view(t0).live_renderers(), vec![other]);
        assert!(view(t0).claim_live(&me, 1));
        assert!(!view(t0).claim_live(&me, 0));
    }

    #[test]
    fn a_restarted_or_new_peer_does_not_take_claims_it_cannot_judge_yet() {
        let me = PeerId::random();
        let other = PeerId::random();
        let silent = PeerId::random();
        let mut t = PeerTable::default();
        let t0 = Instant::now();
        t.heartbeat(other, hb(2, 1), t0);
        let lease = Duration::from_secs(30);
        let view = |now| LiveView {
            me,
            incarnation: 1,
            can_render: false,
            probing: false,
            table: &t,
            lease,
            now,
            started: t0,
            local: None,
        };
        // Right after start, a peer not heard from yet holds its claims.
        assert!(view(t0 + Duration::from_secs(5)).claim_live(&silent, 1));
        assert!(
            !view(t0 + Duration::from_secs(31)).claim_live(&silent, 1),
            "after a lease without a heartbeat its claims are dead"
        );
        // A claim made by a newer incarnation than the last heartbeat is live.
        assert!(view(t0 + Duration::from_secs(5)).claim_live(&other, 3));
        assert!(!view(t0 + Duration::from_secs(5)).claim_live(&other, 1));
    }

    #[test]
    fn stale_heartbeat_is_ignored() {
        let p = PeerId::random();
        let mut t = PeerTable::default();
        let t0 = Instant::now();
        t.heartbeat(p, hb(1, 5), t0);
        t.heartbeat(p, hb(1, 3), t0 + Duration::from_secs(1));
        assert_eq!(t.peers[&p].heartbeat.as_ref().unwrap().seq, 5);
        assert_eq!(t.peers[&p].heard, Some(t0));
        // A restarted peer (higher incarnation) replaces it; a late one from before does not.
        t.heartbeat(p, hb(2, 1), t0 + Duration::from_secs(2));
        t.heartbeat(p, hb(1, 9), t0 + Duration::from_secs(3));
        assert_eq!(t.peers[&p].heartbeat.as_ref().unwrap().incarnation, 2);
    }
}
