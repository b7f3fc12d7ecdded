//! The swarm's event loop and the cheap, cloneable [`Client`] that talks to it.
//!
//! One task owns the `Swarm`. Everything else sends it [`Command`]s over an mpsc channel and
//! gets replies on oneshots. Events go to the daemon over a bounded channel with `try_send`:
//! the swarm never waits on the daemon. Blob requests are answered here (through a
//! [`BlobServer`] on a blocking thread) so bulk data never passes through the daemon's loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, PublishError, TopicHash};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::ResponseChannel;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::swarm::{Behaviour, BehaviourEvent};
use super::wire::{
    BlobRequest, BlobResponse, Gossip, GossipMsg, KeyRotation, KeyRotationAck, LogRequest,
    LogResponse, SyncRequest, SyncResponse, Topic,
};

mod requests;

/// Answers blob requests from peers. Called on a blocking thread.
pub trait BlobServer: Send + Sync + 'static {
    fn serve(&self, req: &BlobRequest) -> BlobResponse;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
}

/// What the node tells the daemon.
#[derive(Debug)]
pub enum NetEvent {
    Gossip(Box<Gossip>),
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    Identified {
        peer: PeerId,
        agent: String,
        addrs: Vec<Multiaddr>,
    },
    /// mDNS found a peer on the local network (the daemon keeps the address for redials).
    Discovered {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    SyncRequest {
        peer: PeerId,
        req: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    },
    /// A peer asks for a frame's Blender log; answer with [`Client::respond_logs`].
    LogRequest {
        peer: PeerId,
        req: LogRequest,
        channel: ResponseChannel<LogResponse>,
    },
    /// A peer hands over a new mesh key; answer with [`Client::respond_key`].
    KeyRotation {
        peer: PeerId,
        req: KeyRotation,
        channel: ResponseChannel<KeyRotationAck>,
    },
    ListenAddr(Multiaddr),
}

enum Command {
    Publish(GossipMsg),
    Sync {
        peer: PeerId,
        req: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    Blob {
        peer: PeerId,
        req: BlobRequest,
        reply: oneshot::Sender<Result<BlobResponse, NetError>>,
    },
    RespondSync {
        channel: ResponseChannel<SyncResponse>,
        resp: SyncResponse,
    },
    RespondBlob {
        channel: ResponseChannel<BlobResponse>,
        resp: BlobResponse,
    },
    Key {
        peer: PeerId,
        req: KeyRotation,
        reply: oneshot::Sender<Result<KeyRotationAck, NetError>>,
    },
    RespondKey {
        channel: ResponseChannel<KeyRotationAck>,
        ack: KeyRotationAck,
    },
    Logs {
        peer: PeerId,
        req: LogRequest,
        reply: oneshot::Sender<Result<LogResponse, NetError>>,
    },
    RespondLogs {
        channel: ResponseChannel<LogResponse>,
        resp: LogResponse,
    },
    Dial(Multiaddr),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Ban(PeerId),
}

/// Handle to the network task.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    stats: Arc<super::stats::GossipStats>,
}

impl Client {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Gossip traffic so far, per topic.
    pub fn gossip_traffic(&self) -> Vec<super::stats::TopicTraffic> {
        self.stats.snapshot()
    }

    async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.send(cmd).await.map_err(|_| NetError::Stopped)
    }

    /// Sends the command `make` builds around a reply channel and waits for the answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NetError>>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Publishes on the message's topic. Queued until some peer subscribes.
    pub async fn publish(&self, msg: GossipMsg) -> Result<(), NetError> {
        self.send(Command::Publish(msg)).await
    }

    pub async fn sync(&self, peer: PeerId, req: SyncRequest) -> Result<SyncResponse, NetError> {
        self.request(|reply| Command::Sync { peer, req, reply })
            .await
    }

    pub async fn blob(&self, peer: PeerId, req: BlobRequest) -> Result<BlobResponse, NetError> {
        self.request(|reply| Command::Blob { peer, req, reply })
            .await
    }

    pub async fn respond_sync(
        &self,
        channel: ResponseChannel<SyncResponse>,
        resp: SyncResponse,
    ) -> Result<(), NetError> {
        self.send(Command::RespondSync { channel, resp }).await
    }

    /// Hands `peer` a new mesh key over the connection it has now.
    pub async fn rotate_key(
        &self,
        peer: PeerId,
        req: KeyRotation,
    ) -> Result<KeyRotationAck, NetError> {
        self.request(|reply| Command::Key { peer, req, reply })
            .await
    }

    pub async fn respond_key(
        &self,
        channel: ResponseChannel<KeyRotationAck>,
        ack: KeyRotationAck,
    ) -> Result<(), NetError> {
        self.send(Command::RespondKey { channel, ack }).await
    }

    /// Asks `peer` for the Blender log of its last attempt at a frame.
    pub async fn logs(&self, peer: PeerId, req: LogRequest) -> Result<LogResponse, NetError> {
        self.request(|reply| Command::Logs { peer, req, reply })
            .await
    }

