//! JSON bodies of the local control API. `meshd status --json` and `meshd peers --json` print
//! these directly, so field names are a stable interface for scripts: add, never rename.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ledger::JobState;
use crate::render::settings::RenderSettings;

/// Where the daemon's API listens; written to `<data dir>/api.json` at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiEndpoint {
    pub addr: String,
    pub token: String,
    pub pid: u32,
    pub peer_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// Absolute path of the .blend on the daemon's machine.
    pub path: PathBuf,
    pub frames: String,
    pub name: String,
    /// Absolute output directory.
    pub out_dir: PathBuf,
    pub settings: RenderSettings,
    pub priority: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub id: String,
    pub name: String,
    pub frames_total: usize,
    pub out_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    pub jobs: Vec<JobView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    /// "running", "done" or "failed".
    pub state: JobState,
    pub frames_total: usize,
    /// Frames with a verified result somewhere in the mesh.
    pub frames_done: usize,
    pub frames_in_flight: usize,
    pub frames_failed: usize,
    /// Results beyond the first for some frame (kept out of the output).
    pub duplicates: usize,
    pub submitter: String,
    pub created_unix_ms: u64,
    pub priority: i32,
    /// Set on the submitting daemon: where frames are written and how many are there.
    pub out_dir: Option<PathBuf>,
    pub frames_written: Option<usize>,
    /// Why the job failed (first few frame failures), when it did.
    pub failure: Option<String>,
    pub frames: Vec<FrameView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FrameView {
    pub frame: u32,
    /// "pending", "rendering", "done" or "failed".
    pub state: String,
    /// The peer that rendered it (done) or holds the claim (rendering).
    pub peer: Option<String>,
    pub render_ms: Option<u64>,
    /// While rendering: samples done and total, as the renderer last reported.
    pub samples_done: Option<u32>,
    pub samples_total: Option<u32>,
    /// Failure reasons so far, one per failed attempt.
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeersResponse {
    pub peers: Vec<PeerInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: String,
    /// This daemon.
    #[serde(rename = "self")]
    pub is_self: bool,
    pub connected: bool,
    pub addrs: Vec<String>,
    pub blender: Option<String>,
    pub render_device: Option<String>,
    pub can_render: bool,
    /// Canonical results this peer produced, over all known jobs.
    pub frames_rendered: usize,
    pub last_seen_secs: Option<u64>,
    /// Frames in flight as `<job>:<frame>`, with `samples a/b` when known.
    pub rendering: Vec<String>,
    /// Render devices the peer's Blender reports.
    pub devices: Vec<crate::render::DeviceInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteResponse {
    pub ticket: String,
    pub mesh_id: String,
}
