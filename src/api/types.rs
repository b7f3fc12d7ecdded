//! JSON bodies of the local control API. `meshd status --json` and `meshd peers --json` print
//! these directly, so field names are a stable interface for scripts: add, never rename.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ledger::JobState;
use crate::render::settings::RenderSettings;
use crate::transfer::project::Dependency;

/// Where the daemon's API listens; written to `<data dir>/api.json` at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiEndpoint {
    pub addr: String,
    pub token: String,
    pub pid: u32,
    pub peer_id: String,
}

/// What `POST /v1/control` does to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlAction {
    Cancel,
    Pause,
    Resume,
    Priority(i32),
    /// `meshd rm`: forget the job on this daemon.
    Remove,
}

/// `GET /v1/status` query: `?job=SEL&frames=all|active|none`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusQuery {
    /// Only the jobs this selects: an id, its first characters, or a name.
    pub job: Option<String>,
    /// Which frames to list per job (default: all).
    pub frames: Option<FramesQuery>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FramesQuery {
    All,
    /// Only the frames rendering now.
    Active,
    None,
}

/// `POST /v1/control` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlRequest {
    /// A job id, the first characters of one, or a job name.
    pub job: String,
    pub action: ControlAction,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlResponse {
    pub id: String,
    pub name: String,
    pub run: crate::ledger::RunState,
    pub priority: i32,
}

/// `POST /v1/fetch`: write a job's frames into `out_dir` on this machine, from whichever
/// peers hold them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    /// A job id, the first characters of one, or a job name.
    pub job: String,
    /// Absolute path on the daemon's machine.
    pub out_dir: PathBuf,
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
    /// Refuse the job when a dependency is missing.
    #[serde(default)]
    pub strict: bool,
    /// Send only the .blend: no dependency discovery (and no Blender needed here).
    #[serde(default)]
    pub no_deps: bool,
    /// Only peers whose Blender has this major.minor render the job.
    #[serde(default)]
    pub require_blender: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub id: String,
    pub name: String,
    pub frames_total: usize,
    pub out_dir: PathBuf,
    /// Files sent with the scene (the .blend included) and their total size.
    #[serde(default)]
    pub files: usize,
    #[serde(default)]
    pub bytes: u64,
    /// The project root on this machine: every file's path is relative to it.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// The Blender that found the dependencies (recorded in the job).
    #[serde(default)]
    pub blender: Option<String>,
    /// Dependencies that do not exist here: renderers will lack them too.
    #[serde(default)]
    pub missing: Vec<Dependency>,
    /// Anything else the user should know (no dependency discovery, datablocks not inspected).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl SubmitResponse {
    /// An answer naming the job only; the API fills in what discovery found.
    pub fn job(id: String, name: String, frames_total: usize, out_dir: PathBuf) -> Self {
        SubmitResponse {
            id,
            name,
            frames_total,
            out_dir,
            files: 0,
            bytes: 0,
            root: None,
            blender: None,
            missing: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// With `--strict`: the missing dependencies that made submit refuse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Dependency>,
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
    /// Why a running job is not moving: no live peer can render it.
    #[serde(default)]
    pub waiting: Option<String>,
    pub frames: Vec<FrameView>,
    /// The submitting machine's Blender, and the major.minor the job requires, if any.
    pub blender_version: Option<String>,
    pub require_blender: Option<String>,
    /// This peer's copy of the job's project.
    pub project: ProjectView,
    /// Over and archived: only the counts are kept (`frames` is empty).
    #[serde(default)]
    pub archived: bool,
}

/// Where this peer's copy of a job's project stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProjectView {
    /// "none" (not wanted here), "fetching", "ready" or "retrying".
    pub state: String,
    /// Files and bytes of the project, once its manifest is here.
    pub files: Option<usize>,
    pub bytes: Option<u64>,
    /// Bytes this peer received from other peers for this job's project.
    pub bytes_fetched: u64,
    /// Bytes it already held (earlier versions, other jobs, an interrupted fetch).
    pub bytes_reused: u64,
    /// Why the last fetch failed, while retrying.
    pub error: Option<String>,
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
    /// This daemon's gossip traffic since it started, per topic.
    #[serde(default)]
    pub gossip: Vec<crate::net::stats::TopicTraffic>,
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