    pub async fn respond_logs(
        &self,
        channel: ResponseChannel<LogResponse>,
        resp: LogResponse,
    ) -> Result<(), NetError> {
        self.send(Command::RespondLogs { channel, resp }).await
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::Dial(addr)).await
    }

    /// Disconnects `peer` and refuses it from now on (until this daemon restarts): its
    /// connections, and gossip it authored, whoever relays it.
    pub async fn ban(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Ban(peer)).await
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ListenAddrs(reply)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }
}

/// Most publishes kept while no peer is subscribed; the oldest go first (sync repairs them).
const MAX_QUEUED_PUBLISHES: usize = 512;

struct EventLoop {
    swarm: Swarm<Behaviour>,
    /// Signs what this peer publishes ([`GossipMsg::seal`]).
    keypair: Keypair,
    mesh_id: String,
    commands: mpsc::Receiver<Command>,
    self_tx: mpsc::WeakSender<Command>,
    events: mpsc::Sender<NetEvent>,
    blob_server: Arc<dyn BlobServer>,
    pending_sync: requests::Pending<SyncResponse>,
    pending_blob: requests::Pending<BlobResponse>,
    pending_key: requests::Pending<KeyRotationAck>,
    pending_logs: requests::Pending<LogResponse>,
    queued: VecDeque<GossipMsg>,
    listen_addrs: Vec<Multiaddr>,
    topics: HashMap<TopicHash, Topic>,
    stats: Arc<super::stats::GossipStats>,
}

/// Starts listening and spawns the event loop. Returns the client and the event stream.
pub fn spawn(
    mut swarm: Swarm<Behaviour>,
    keypair: Keypair,
    mesh_id: String,
    listen: &[Multiaddr],
    blob_server: Arc<dyn BlobServer>,
    cancel: CancellationToken,
) -> Result<
    (
        Client,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let mut topics = HashMap::new();
    for t in Topic::ALL {
        let topic = IdentTopic::new(t.name(&mesh_id));
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| format!("cannot subscribe to {topic}: {e}"))?;
        topics.insert(topic.hash(), t);
    }
    for addr in listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    let local_peer_id = *swarm.local_peer_id();
    let (tx, commands) = mpsc::channel(256);
    let (events_tx, events) = mpsc::channel(4096);
    let stats = Arc::new(super::stats::GossipStats::default());
    let event_loop = EventLoop {
        swarm,
        keypair,
        mesh_id,
        commands,
        self_tx: tx.downgrade(),
        events: events_tx,
        blob_server,
        pending_sync: HashMap::new(),
        pending_blob: HashMap::new(),
        pending_key: HashMap::new(),
        pending_logs: HashMap::new(),
        queued: VecDeque::new(),
        listen_addrs: Vec::new(),
        topics,
        stats: stats.clone(),
    };
    let handle = tokio::spawn(event_loop.run(cancel));
    let client = Client {
        tx,
        local_peer_id,
        stats,
    };
    Ok((client, events, handle))
}

