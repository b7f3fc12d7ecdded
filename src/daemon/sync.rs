//! Anti-entropy and connectivity: `/meshd/sync/1` rounds with peers (on connect and every
//! few seconds with a random one), and redialling known peers.

use std::collections::HashMap;

use libp2p::PeerId;
use tracing::info;

use super::{Daemon, TaskDone};
use crate::ids::JobId;
use crate::ledger::page::{Cursor, Theirs, page, theirs_of};
use crate::net::wire::{KnownPeer, MAX_PEER_ADDRS, MAX_SYNC_PEERS};
use crate::net::{SyncRequest, SyncResponse};

/// A sync answer whose frame updates were checked off the loop: only those that verify
/// are left, and the first forgery is kept to hold against the peer.
#[derive(Debug)]
pub(crate) struct Checked {
    pub resp: SyncResponse,
    pub forged: Option<crate::ledger::Invalid>,
}

/// Bytes of frame states one sync answer carries at most (the codec allows 64 MiB).
const SYNC_PAGE_BYTES: usize = 4 << 20;

/// Longest multiaddr string taken from a peer.
const MAX_ADDR_LEN: usize = 256;

/// Peers known at all (connected or not), in memory: mDNS lets anyone on the LAN announce
/// peer ids, so the table is bounded.
const MAX_KNOWN_PEERS: usize = 1024;

impl Daemon {
    pub(super) fn sync_request(&self, cursor: Option<Cursor>) -> SyncRequest {
        let mut digests = Vec::new();
        let mut buckets = Vec::new();
        for (id, t) in theirs_of(&self.ledger) {
            digests.push((id, t.digest));
            if let Some(b) = t.buckets {
                buckets.push((id, b.into_iter().collect()));
            }
        }
        SyncRequest {
            version: crate::net::wire::WIRE_VERSION,
            digests,
            buckets,
            cursor,
        }
    }

    /// What the requester lacks, judged by its per-job (and per-bucket) digests: one page
    /// of it, from the request's cursor (see [`crate::ledger::page`]). The first page also
    /// names the peers this daemon is connected to, but the requester ([`Daemon::learn_peers`]).
    pub(super) fn sync_response(&self, requester: PeerId, req: &SyncRequest) -> SyncResponse {
        let mut theirs: HashMap<JobId, Theirs> = req
            .digests
            .iter()
            .map(|(id, digest)| {
                let t = Theirs {
                    digest: *digest,
                    buckets: None,
                };
                (*id, t)
            })
            .collect();
        for (id, b) in &req.buckets {
            if let Some(t) = theirs.get_mut(id) {
                t.buckets = Some(b.iter().copied().collect());
            }
        }
        let p = page(&self.ledger, &theirs, req.cursor, SYNC_PAGE_BYTES);
        SyncResponse {
            version: crate::net::wire::WIRE_VERSION,
            jobs: p.jobs,
            updates: p.updates,
            controls: p.controls,
            next: p.next,
            peers: if req.cursor.is_none() {
                self.known_peers(requester)
            } else {
                Vec::new()
            },
        }
    }

    /// Up to [`MAX_SYNC_PEERS`] connected peers (a random few when there are more) and their
    /// addresses, for a sync answer to `requester`.
    fn known_peers(&self, requester: PeerId) -> Vec<KnownPeer> {
        use rand::seq::IteratorRandom;
        self.peers
            .peers
            .iter()
            .filter(|(p, s)| {
                s.connected && **p != requester && **p != self.me && !s.addrs.is_empty()
            })
            .choose_multiple(&mut rand::thread_rng(), MAX_SYNC_PEERS)
            .into_iter()
            .map(|(p, s)| KnownPeer {
                peer: *p,
                addrs: s
                    .addrs
                    .iter()
                    .take(MAX_PEER_ADDRS)
                    .map(|a| a.to_string())
                    .collect(),
            })
            .collect()
    }

    /// Peer exchange from a sync answer: the peers it names go through [`Daemon::learn_addrs`],
    /// as a heartbeat's sender does. A peer that joined through one other (a ticket) would
    /// otherwise learn of the rest only from their heartbeats, relayed by that one peer —
    /// which, busy with many, may leave it out of its gossip mesh for a while.
    pub(super) async fn learn_peers(&mut self, from: PeerId, peers: Vec<KnownPeer>) {
        let mut dialled = 0;
        for k in peers.into_iter().take(MAX_SYNC_PEERS) {
            let addrs = &k.addrs[..k.addrs.len().min(MAX_PEER_ADDRS)];
            if self.learn_addrs(k.peer, addrs).await {
                dialled += 1;
            }
        }
        if dialled > 0 {
            info!(%from, peers = dialled, "peer exchange: dialling peers learned in sync");
        }
    }

    pub(super) fn start_sync(&mut self, peer: PeerId) {
        self.start_sync_from(peer, None);
    }

