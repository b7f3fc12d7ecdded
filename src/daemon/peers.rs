//! What this daemon knows about other peers, and the liveness view the ledger policy asks.
//!
//! Liveness is judged only by the local time at which a peer's latest heartbeat arrived
//! (DESIGN principle 6); the heartbeat's content never carries a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::slots::{SlotSpec, peer_fits, slot_fits};
use crate::ids::JobId;
use crate::ledger::tail::Running;
use crate::ledger::{JobSpec, PeerView};
use crate::net::{Heartbeat, InFlight};

#[derive(Debug, Default)]
pub struct PeerState {
    pub connected: bool,
    pub addrs: Vec<Multiaddr>,
    pub agent: Option<String>,
    /// Local receive time of the latest heartbeat.
    pub heard: Option<Instant>,
    pub heartbeat: Option<Heartbeat>,
    /// Renders the peer started that its heartbeat may not show yet, learned from its
    /// claims as they arrive (a claim goes out as its render starts): a peer sends no
    /// heartbeat merely because a frame started or ended. At most its slots, newest last.
    pub started: Vec<Seen>,
    /// Renders that ended (its result or failure arrived, or another peer's claim beat its
    /// own) that its heartbeat may still list. At most [`MAX_SLOTS`], newest last.
    pub ended: Vec<Seen>,
}

/// A frame of a peer's, with the local time the news of it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub job: JobId,
    pub frame: u32,
    pub at: Instant,
}

impl Seen {
    fn is(&self, job: &JobId, frame: u32) -> bool {
        self.job == *job && self.frame == frame
    }
}

/// News heard at most this long before a heartbeat may be newer than that heartbeat
/// (claims, results and heartbeats travel on different topics): the heartbeat does not
/// override it. Older news the heartbeat does override.
const REORDER: Duration = Duration::from_secs(1);

/// The most render slots a peer is taken to have, whatever its heartbeat says (as many as
/// a heartbeat may list renders).
const MAX_SLOTS: usize = 64;

impl PeerState {
    /// Render slots the peer reported (1 until its heartbeat says), at most [`MAX_SLOTS`].
    fn slots(&self) -> usize {
        self.heartbeat
            .as_ref()
            .map_or(1, |h| h.slots as usize)
            .clamp(1, MAX_SLOTS)
    }

    /// What the peer renders now, as of `now`: its claims heard since its heartbeat, then
    /// what the heartbeat reported (elapsed time carried forward) and has not ended since,
    /// at most its slots in all. Nothing once the heartbeat is older than `lease`.
    pub fn rendering(&self, now: Instant, lease: Duration) -> Vec<InFlight> {
        let Some((hb, heard)) = self.heartbeat.as_ref().zip(self.heard) else {
            return Vec::new();
        };
        let since = now.saturating_duration_since(heard);
        if since > lease {
            return Vec::new();
        }
        let mut out: Vec<InFlight> = self
            .started
            .iter()
            .rev()
            .map(|s| InFlight {
                job: s.job,
                frame: s.frame,
                current: 0,
                total: 0,
                elapsed_ms: now.saturating_duration_since(s.at).as_millis() as u64,
            })
            .collect();
        for f in &hb.rendering {
            let known = out.iter().any(|o| o.job == f.job && o.frame == f.frame);
            if !known && !self.ended.iter().any(|e| e.is(&f.job, f.frame)) {
                out.push(InFlight {
                    elapsed_ms: f.elapsed_ms.saturating_add(since.as_millis() as u64),
                    ..f.clone()
                });
            }
        }
        out.truncate(self.slots());
        out
    }

    fn end(&mut self, job: JobId, frame: u32, now: Instant) {
        self.started.retain(|s| !s.is(&job, frame));
        note(
            &mut self.ended,
            Seen {
                job,
                frame,
                at: now,
            },
            MAX_SLOTS,
        );
    }
}