impl EventLoop {
    async fn run(mut self, cancel: CancellationToken) {
        let mut retry = tokio::time::interval(Duration::from_secs(2));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = retry.tick() => self.flush_queue(),
            }
        }
        debug!("network loop stopped");
    }

    fn emit(&self, ev: NetEvent) {
        if let Err(e) = self.events.try_send(ev) {
            warn!("daemon is not keeping up with network events; dropped one: {e}");
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(msg) => self.publish(msg),
            Command::Sync { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, req);
                self.pending_sync.insert(id, reply);
            }
            Command::Blob { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().blob.send_request(&peer, req);
                self.pending_blob.insert(id, reply);
            }
            Command::RespondSync { channel, resp } => {
                requests::answer(&mut self.swarm.behaviour_mut().sync, channel, resp, "sync")
            }
            Command::RespondBlob { channel, resp } => {
                requests::answer(&mut self.swarm.behaviour_mut().blob, channel, resp, "blob")
            }
            Command::Key { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().key.send_request(&peer, req);
                self.pending_key.insert(id, reply);
            }
            Command::RespondKey { channel, ack } => requests::answer(
                &mut self.swarm.behaviour_mut().key,
                channel,
                ack,
                "key rotation",
            ),
            Command::Logs { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().logs.send_request(&peer, req);
                self.pending_logs.insert(id, reply);
            }
            Command::RespondLogs { channel, resp } => {
                requests::answer(&mut self.swarm.behaviour_mut().logs, channel, resp, "log")
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    debug!(%addr, "dial failed: {e}");
                }
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::Ban(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
    }

    fn publish(&mut self, msg: GossipMsg) {
        let topic = IdentTopic::new(msg.topic().name(&self.mesh_id));
        let bytes = msg.seal(&self.keypair);
        let len = bytes.len();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => self.stats.published(msg.topic(), len),
            Err(PublishError::Duplicate) => {}
            Err(e @ (PublishError::NoPeersSubscribedToTopic | PublishError::AllQueuesFull(_))) => {
                debug!(topic = ?msg.topic(), "publish deferred: {e}");
                if self.queued.len() >= MAX_QUEUED_PUBLISHES {
                    self.queued.pop_front();
                }
                self.queued.push_back(msg);
            }
            Err(e) => warn!("cannot publish: {e}"),
        }
    }

    fn flush_queue(&mut self) {
        for msg in std::mem::take(&mut self.queued) {
            self.publish(msg);
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.listen_addrs.push(address.clone());
                self.emit(NetEvent::ListenAddr(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                info!(peer = %peer_id, "connected");
                self.emit(NetEvent::PeerConnected(peer_id));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                info!(peer = %peer_id, "disconnected");
                self.emit(NetEvent::PeerDisconnected(peer_id));
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                warn!(peer = ?peer_id, "outgoing connection failed: {error}");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                warn!(from = %send_back_addr, "incoming connection failed (another mesh key?): {error}");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(ev) => self.on_gossip(ev),
            BehaviourEvent::Sync(ev) => self.on_sync(ev),
            BehaviourEvent::Blob(ev) => self.on_blob(ev),
            BehaviourEvent::Key(ev) => self.on_key(ev),
            BehaviourEvent::Logs(ev) => self.on_logs(ev),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs: Vec<Multiaddr> =
                    info.listen_addrs.into_iter().filter(is_dialable).collect();
                for a in &addrs {
                    self.swarm.add_peer_address(peer_id, a.clone());
                }
                self.emit(NetEvent::Identified {
                    peer: peer_id,
                    agent: info.agent_version,
                    addrs,
                });
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let me = *self.swarm.local_peer_id();
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    if peer != me {
                        by_peer.entry(peer).or_default().push(addr);
                    }
                }
                for (peer, addrs) in by_peer {
                    for a in &addrs {
                        self.swarm.add_peer_address(peer, a.clone());
                    }
                    // Both sides see each other at once; if both dialed, TCP port reuse can
                    // cross the two SYNs into one connection where both act as initiator and
                    // the handshake fails. So only the lower id dials now; the other side's
                    // periodic redial covers the case where that dial never comes.
                    if me < peer && !self.swarm.is_connected(&peer) {
                        debug!(%peer, "mDNS found a peer; dialing");
                        let _ = self.swarm.dial(peer);
                    }
                    self.emit(NetEvent::Discovered { peer, addrs });
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let banned =
                    |p: &PeerId| self.swarm.behaviour().blocked.blocked_peers().contains(p);
                let known_topic = self.topics.get(&message.topic).copied();
                let opened = GossipMsg::open(&message.data).and_then(|(author, m)| {
                    if Some(m.topic()) == known_topic {
                        Ok((author, m))
                    } else {
                        Err("message on the wrong topic".to_string())
                    }
                });
                let acceptance = match &opened {
                    // Its author lied before: not passed on, not believed.
                    Ok((author, _)) if banned(author) => MessageAcceptance::Ignore,
                    Ok(_) => MessageAcceptance::Accept,
                    Err(_) => MessageAcceptance::Reject,
                };
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                gs.report_message_validation_result(&message_id, &propagation_source, acceptance);
                match (opened, acceptance) {
                    (Ok((source, msg)), MessageAcceptance::Accept) => {
                        self.stats.received(msg.topic(), message.data.len());
                        self.emit(NetEvent::Gossip(Box::new(Gossip { source, msg })));
                    }
                    // Relays pass on only what they accepted: a message that does not open
                    // comes from the peer that sent it.
                    (Err(reason), _) => {
                        warn!(peer = %propagation_source, "rejected gossip: {reason}; disconnecting");
                        let _ = self.swarm.disconnect_peer_id(propagation_source);
                    }
                    _ => {}
                }
            }
            gossipsub::Event::Subscribed { peer_id, .. } => {
                debug!(peer = %peer_id, "peer subscribed");
                self.flush_queue();
            }
            _ => {}
        }
    }
}

/// Addresses worth dialing: TCP over IPv4/IPv6/DNS, not unspecified.
fn is_dialable(a: &Multiaddr) -> bool {
    let mut tcp = false;
    for p in a.iter() {
        match p {
            Protocol::Ip4(ip) if ip.is_unspecified() => return false,
            Protocol::Ip6(ip) if ip.is_unspecified() => return false,
            Protocol::Tcp(_) => tcp = true,
            _ => {}
        }
    }
    tcp
}

/// Shorthand used by the daemon to dedupe a peer's known addresses.
pub fn unique_addrs(addrs: impl IntoIterator<Item = Multiaddr>) -> Vec<Multiaddr> {
    let mut seen = HashSet::new();
    addrs
        .into_iter()
        .filter(|a| seen.insert(a.clone()))
        .collect()
}
