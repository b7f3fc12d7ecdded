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
    /// `meshd retry`: the job's failed frames again, as a new job (the answer names it).
    Retry,
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
    /// The scene's files as the submitting Blender found them (the add-on walks the open
    /// file with meshd's own walker, `project.py`): used instead of running this daemon's
    /// Blender, which may be older than the artist's, or absent.
    #[serde(default)]
    pub listed: Option<crate::render::discover::Discovery>,
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
    /// What this daemon's rented machines cost (absent when it rents none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudSpend>,
}

/// Spend on rented machines, over every rental `meshd cloud list` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloudSpend {
    /// Machines billed now.
    pub machines: usize,
    pub usd_per_hour: f64,
    pub spent_usd: f64,
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
    /// Bytes this peer received from other peers for the job: its project, frames and
    /// thumbnails.
    #[serde(default)]
    pub bytes_moved: u64,
    /// Over and archived: only the counts are kept (`frames` is empty).
    #[serde(default)]
    pub archived: bool,
    /// US dollars spent so far on machines this daemon rented for the job (`submit
    /// --cloud`); `None` when it rented none.
    #[serde(default)]
    pub cost_usd: Option<f64>,
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
    /// Blob id of the renderer's thumbnail of the frame (done frames whose renderer made
    /// one).
    #[serde(default)]
    pub thumb: Option<String>,
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
    /// Set when this daemon rents the peer's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rented: Option<RentedPeer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteResponse {
    pub ticket: String,
    pub mesh_id: String,
}

/// `GET /v1/logs?job=SEL&frame=N`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogsQuery {
    pub job: String,
    pub frame: u32,
}

/// The Blender log of the last attempt at a frame, from the peer that made it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogsResponse {
    pub job: String,
    pub frame: u32,
    pub peer: String,
    pub lines: Vec<String>,
    /// The frame is being rendered now: the lines so far.
    #[serde(default)]
    pub live: bool,
}

/// `POST /v1/rotate-key`: a new mesh key for the peers that are here now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RotateKeyRequest {
    /// Peer ids that must not get the new key; they are disconnected.
    pub exclude: Vec<String>,
}

/// What a key rotation reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    pub mesh_id: String,
    /// A ticket with the new key, for machines to join from now on.
    pub ticket: String,
    /// Peers that took the new key from this daemon (others may get it passed on).
    pub switched: Vec<String>,
    /// Connected peers that did not take it, with why: they must join again with a new
    /// ticket.
    pub not_reached: Vec<(String, String)>,
    pub excluded: Vec<String>,
}

/// `POST /v1/cloud/rent`: machines to rent and join to the mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloudRentRequest {
    pub provider: crate::cloud::Provider,
    pub count: u32,
    /// Which machines; `spot` asks for interruptible ones (Vast bid, Clore spot).
    pub filter: crate::cloud::Filter,
    /// A spot bid for the whole machine, $/h (default: the offer's minimum plus 10%).
    pub bid_usd_per_hour: Option<f64>,
    /// Container image (default: the configured one).
    pub image: Option<String>,
    /// The port the provider maps for the node's daemon.
    pub node_port: u16,
    /// Release when this job (hex id) is over.
    pub job: Option<String>,
    /// Dollars the machines of this request may spend in all.
    pub budget_usd: Option<f64>,
    /// Release a machine after this long without a frame in flight.
    pub idle_release_secs: u64,
}

/// The answer to a rent: the rentals started (see `GET /v1/cloud` for their progress).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloudRentResponse {
    pub group: u64,
    pub rentals: Vec<u64>,
    /// Machines asked for but not started (the budget or the offers did not allow them).
    pub short_by: u32,
}

/// `POST /v1/cloud/release`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloudReleaseRequest {
    /// Rental ids, or provider instance ids.
    pub ids: Vec<u64>,
    pub group: Option<u64>,
    pub all: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloudReleaseResponse {
    pub released: Vec<u64>,
}

/// One rented machine, as `meshd cloud list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RentalInfo {
    pub id: u64,
    pub provider: crate::cloud::Provider,
    pub instance: Option<u64>,
    /// The offer (Vast) or server (Clore) it was rented from.
    pub offer: Option<u64>,
    /// Where its node's daemon answers from outside: `host:port`.
    pub node: Option<String>,
    pub phase: crate::cloud::rental::Phase,
    pub gpu: String,
    pub gpus: u32,
    pub usd_per_hour: f64,
    pub spent_usd: f64,
    pub spot: bool,
    pub peer: Option<String>,
    pub job: Option<String>,
    pub group: u64,
    pub budget_usd: Option<f64>,
    pub note: Option<String>,
}

/// `GET /v1/cloud`: what this daemon rents (and released lately).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloudListResponse {
    pub rentals: Vec<RentalInfo>,
    /// Machines billed now, $/h in all.
    pub usd_per_hour: f64,
    /// Spent on every listed rental.
    pub spent_usd: f64,
}

/// A peer this daemon rents: `meshd peers` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RentedPeer {
    pub provider: crate::cloud::Provider,
    pub instance: Option<u64>,
    pub usd_per_hour: f64,
}
