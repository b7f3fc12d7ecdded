//! Building the libp2p swarm: TCP + pnet (the mesh key) + noise + yamux, and the behaviours.

use std::time::Duration;

use libp2p::core::upgrade;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, Transport, gossipsub, identify, mdns, noise, ping,
    request_response, tcp, yamux,
};

use super::codec::PostcardCodec;
use super::ticket::CurrentKey;
use super::wire::{
    BlobRequest, BlobResponse, KeyRotation, KeyRotationAck, LogRequest, LogResponse,
    MAX_GOSSIP_BYTES, SyncRequest, SyncResponse,
};

pub const SYNC_PROTOCOL: &str = "/meshd/sync/1";
pub const BLOB_PROTOCOL: &str = "/meshd/blob/3";
pub const IDENTIFY_PROTOCOL: &str = "/meshd/id/1";
pub const KEY_PROTOCOL: &str = "/meshd/key/1";
pub const LOGS_PROTOCOL: &str = "/meshd/logs/1";

/// Limits on request-response bodies. A chunk is at most 1 MiB (see `transfer::chunk`).
const MAX_SYNC_REQUEST: usize = 4 * 1024 * 1024;
const MAX_SYNC_RESPONSE: usize = 64 * 1024 * 1024;
const MAX_BLOB_REQUEST: usize = 1024;
const MAX_BLOB_RESPONSE: usize = 4 * 1024 * 1024;
const MAX_KEY_REQUEST: usize = 16 * 1024;
const MAX_KEY_RESPONSE: usize = 1024;
const MAX_LOGS_REQUEST: usize = 256;
const MAX_LOGS_RESPONSE: usize = 512 * 1024;

pub type SyncCodec = PostcardCodec<SyncRequest, SyncResponse>;
pub type BlobCodec = PostcardCodec<BlobRequest, BlobResponse>;
pub type KeyCodec = PostcardCodec<KeyRotation, KeyRotationAck>;
pub type LogsCodec = PostcardCodec<LogRequest, LogResponse>;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub gossipsub: gossipsub::Behaviour,
    pub sync: request_response::Behaviour<SyncCodec>,
    pub blob: request_response::Behaviour<BlobCodec>,
    pub key: request_response::Behaviour<KeyCodec>,
    pub logs: request_response::Behaviour<LogsCodec>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub limits: libp2p::connection_limits::Behaviour,
    pub per_ip: super::limits::PerIp,
    /// Peers that lied (`Client::ban`): refused and disconnected.
    pub blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("could not set up the transport: {0}")]
    Transport(String),
    #[error("could not set up the network behaviour: {0}")]
    Behaviour(String),
}

/// A request-response behaviour speaking `name` both ways.
fn protocol<C>(
    codec: C,
    name: &'static str,
    cfg: request_response::Config,
) -> request_response::Behaviour<C>
where
    C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
{
    request_response::Behaviour::with_codec(
        codec,
        [(
            StreamProtocol::new(name),
            request_response::ProtocolSupport::Full,
        )],
        cfg,
    )
}

/// Builds the swarm for one mesh. Each new connection uses the mesh key `mesh_key` holds at that
/// moment. `gossip_heartbeat` is gossipsub's heartbeat interval.
pub fn build(
    keypair: Keypair,
    mesh_key: CurrentKey,
    mdns_enabled: bool,
    agent: String,
    gossip_heartbeat: Duration,
) -> Result<Swarm<Behaviour>, BuildError> {
    let builder = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| {
                        PnetConfig::new(PreSharedKey::new(mesh_key.get().0)).handshake(socket)
                    })
                    .upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20)),
            )
        })
        .map_err(|e| BuildError::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| BuildError::Transport(e.to_string()))?;

    let builder = builder
        .with_behaviour(|key| {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(gossip_heartbeat)
                .mesh_n(4)
                .mesh_n_low(2)
                .mesh_n_high(8)
                .mesh_outbound_min(1)
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .validate_messages()
                .flood_publish(false)
                // A content id: the data holds the author and its signature
                // (`wire::Envelope`), so two peers' equal messages differ.
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes()[..20].to_vec())
                })
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(
                // Signed and checked once per message by meshd itself (`wire::Envelope`).
                gossipsub::MessageAuthenticity::Anonymous,
                gossip_cfg,
            )?;
            let sync = protocol(
                SyncCodec::new(MAX_SYNC_REQUEST, MAX_SYNC_RESPONSE),
                SYNC_PROTOCOL,
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            );
            let blob = protocol(
                BlobCodec::new(MAX_BLOB_REQUEST, MAX_BLOB_RESPONSE),
                BLOB_PROTOCOL,
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(64),
            );
            let short = || {
                request_response::Config::default().with_request_timeout(Duration::from_secs(10))
            };
            let key_rotation = protocol(
                KeyCodec::new(MAX_KEY_REQUEST, MAX_KEY_RESPONSE),
                KEY_PROTOCOL,
                short(),
            );
            let logs = protocol(
                LogsCodec::new(MAX_LOGS_REQUEST, MAX_LOGS_RESPONSE),
                LOGS_PROTOCOL,
                short(),
            );
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(agent.clone()),
            );
            let ping = ping::Behaviour::new(ping::Config::new());
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                sync,
                blob,
                key: key_rotation,
                logs,
                identify,
                ping,
                mdns: Toggle::from(mdns),
                limits: super::limits::libp2p_limits(),
                per_ip: super::limits::PerIp::default(),
                blocked: Default::default(),
            })
        })
        .map_err(|e| BuildError::Behaviour(e.to_string()))?;

    Ok(builder
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}