/// Adds `seen` to `list` as its newest entry (once), keeping the newest `cap`.
fn note(list: &mut Vec<Seen>, seen: Seen, cap: usize) {
    list.retain(|s| !s.is(&seen.job, seen.frame));
    list.push(seen);
    let extra = list.len().saturating_sub(cap);
    list.drain(..extra);
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
        // It replaces news heard well before it; a render it lists is known better from it
        // (elapsed time, progress).
        let recent = |s: &Seen| now.saturating_duration_since(s.at) < REORDER;
        let lists = |s: &Seen| hb.rendering.iter().any(|f| s.is(&f.job, f.frame));
        e.started.retain(|s| recent(s) && !lists(s));
        e.ended.retain(recent);
        e.heard = Some(now);
        e.heartbeat = Some(hb);
    }

    /// `peer`'s own claim of `frame`, made by `incarnation`, won and arrived now: it
    /// renders that frame, and any other peer whose claim of it was beaten does not. A
    /// claim its latest heartbeat already lists, or from an incarnation before that
    /// heartbeat's, says nothing new.
    pub fn claimed(
        &mut self,
        peer: PeerId,
        job: JobId,
        frame: u32,
        incarnation: u64,
        now: Instant,
    ) {
        for (p, e) in self.peers.iter_mut() {
            if *p != peer && e.started.iter().any(|s| s.is(&job, frame)) {
                e.end(job, frame, now);
            }
        }
        let e = self.entry(peer);
        let stale = e.heartbeat.as_ref().is_some_and(|h| {
            h.incarnation > incarnation
                || h.rendering.iter().any(|f| f.job == job && f.frame == frame)
        });
        if stale {
            return;
        }
        e.ended.retain(|s| !s.is(&job, frame));
        let slots = e.slots();
        note(
            &mut e.started,
            Seen {
                job,
                frame,
                at: now,
            },
            slots,
        );
    }

    /// `peer`'s result or failure of `frame` arrived now: its render of it is over.
    pub fn ended(&mut self, peer: PeerId, job: JobId, frame: u32, now: Instant) {
        self.entry(peer).end(job, frame, now);
    }

    /// Drops what `peer`'s heartbeats said: it is no longer live (see `Daemon::punish`).
    pub fn forget_heartbeat(&mut self, peer: &PeerId) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.heard = None;
            e.heartbeat = None;
            e.started.clear();
            e.ended.clear();
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

