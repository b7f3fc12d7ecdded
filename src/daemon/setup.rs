//! Start-up: the data dir, identity, mesh key, store and network, before the loop runs.
//!
//! Data dir layout: `identity.key` (libp2p keypair, protobuf), `mesh.key` (hex pre-shared key),
//! `mesh.id` (the mesh's id, which outlives key rotations),
//! `api.json` (where the running daemon's API listens, with its token), `db/` (sled),
//! `blobs/` (content-addressed files), `work/` (per-job Blender dirs and scratch).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DaemonConfig;
use crate::api::types::ApiEndpoint;
use crate::ledger::Ledger;
use crate::net::{Client, CurrentKey, MeshKey, NetEvent};
use crate::render::Sandbox;
use crate::store::Store;

pub const API_FILE: &str = "api.json";
const IDENTITY_FILE: &str = "identity.key";
const MESH_KEY_FILE: &str = "mesh.key";
const MESH_ID_FILE: &str = "mesh.id";
/// Fingerprints of keys this data dir used before a rotation, one hex line each.
const RETIRED_KEYS_FILE: &str = "mesh.retired";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Identity(String),
    #[error("data dir {0} belongs to another mesh; use a fresh --data-dir to join this one")]
    OtherMesh(PathBuf),
    #[error(
        "another meshd is already running with data dir {0}; stop it or use another --data-dir"
    )]
    AlreadyRunning(PathBuf),
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("network: {0}")]
    Net(String),
    #[error("cannot start the local API on {addr}: {source}")]
    ApiBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] crate::render::sandbox::SandboxError),
}

/// The sandbox this daemon's Blenders run in (none when it does not render), with a
/// warning when they run unconfined.
pub(super) async fn sandbox(cfg: &DaemonConfig) -> Result<Sandbox, DaemonError> {
    if !cfg.render || cfg.simulate_render.is_some() {
        return Ok(Sandbox::Off);
    }
    let data_dir = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    let scratch = data_dir.join("tmp");
    let sandbox = Sandbox::detect(
        cfg.no_sandbox,
        vec![data_dir],
        cfg.sandbox_read.clone(),
        &scratch,
    )
    .await?;
    match &sandbox {
        Sandbox::Bwrap(b) => {
            tracing::info!(bwrap = %b.program.display(), "Blender runs in a bubblewrap sandbox")
        }
        Sandbox::Off if cfg.no_sandbox => tracing::warn!(
            "--no-sandbox: Blender runs unconfined, with this user's files and network; a scene from any mesh member can read and write what this user can"
        ),
        Sandbox::Off => tracing::warn!(
            "bubblewrap is not installed: Blender runs unconfined, with this user's files and network; install it (apt install bubblewrap), or pass --no-sandbox to accept this"
        ),
    }
    Ok(sandbox)
}

pub(super) struct Boot {
    pub key: CurrentKey,
    /// The mesh's id: it names the gossip topics and stays when the key is rotated.
    pub mesh_id: String,
    /// This peer's identity: it signs every ledger entry this peer makes.
    pub identity: Keypair,
    pub store: Store,
    pub incarnation: u64,
    pub ledger: Ledger,
    pub net: Client,
    pub events: mpsc::Receiver<NetEvent>,
    pub api_listener: tokio::net::TcpListener,
    pub token: String,
    pub dial: Vec<Multiaddr>,
}

/// The platform's data dir for meshd (e.g. `~/.local/share/meshd`).
pub fn data_dir_default() -> PathBuf {
    directories::ProjectDirs::from("", "", "meshd")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".meshd"))
}

/// Where the daemon of `data_dir` listens, if one is running.
pub fn read_endpoint(data_dir: &Path) -> Option<ApiEndpoint> {
    let bytes = std::fs::read(data_dir.join(API_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file only the owner can read (keys, tokens), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// The data dir holds the identity, the mesh key and every job's files: only its owner may
/// enter it. A wider mode (an old version, a umask of 022) is narrowed, with a warning.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            "data dir {} was open to other users (mode {mode:o}): now 0700",
            dir.display()
        );
    }
    Ok(())
}

/// Whether `dir` already belongs to a mesh (its key is there).
pub fn has_mesh(dir: &Path) -> bool {
    dir.join(MESH_KEY_FILE).exists()
}

fn load_identity(dir: &Path) -> Result<Keypair, DaemonError> {
    let path = dir.join(IDENTITY_FILE);
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| DaemonError::Identity(format!("{} is damaged: {e}", path.display())));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| DaemonError::Identity(e.to_string()))?;
    write_private(&path, &bytes).map_err(io_err(&path))?;
    Ok(key)
}