    /// Asks `peer` for what this daemon lacks, from `cursor` (the next page of an answer).
    /// The answer's signatures are checked in the task, off the loop (a page holds up to
    /// 4 MiB of entries: thousands of signatures).
    pub(super) fn start_sync_from(&mut self, peer: PeerId, cursor: Option<Cursor>) {
        let net = self.net.clone();
        let req = self.sync_request(cursor);
        let submitters: HashMap<JobId, PeerId> = self
            .ledger
            .jobs()
            .map(|(id, e)| (*id, e.spec.submitter))
            .collect();
        self.tasks.spawn(async move {
            let result = match net.sync(peer, req).await {
                Ok(mut resp) => tokio::task::spawn_blocking(move || {
                    let updates = std::mem::take(&mut resp.updates);
                    let (valid, forged) =
                        crate::ledger::sign::verify_page(updates, &resp.jobs, submitters);
                    resp.updates = valid;
                    Checked { resp, forged }
                })
                .await
                .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            TaskDone::Synced { peer, result }
        });
    }

    /// Periodic anti-entropy with one random connected peer.
    pub(super) fn anti_entropy(&mut self) {
        let connected = self.peers.connected();
        if connected.is_empty() {
            return;
        }
        let peer = connected[rand::random::<usize>() % connected.len()];
        self.start_sync(peer);
    }

    /// Dials known peers we are not connected to: the addresses from tickets and `--peer`,
    /// and those peers announced about themselves.
    pub(super) async fn redial(&mut self) {
        for addr in self.store.bootstrap().unwrap_or_default() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if peer.is_some_and(|p| self.peers.peers.get(&p).is_some_and(|s| s.connected)) {
                continue;
            }
            let _ = self.net.dial(addr).await;
        }
        // Members we hear of through heartbeats (their freshest addresses, in memory), then
        // peers we were connected to (on disk, also from earlier runs).
        let mut known: Vec<(PeerId, Vec<libp2p::Multiaddr>)> = self
            .peers
            .peers
            .iter()
            .filter(|(_, s)| s.heard.is_some() && !s.addrs.is_empty())
            .map(|(p, s)| (*p, s.addrs.clone()))
            .collect();
        known.extend(self.store.peer_addrs().unwrap_or_default());
        let mut dialled = std::collections::HashSet::new();
        for (peer, addrs) in known {
            if peer == self.me
                || self.banned.contains(&peer)
                || self.peers.peers.get(&peer).is_some_and(|s| s.connected)
                || !dialled.insert(peer)
            {
                continue;
            }
            for a in addrs.into_iter().take(4) {
                let _ = self.net.dial(a.with_p2p(peer).unwrap_or_else(|a| a)).await;
            }
        }
    }

    /// Peer exchange: a heartbeat or a sync answer says where a peer listens. Unknown
    /// addresses of a peer we are not connected to are remembered (the redial loop retries
    /// them) and, when our id is the lower one, dialled at once — one side only, so two dials
    /// never cross. Returns whether it dialled. Addresses over [`MAX_ADDR_LEN`] bytes or that
    /// do not parse are skipped.
    pub(super) async fn learn_addrs(&mut self, peer: PeerId, addrs: &[String]) -> bool {
        if peer == self.me
            || self.banned.contains(&peer)
            || self.peers.peers.get(&peer).is_some_and(|s| s.connected)
        {
            return false;
        }
        let addrs: Vec<libp2p::Multiaddr> = addrs
            .iter()
            .filter(|a| a.len() <= MAX_ADDR_LEN)
            .filter_map(|a| a.parse().ok())
            .collect();
        if !self.remember_addrs(peer, addrs.clone()) || self.me > peer {
            return false;
        }
        for a in addrs.into_iter().take(MAX_PEER_ADDRS) {
            let _ = self.net.dial(a.with_p2p(peer).unwrap_or_else(|a| a)).await;
        }
        true
    }

    /// Adds addresses to what we know of `peer` (kept for redials). Returns whether any was
    /// new. They are persisted only for a peer this daemon is connected to: a peer id that
    /// anyone on the LAN can announce over mDNS, or that never answered, is not written to
    /// disk. Peers never connected are kept in memory up to [`MAX_UNCONNECTED`].
    pub(super) fn remember_addrs(
        &mut self,
        peer: PeerId,
        addrs: impl IntoIterator<Item = libp2p::Multiaddr>,
    ) -> bool {
        if !self.peers.peers.contains_key(&peer) && self.peers.peers.len() >= MAX_KNOWN_PEERS {
            return false;
        }
        let e = self.peers.entry(peer);
        let fresh: Vec<_> = addrs.into_iter().collect();
        let new = fresh.iter().any(|a| !e.addrs.contains(a));
        if !new {
            return false;
        }
        // Newest first, so the 16 kept are the freshest.
        let known = std::mem::take(&mut e.addrs);
        e.addrs = crate::net::node::unique_addrs(fresh.into_iter().chain(known));
        e.addrs.truncate(16);
        if e.connected {
            self.persist_addrs(peer);
        }
        true
    }

    /// Writes what we know of `peer`'s addresses (called once it is connected).
    pub(super) fn persist_addrs(&self, peer: PeerId) {
        let Some(e) = self.peers.peers.get(&peer).filter(|e| !e.addrs.is_empty()) else {
            return;
        };
        if let Err(err) = self.store.put_peer_addrs(&peer, &e.addrs) {
            tracing::warn!("cannot persist peer addresses: {err}");
        }
    }
}
