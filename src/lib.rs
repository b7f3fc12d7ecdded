//! meshd: a peer-to-peer render mesh for Blender.
//!
//! Every machine runs the same daemon; the daemons form one private libp2p swarm, share jobs
//! and frame claims through gossip and a CRDT ledger, fetch scenes by content hash, render
//! with their local Blender, and send finished frames back to the submitter.
//! See `docs/architecture.md` for the big picture.

pub mod api;
pub mod cli;
pub mod cloud;
pub mod daemon;
pub mod ids;
pub mod ledger;
pub mod net;
pub mod render;
pub mod store;
pub mod transfer;
