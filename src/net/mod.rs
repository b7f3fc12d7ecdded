//! The network adapter: a private libp2p swarm per mesh.
//!
//! - [`swarm`]: transport (TCP + pnet + noise + yamux) and behaviours (gossipsub,
//!   request-response for sync and blobs, identify, ping, mDNS).
//! - [`node`]: the event loop that owns the swarm, and its [`node::Client`] handle.
//! - [`wire`]: every message on the wire. [`codec`]: length-prefixed postcard framing.
//! - [`ticket`]: invite tickets carrying the mesh key.

pub mod codec;
pub mod limits;
pub mod node;
pub mod stats;
pub mod swarm;
pub mod ticket;
pub mod wire;

pub use node::{BlobServer, Client, NetError, NetEvent};
pub use ticket::{CurrentKey, MeshKey, Ticket, TicketError};
pub use wire::{
    BlobRequest, BlobResponse, GossipMsg, HaveProject, Heartbeat, InFlight, KeyRotation,
    KeyRotationAck, LogRequest, LogResponse, SyncRequest, SyncResponse, Topic,
};
