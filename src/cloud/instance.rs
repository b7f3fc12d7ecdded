//! A rented machine, in one shape for every provider, and what meshd asks for when renting.

use serde::{Deserialize, Serialize};

use super::Provider;

/// Where a rented machine stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "detail")]
pub enum InstanceState {
    /// Created; the image is loading or the container starting.
    Starting,
    /// Up, its ports mapped: reachable over SSH.
    Running,
    /// Stopped by the provider (a Vast bid that lost its GPU); it may come back.
    Stopped,
    /// Failed to start or broke; it will not come back by itself (still billed until
    /// destroyed).
    Failed(String),
    /// Destroyed or ended (a Clore spot order that was outbid).
    Gone,
}

/// A machine this mesh rents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub provider: Provider,
    /// Vast's instance (contract) id, Clore's order id.
    pub id: u64,
    /// The label meshd set (Vast); Clore orders carry none.
    pub label: Option<String>,
    /// The machine it runs on (Vast `machine_id`, Clore server id).
    pub machine: Option<u64>,
    pub state: InstanceState,
    /// Where its sshd answers, once running.
    pub ssh: Option<(String, u16)>,
    /// Where the node's daemon port (`--node-port`) is reachable from outside, once running.
    pub node: Option<(String, u16)>,
    /// The whole machine, US dollars per hour.
    pub usd_per_hour: Option<f64>,
    /// When it was created, Unix seconds.
    pub started_unix: Option<f64>,
}

/// What to rent: the image and ports every rented node needs.
#[derive(Clone, Debug, PartialEq)]
pub struct RentSpec {
    /// Container image; must run sshd (the providers inject it for their SSH run types).
    pub image: String,
    /// Marks instances as this mesh's (Vast label); `meshd-<mesh id>`.
    pub label: String,
    /// The port the node's daemon listens on inside the container; the provider maps it.
    pub node_port: u16,
    /// Public key allowed to log in as root.
    pub ssh_public_key: String,
    /// An interruptible bid, whole machine, $/h (Vast) — Clore takes it per day.
    pub bid_usd_per_hour: Option<f64>,
    pub disk_gb: u32,
}