/// The mesh key and id: the ticket's (its mesh must be the stored one; a ticket of the same
/// mesh with another key means the key was rotated while this peer was away), the stored
/// ones, or new ones.
fn load_mesh(
    dir: &Path,
    ticket: Option<&crate::net::Ticket>,
) -> Result<(MeshKey, String), DaemonError> {
    let path = dir.join(MESH_KEY_FILE);
    let id_path = dir.join(MESH_ID_FILE);
    let damaged = |p: &Path| {
        DaemonError::Identity(format!(
            "{} is damaged; remove it to found a new mesh",
            p.display()
        ))
    };
    let stored = if path.exists() {
        let s = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Some(MeshKey::from_hex(&s).ok_or_else(|| damaged(&path))?)
    } else {
        None
    };
    let stored_id = if id_path.exists() {
        let s = std::fs::read_to_string(&id_path).map_err(io_err(&id_path))?;
        let s = s.trim().to_string();
        if !crate::net::ticket::is_mesh_id(&s) {
            return Err(damaged(&id_path));
        }
        Some(s)
    } else {
        // Data dirs from before key rotation: the id is the key's.
        stored.map(|k| k.mesh_id())
    };
    let (key, id) = match (stored, stored_id, ticket) {
        (_, Some(id), Some(t)) if id != t.mesh => {
            return Err(DaemonError::OtherMesh(dir.to_path_buf()));
        }
        (Some(s), Some(id), Some(t)) if s != t.key && is_retired(dir, &t.key) => {
            tracing::warn!(
                "the ticket holds a key this mesh retired in a rotation: using the current key (`meshd invite` prints a current ticket)"
            );
            (s, id)
        }
        (Some(s), Some(id), Some(t)) if s != t.key => {
            tracing::warn!(
                "the ticket holds a newer key of this mesh (rotated while this peer was away): using it"
            );
            (t.key, id)
        }
        (Some(s), Some(id), _) => (s, id),
        (_, _, Some(t)) => (t.key, t.mesh.clone()),
        (_, _, None) => {
            let k = MeshKey::generate();
            (k, k.mesh_id())
        }
    };
    if stored != Some(key) {
        store_mesh_key(dir, key, stored)?;
    }
    if !id_path.exists() {
        write_private(&id_path, id.as_bytes()).map_err(io_err(&id_path))?;
    }
    Ok((key, id))
}

/// Persists the mesh key (after a rotation: the next start uses it). The key it replaces,
/// if any, is remembered as retired, so that a stale ticket (in a config file, say) does
/// not bring it back.
pub(super) fn store_mesh_key(
    dir: &Path,
    key: MeshKey,
    replaced: Option<MeshKey>,
) -> Result<(), DaemonError> {
    let path = dir.join(MESH_KEY_FILE);
    if let Some(old) = replaced.filter(|old| *old != key) {
        let retired = dir.join(RETIRED_KEYS_FILE);
        let mut list = std::fs::read_to_string(&retired).unwrap_or_default();
        list.push_str(&fingerprint(&old));
        list.push('\n');
        write_private(&retired, list.as_bytes()).map_err(io_err(&retired))?;
    }
    write_private(&path, key.to_hex().as_bytes()).map_err(io_err(&path))
}

/// A key's fingerprint for [`RETIRED_KEYS_FILE`] (not the key: the file need not be secret).
fn fingerprint(key: &MeshKey) -> String {
    hex::encode(blake3::derive_key("meshd retired mesh key v1", &key.0))
}

fn is_retired(dir: &Path, key: &MeshKey) -> bool {
    let fp = fingerprint(key);
    std::fs::read_to_string(dir.join(RETIRED_KEYS_FILE))
        .is_ok_and(|list| list.lines().any(|l| l.trim() == fp))
}

pub(super) async fn boot(
    cfg: &DaemonConfig,
    cancel: CancellationToken,
) -> Result<Boot, DaemonError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    make_private(dir).map_err(io_err(dir))?;
    let keypair = load_identity(dir)?;
    let (key, mesh_id) = load_mesh(dir, cfg.ticket.as_ref())?;
    let key = CurrentKey::new(key);
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(crate::store::StoreError::Db(sled::Error::Io(e)))
            if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
        {
            return Err(DaemonError::AlreadyRunning(dir.clone()));
        }
        Err(e) => return Err(e.into()),
    };
    let incarnation = store.next_incarnation()?;
    let ledger = store.load_ledger()?;
    let _ = std::fs::remove_dir_all(dir.join("blobs/tmp"));
    std::fs::create_dir_all(dir.join("blobs/tmp")).map_err(io_err(dir))?;

    let agent = format!("meshd/{}", env!("CARGO_PKG_VERSION"));
    let heartbeat = if cfg.lease < Duration::from_secs(10) {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    let identity = keypair.clone();
    let swarm = crate::net::swarm::build(keypair, key.clone(), cfg.mdns, agent, heartbeat)
        .map_err(|e| DaemonError::Net(e.to_string()))?;
    let server: Arc<dyn crate::net::BlobServer> = Arc::new(store.clone());
    let (net, events, _handle) = crate::net::node::spawn(
        swarm,
        identity.clone(),
        mesh_id.clone(),
        &cfg.listen,
        server,
        cancel,
    )
    .map_err(DaemonError::Net)?;

    let api_listener = tokio::net::TcpListener::bind(cfg.api)
        .await
        .map_err(|source| DaemonError::ApiBind {
            addr: cfg.api,
            source,
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| DaemonError::ApiBind {
            addr: cfg.api,
            source,
        })?;
    let token = hex::encode(rand::random::<[u8; 16]>());
    let endpoint = ApiEndpoint {
        addr: api_addr.to_string(),
        token: token.clone(),
        pid: std::process::id(),
        peer_id: net.local_peer_id().to_string(),
    };
    let api_path = dir.join(API_FILE);
    let json = serde_json::to_vec_pretty(&endpoint).unwrap_or_default();
    write_private(&api_path, &json).map_err(io_err(&api_path))?;

    let mut dial: Vec<Multiaddr> = cfg.peers.clone();
    if let Some(t) = &cfg.ticket {
        dial.extend(t.multiaddrs());
    }
    Ok(Boot {
        key,
        mesh_id,
        identity,
        store,
        incarnation,
        ledger,
        net,
        events,
        api_listener,
        token,
        dial,
    })
}
