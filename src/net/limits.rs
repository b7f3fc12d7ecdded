//! Connection limits that keep a flood of connections from costing the daemon: libp2p's
//! own (pending and established, per peer) and one of meshd's, on handshakes in progress
//! per remote IP address.
//!
//! An inbound connection is pending until the mesh key (pnet), noise and yamux handshakes
//! are done, at most 20 s. Anyone who can reach the port can open pending connections,
//! key or not: without a per-IP bound one host could hold every pending slot and keep the
//! mesh's own peers out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, connection_limits};

/// Handshakes in progress from one IP address. Peers of one machine (several daemons, a
/// test mesh on 127.0.0.1) dial each other at start, so this is not tiny.
pub const MAX_PENDING_PER_IP: u32 = 64;
/// Handshakes in progress in all.
pub const MAX_PENDING_INCOMING: u32 = 256;
/// Connections to one peer (a dial from each side at once makes two).
pub const MAX_PER_PEER: u32 = 4;

/// libp2p's limits, as meshd sets them.
pub fn libp2p_limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_pending_outgoing(Some(MAX_PENDING_INCOMING))
            .with_max_established_per_peer(Some(MAX_PER_PEER)),
    )
}

/// The count of pending inbound connections per IP (pure).
#[derive(Debug, Default)]
pub struct PendingByIp {
    max: u32,
    by_conn: HashMap<ConnectionId, IpAddr>,
    count: HashMap<IpAddr, u32>,
}

impl PendingByIp {
    pub fn new(max: u32) -> Self {
        PendingByIp {
            max,
            ..Default::default()
        }
    }

    /// Admits connection `conn` from `ip`, unless `ip` has `max` pending already.
    pub fn admit(&mut self, conn: ConnectionId, ip: IpAddr) -> bool {
        let n = self.count.entry(ip).or_default();
        if *n >= self.max {
            return false;
        }
        *n += 1;
        self.by_conn.insert(conn, ip);
        true
    }

    /// Connection `conn` is no longer pending (established or failed).
    pub fn done(&mut self, conn: ConnectionId) {
        if let Some(ip) = self.by_conn.remove(&conn)
            && let Some(n) = self.count.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.count.remove(&ip);
            }
        }
    }
}

/// Too many handshakes from one address.
#[derive(Debug, thiserror::Error)]
#[error("{0} has {MAX_PENDING_PER_IP} connections in handshake already")]
pub struct TooManyFromIp(IpAddr);

/// The per-IP bound as a behaviour.
pub struct PerIp {
    pending: PendingByIp,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            pending: PendingByIp::new(MAX_PENDING_PER_IP),
        }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        if self.pending.admit(connection_id, ip) {
            Ok(())
        } else {
            tracing::debug!(%ip, "inbound connection refused: too many handshakes from it");
            Err(ConnectionDenied::new(TooManyFromIp(ip)))
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.done(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.pending.done(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _conn: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_connections_are_bounded_per_address_and_freed_when_done() {
        let mut p = PendingByIp::new(2);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..4)
            .map(|_| ConnectionId::new_unchecked(rand_id()))
            .collect();
        assert!(p.admit(ids[0], a));
        assert!(p.admit(ids[1], a));
        assert!(!p.admit(ids[2], a), "a third from the same address waits");
        assert!(p.admit(ids[3], b), "another address is not affected");
        p.done(ids[0]);
        assert!(p.admit(ids[2], a), "a finished handshake frees its place");
        p.done(ids[1]);
        p.done(ids[2]);
        p.done(ids[3]);
        p.done(ids[3]);
        assert!(p.count.is_empty() && p.by_conn.is_empty());
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