/// A frame `peer` renders, as of now.
pub(super) fn running(peer: PeerId, f: &InFlight) -> Running {
    Running {
        peer,
        job: f.job,
        frame: f.frame,
        elapsed_ms: f.elapsed_ms,
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

    fn fits(&self, peer: &PeerId, spec: &JobSpec) -> bool {
        if *peer == self.me {
            // Still probing: what it will have is not known yet; count it as fitting.
            return self.probing
                || self.local.is_some_and(|(version, slots)| {
                    spec.blender_fits(version)
                        && slots.iter().any(|s| slot_fits(&spec.settings.device, s))
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
                        .is_some_and(|v| peer_fits(spec, v, &h.devices))
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
        self.table.peers.get(peer).map_or_else(Vec::new, |s| {
            s.rendering(self.now, self.lease)
                .iter()
                .map(|f| running(*peer, f))
                .collect()
        })
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

    fn flight(job: JobId, frame: u32, elapsed_ms: u64) -> InFlight {
        InFlight {
            job,
            frame,
            current: 0,
            total: 0,
            elapsed_ms,
        }
    }

    fn frames(t: &PeerTable, p: &PeerId, now: Instant) -> Vec<(u32, u64)> {
        let lease = Duration::from_secs(20);
        t.peers[p]
            .rendering(now, lease)
            .iter()
            .map(|f| (f.frame, f.elapsed_ms))
            .collect()
    }

    #[test]
    fn a_render_is_known_from_its_claim_until_a_heartbeat_tells_better() {
        let p = PeerId::random();
        let job = JobId::of(b"job");
        let mut t = PeerTable::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut beat = hb(1, 1);
        beat.rendering = vec![flight(job, 1, 500)];
        t.heartbeat(p, beat, t0);
        assert_eq!(frames(&t, &p, t0 + ms(100)), vec![(1, 600)]);
        // Frame 1 ended, 2 started: its result and claim say so at once.
        t.ended(p, job, 1, t0 + ms(300));
        assert_eq!(frames(&t, &p, t0 + ms(300)), vec![]);
        t.claimed(p, job, 2, 1, t0 + ms(300));
        assert_eq!(frames(&t, &p, t0 + ms(400)), vec![(2, 100)]);
        // A heartbeat sent before that news, arriving after it, neither hides frame 2 nor
        // brings frame 1 back.
        let mut late = hb(1, 2);
        late.rendering = vec![flight(job, 1, 700)];
        t.heartbeat(p, late, t0 + ms(500));
        assert_eq!(frames(&t, &p, t0 + ms(600)), vec![(2, 300)]);
        // One that lists it knows it better (progress), and replaces the claim; the claim
        // heard again later (gossip repeats) does not reset it.
        let mut listing = hb(1, 3);
        listing.rendering = vec![InFlight {
            current: 5,
            total: 10,
            ..flight(job, 2, 900)
        }];
        t.heartbeat(p, listing, t0 + ms(1200));
        assert!(t.peers[&p].started.is_empty());
        t.claimed(p, job, 2, 1, t0 + ms(1300));
        assert_eq!(frames(&t, &p, t0 + ms(1400)), vec![(2, 1100)]);
        let lease = Duration::from_secs(20);
        assert_eq!(t.peers[&p].rendering(t0 + ms(1400), lease)[0].current, 5);
        // A claim heard well before a heartbeat that does not list it: that render is over.
        t.claimed(p, job, 3, 1, t0 + ms(1500));
        t.heartbeat(p, hb(1, 4), t0 + ms(2600));
        assert_eq!(frames(&t, &p, t0 + ms(2700)), vec![]);
        // A claim of an incarnation before its heartbeat's is from a render long gone.
        t.claimed(p, job, 9, 0, t0 + ms(2700));
        assert_eq!(frames(&t, &p, t0 + ms(2700)), vec![]);
        // Two slots: both claims show, newest first, and never more than two.
        let mut two = hb(1, 5);
        two.slots = 2;
        t.heartbeat(p, two, t0 + ms(3000));
        for (i, f) in [4, 5, 6].into_iter().enumerate() {
            t.claimed(p, job, f, 1, t0 + ms(3100 + 100 * i as u64));
        }
        assert_eq!(frames(&t, &p, t0 + ms(3400)), vec![(6, 100), (5, 200)]);
        // Another peer's claim of frame 5 beat this one's: this one no longer renders it.
        let q = PeerId::random();
        t.heartbeat(q, hb(1, 1), t0 + ms(3000));
        t.claimed(q, job, 5, 1, t0 + ms(3400));
        assert_eq!(frames(&t, &p, t0 + ms(3400)), vec![(6, 100)]);
        assert_eq!(frames(&t, &q, t0 + ms(3400)), vec![(5, 0)]);
        // Nothing once its heartbeat is a lease old, nor once it is forgotten.
        assert_eq!(frames(&t, &p, t0 + Duration::from_secs(24)), vec![]);
        t.forget_heartbeat(&p);
        assert!(t.peers[&p].started.is_empty() && t.peers[&p].ended.is_empty());
    }

    #[test]
    fn what_a_peer_is_taken_to_render_stays_bounded() {
        let p = PeerId::random();
        let job = JobId::of(b"job");
        let mut t = PeerTable::default();
        let t0 = Instant::now();
        let mut many = hb(1, 1);
        many.slots = u32::MAX;
        t.heartbeat(p, many, t0);
        for f in 0..1000 {
            t.claimed(p, job, f, 1, t0);
            t.ended(p, job, f + 5000, t0);
        }
        assert_eq!(t.peers[&p].started.len(), MAX_SLOTS);
        assert_eq!(t.peers[&p].ended.len(), MAX_SLOTS);
        assert_eq!(frames(&t, &p, t0).len(), MAX_SLOTS);
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
