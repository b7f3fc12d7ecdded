//! Events from the network node ([`NetEvent`]): gossip (checked for forgery and authorship,
//! or its sender disconnected), connections, discovered and identified peers, and requests
//! from peers (sync, logs, key rotation).

use std::time::Instant;

use libp2p::PeerId;
use tracing::{debug, warn};

use super::Daemon;
use super::merge::{FLOODING, authored_by};
use crate::ids::JobId;
use crate::ledger::FrameUpdate;
use crate::net::{GossipMsg, NetEvent};

impl Daemon {
    pub(super) async fn on_net_event(&mut self, ev: NetEvent) {
        match ev {
            // The node refuses them too; what it had queued is dropped here.
            NetEvent::Gossip(g) if self.banned.contains(&g.source) => {}
            NetEvent::Gossip(g) => match g.msg {
                GossipMsg::Job(spec) if spec.submitter != g.source => {
                    self.punish(g.source, "it announced a job in another peer's name")
                        .await;
                }
                GossipMsg::Job(spec) => self.add_jobs_from(g.source, vec![*spec]).await,
                GossipMsg::Frames(mut updates) => {
                    // A submitter back after its job was archived here as an orphan.
                    let jobs: Vec<JobId> = updates.iter().map(|u| u.job).collect();
                    self.revive_orphans_of(g.source, &jobs);
                    // News of archived jobs is late: nobody needs it any more. News of jobs
                    // not known here yet cannot be judged (who is the submitter?): sync
                    // brings the job and the news again.
                    updates.retain(|u| self.ledger.job(&u.job).is_some());
                    // A delta may only speak for its author: its claims, results and failures.
                    let submitter =
                        |u: &FrameUpdate| self.ledger.job(&u.job).map(|e| e.spec.submitter);
                    if !updates
                        .iter()
                        .all(|u| authored_by(&u.state, &g.source, submitter(u)))
                    {
                        let why = "it gossiped frame updates in another peer's name";
                        return self.punish(g.source, why).await;
                    }
                    let changed = self.merge_from(g.source, &updates, false).await;
                    self.note_renders(g.source, &updates, &changed);
                    self.after_ledger_change(&changed).await;
                    self.note_results(&changed, false);
                }
                GossipMsg::Control(job, control) => self.on_control(g.source, job, control).await,
                GossipMsg::Heartbeat(hb) => {
                    self.learn_addrs(g.source, &hb.addrs).await;
                    let incarnation = hb.incarnation;
                    let first = self.peers.peers.get(&g.source).is_none_or(|s| {
                        s.heartbeat
                            .as_ref()
                            .is_none_or(|h| h.incarnation != incarnation)
                    });
                    self.peers.heartbeat(g.source, hb, Instant::now());
                    // Its claims hold from now on: are there too many?
                    if first
                        && self
                            .ledger
                            .jobs()
                            .any(|(id, _)| self.claims_flood(id, &g.source, incarnation))
                    {
                        self.punish(g.source, FLOODING).await;
                    }
                }
            },
            NetEvent::PeerConnected(peer) => {
                self.peers.entry(peer).connected = true;
                // A peer that completed the handshake holds the mesh key: worth redialling
                // after a restart.
                self.persist_addrs(peer);
                self.start_sync(peer);
            }
            NetEvent::PeerDisconnected(peer) => self.peers.entry(peer).connected = false,
            NetEvent::Discovered { peer, addrs } => {
                self.remember_addrs(peer, addrs);
            }
            NetEvent::Identified { peer, agent, addrs } => {
                self.peers.entry(peer).agent = Some(agent);
                self.remember_addrs(peer, addrs);
            }
            NetEvent::LogRequest { req, channel, .. } => self.on_log_request(req, channel),
            NetEvent::KeyRotation { peer, req, channel } => {
                self.on_key_rotation(peer, req, channel).await;
            }
            NetEvent::SyncRequest { peer, req, channel } => {
                if req.version != crate::net::wire::WIRE_VERSION {
                    warn!(%peer, version = req.version, "ignoring sync request of another wire version");
                    return;
                }
                // A submitter back after its job was archived here as an orphan: it
                // needs the job's results again.
                let jobs: Vec<JobId> = req.digests.iter().map(|(id, _)| *id).collect();
                self.revive_orphans_of(peer, &jobs);
                #[cfg_attr(not(feature = "test-faults"), allow(unused_mut))]
                let mut resp = self.sync_response(peer, &req);
                #[cfg(feature = "test-faults")]
                self.lie_in_sync(&mut resp);
                debug!(%peer, jobs = resp.jobs.len(), updates = resp.updates.len(), "answering sync");
                if let Err(e) = self.net.respond_sync(channel, resp).await {
                    warn!("cannot answer sync: {e}");
                }
            }
            NetEvent::ListenAddr(addr) => {
                if !self.listen_addrs.contains(&addr) {
                    self.listen_addrs.push(addr);
                }
            }
        }
    }

    /// What `source`'s gossiped news says it renders: its own claim that won and still
    /// holds (no result nor failure of its under that claim) started a render; its result or
    /// failure ended one. Others learn of a render from its claim, not a heartbeat.
    fn note_renders(&mut self, source: PeerId, updates: &[FrameUpdate], changed: &[(JobId, u32)]) {
        let now = Instant::now();
        for u in updates {
            if !changed.contains(&(u.job, u.frame)) {
                continue;
            }
            let Some(state) = self.ledger.frame(&u.job, u.frame) else {
                continue;
            };
            if u.state.done.iter().any(|d| d.peer == source)
                || u.state.failures.iter().any(|f| f.peer == source)
            {
                self.peers.ended(source, u.job, u.frame, now);
            }
            if let Some(c) = u.state.claim.as_ref().filter(|c| c.peer == source) {
                let holds = state.claim.as_ref() == Some(c)
                    && state.canonical().is_none()
                    && !state.failed_at(&source, c.epoch)
                    && !state.finished_at(&source, c.epoch);
                if holds {
                    self.peers
                        .claimed(source, u.job, u.frame, c.incarnation, now);
                }
            }
        }
    }
}
