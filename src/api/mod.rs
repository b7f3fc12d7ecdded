//! The local control API: HTTP/JSON on loopback, for the CLI (and later a dashboard).
//!
//! Every request needs `Authorization: Bearer <token>`, the token the daemon writes to
//! `<data dir>/api.json` (readable only by its owner). Handlers turn requests into
//! [`crate::daemon::ApiRequest`]s for the daemon's loop; heavy work (importing a .blend)
//! happens here, off the loop.
//!
//! | method | path         | body / answer                                  |
//! |--------|--------------|------------------------------------------------|
//! | GET    | /v1/status   | [`types::StatusResponse`]                      |
//! | GET    | /v1/peers    | [`types::PeersResponse`]                       |
//! | GET    | /v1/invite   | [`types::InviteResponse`]                      |
//! | GET    | /v1/logs     | query `job`, `frame` → [`types::LogsResponse`] |
//! | POST   | /v1/rotate-key | [`types::RotateKeyRequest`] → [`types::RotateKeyResponse`] |
//! | POST   | /v1/jobs     | [`types::SubmitRequest`] → [`types::SubmitResponse`] |
//! | POST   | /v1/gc       | — → [`crate::store::gc::GcReport`]             |
//! | GET    | /v1/cloud    | [`types::CloudListResponse`]                   |
//! | POST   | /v1/cloud/rent | [`types::CloudRentRequest`] → [`types::CloudRentResponse`] |
//! | POST   | /v1/cloud/release | [`types::CloudReleaseRequest`] → [`types::CloudReleaseResponse`] |
//! | POST   | /v1/dashboard/login | → [`dashboard::LoginUrl`]: a one-time dashboard login |
//!
//! The dashboard's own routes (`/`, `/ui/...`) use a session cookie instead of the token:
//! see [`dashboard`].

mod cloud;
pub mod dashboard;
mod guard;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use crate::daemon::ApiRequest;
use crate::ledger::job::{BlenderReq, JOB_SPEC_VERSION};
use crate::ledger::{FrameSet, JobSpec};
use crate::store::Store;
use types::{
    ControlRequest, ControlResponse, ErrorBody, FetchRequest, InviteResponse, PeersResponse,
    StatusResponse, SubmitRequest, SubmitResponse,
};

struct Ctx {
    token: String,
    /// Where this API listens (the dashboard checks `Host` against it).
    addr: std::net::SocketAddr,
    dash: dashboard::Dashboard,
    tx: mpsc::Sender<ApiRequest>,
    store: Store,
    me: PeerId,
    env: SubmitEnv,
    cloud: crate::cloud::handle::CloudHandle,
}

/// What submit needs from the daemon's configuration.
#[derive(Clone, Debug)]
pub struct SubmitEnv {
    /// `--blender` of `meshd join` (else $BLENDER, else PATH): walks the scene's dependencies.
    pub blender: Option<PathBuf>,
    /// A private scratch directory (under the data dir).
    pub scratch: PathBuf,
    /// Directories no file of a job may come from: the data dir (this daemon's keys, token
    /// and database) and meshd's config dir (the cloud API keys).
    pub protected: Vec<PathBuf>,
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn err(status: StatusCode, msg: impl Into<String>) -> (StatusCode, Json<ErrorBody>) {
    (
        status,
        Json(ErrorBody {
            error: msg.into(),
            missing: Vec::new(),
        }),
    )
}

fn check_token(ctx: &Ctx, headers: &HeaderMap) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    let ok = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), ctx.token.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(err(StatusCode::UNAUTHORIZED, "missing or wrong API token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ask<T>(
    ctx: &Ctx,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Result<T, (StatusCode, Json<ErrorBody>)> {
    let (reply, rx) = oneshot::channel();
    ctx.tx.send(make(reply)).await.map_err(|_| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        )
    })?;
    rx.await.map_err(|_| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        )
    })
}

async fn status(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<types::StatusQuery>,
) -> ApiResult<StatusResponse> {
    check_token(&ctx, &headers)?;
    Ok(Json(ask(&ctx, |reply| ApiRequest::Status(q, reply)).await?))
}

async fn peers(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> ApiResult<PeersResponse> {
    check_token(&ctx, &headers)?;
    Ok(Json(ask(&ctx, ApiRequest::Peers).await?))
}

async fn invite(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> ApiResult<InviteResponse> {
    check_token(&ctx, &headers)?;
    ask(&ctx, ApiRequest::Invite)
        .await?
        .map(Json)
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, e))
}

async fn logs(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<types::LogsQuery>,
) -> ApiResult<types::LogsResponse> {
    check_token(&ctx, &headers)?;
    ask(&ctx, |reply| ApiRequest::Logs(q, reply))
        .await?
        .map(Json)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))
}

async fn rotate_key(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<types::RotateKeyRequest>,
) -> ApiResult<types::RotateKeyResponse> {
    check_token(&ctx, &headers)?;
    ask(&ctx, |reply| ApiRequest::RotateKey(req, reply))
        .await?
        .map(Json)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))
}

async fn gc(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
) -> ApiResult<crate::store::gc::GcReport> {
    check_token(&ctx, &headers)?;
    ask(&ctx, ApiRequest::Gc)
        .await?
        .map(Json)
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, e))
}

async fn control(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<ControlRequest>,
) -> ApiResult<ControlResponse> {
    check_token(&ctx, &headers)?;
    ask(&ctx, |reply| ApiRequest::Control(req, reply))
        .await?
        .map(Json)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))
}

async fn fetch(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<FetchRequest>,
) -> ApiResult<SubmitResponse> {
    check_token(&ctx, &headers)?;
    if !req.out_dir.is_absolute() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "the output dir must be an absolute path",
        ));
    }
    ask(&ctx, |reply| ApiRequest::Fetch(req, reply))
        .await?
        .map(Json)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))
}

async fn submit(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(mut req): Json<SubmitRequest>,
) -> ApiResult<SubmitResponse> {
    check_token(&ctx, &headers)?;
    let bad = |m: String| err(StatusCode::BAD_REQUEST, m);
    if !req.path.is_absolute() || !req.out_dir.is_absolute() {
        return Err(bad("scene and output paths must be absolute".into()));
    }
    let header = crate::render::check_blend_file(&req.path).map_err(|e| bad(e.to_string()))?;
    let frames: FrameSet = req
        .frames
        .parse()
        .map_err(|e: crate::ledger::FrameSetError| bad(e.to_string()))?;
    if let Some(v) = &req.require_blender
        && BlenderReq::parse(v).is_none()
    {
        return Err(bad(BlenderReq::parse_error(v)));
    }
    let scene = std::fs::canonicalize(&req.path)
        .map_err(|e| bad(format!("cannot resolve {}: {e}", req.path.display())))?;
    if scene.to_str().is_none() {
        return Err(bad(format!(
            "the scene's path {} is not valid UTF-8: rename it",
            scene.display()
        )));
    }

    // 1. What the scene needs, found by this machine's Blender, which must be at least as
    //    new as the one that saved the file.
    let too_old = |saver: Option<&((u16, u16), PathBuf)>, mine: &str| {
        let &((a, b), ref file) = saver?;
        (!BlenderReq::AtLeast(a, b).admits(mine)).then(|| {
            format!(
                "{} was saved by Blender {a}.{b}, newer than this machine's Blender {mine}, \
                 which cannot read it faithfully: install Blender {a}.{b} or newer here (or \
                 start `meshd join --blender PATH`), or submit with --no-deps",
                file.display()
            )
        })
    };
    let scene_saver = header.saved_by.map(|v| (v, req.path.clone()));
    let mut warnings = Vec::new();
    // `newest`: the newest Blender that saved the scene or a library it links, and that file.
    let (deps, blender, size, newest) = if req.no_deps {
        warnings.push(
            "--no-deps: only the .blend is sent; textures, linked libraries and caches it \
             needs will be missing on renderers"
                .to_string(),
        );
        (Vec::new(), None, None, scene_saver)
    } else {
        let found = match req.listed.take() {
            // Walked by the submitting Blender (the add-on), which has the file open.
            Some(found) => guard::listed_by_submitter(found, &scene).map_err(bad)?,
            None => discover_deps(&ctx.env, &scene).await.map_err(|(e, mine)| {
                let why = mine.and_then(|m| too_old(scene_saver.as_ref(), &m));
                bad(why.unwrap_or(e))
            })?,
        };
        // The scene and every library it links, read by this Blender.
        let newest = newest_saver(header, &req.path, &found.deps);
        if let Some(e) = too_old(newest.as_ref(), &found.blender) {
            return Err(bad(e));
        }
        warnings.extend(found.errors.iter().map(|e| format!("not inspected: {e}")));
        found
            .check_settings(
                req.settings.scene.as_deref(),
                req.settings.camera.as_deref(),
            )
            .map_err(bad)?;
        let size = found.output_size(req.settings.scene.as_deref(), req.settings.resolution_pct);
        (found.deps, Some(found.blender), size, newest)
    };
    let plan = crate::transfer::project::plan(&scene, &deps).map_err(|e| bad(e.to_string()))?;
    // A .blend may name any file as a texture: one that names this daemon's keys would send
    // them to every renderer. Checked by name here, with what needs the file, and again on
    // each file as it is read (`import_project`), whatever its name has come to point at.
    let protected = Arc::new(guard::Protected::new(&ctx.env.protected));
    if let Some(e) = protected.refusal(&scene, &plan.files, &deps) {
        return Err(bad(e));
    }
    // By default every frame of a job comes from one Blender series, the submitting
    // machine's: the one the artist sees the scene in (3.4 and 5.0 shade and sample
    // differently; frames of both would flicker in one shot). Without the walk, which names
    // that Blender, the newest that saved the files, or newer.
    let require_blender = req.require_blender.or_else(|| {
        let series = blender.as_deref().and_then(BlenderReq::series_of);
        let newest = newest.map(|((a, b), _)| BlenderReq::AtLeast(a, b));
        series.or(newest).map(BlenderReq::spec)
    });

    // 2. Missing files are named before anything is stored or sent.
    if req.strict && !plan.missing.is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorBody {
                error: format!(
                    "{} dependenc{} missing; nothing was submitted (fix the paths, or submit without --strict)",
                    plan.missing.len(),
                    if plan.missing.len() == 1 {
                        "y is"
                    } else {
                        "ies are"
                    }
                ),
                missing: plan.missing,
            }),
        ));
    }

    // 3. Every file into the store, then the project manifest.
    let store = ctx.store.clone();
    let plan2 = plan.clone();
    let project = tokio::task::spawn_blocking(move || import_project(&store, &plan2, &protected))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(bad)?;

    let spec = JobSpec {
        version: JOB_SPEC_VERSION,
        name: req.name,
        project: project.id,
        frames,
        settings: req.settings,
        submitter: ctx.me,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        priority: req.priority,
        blender_version: blender.clone(),
        require_blender,
        size,
        sig: Default::default(),
    };
    spec.validate().map_err(bad)?;
    let out_dir = req.out_dir;
    let mut resp = ask(&ctx, |reply| {
        ApiRequest::Submit(Box::new(spec), out_dir, reply)
    })
    .await?
    .map_err(bad)?;
    resp.files = project.files;
    resp.bytes = project.bytes;
    resp.root = Some(plan.root);
    resp.blender = blender;
    resp.missing = plan.missing;
    resp.warnings = warnings;
    Ok(Json(resp))
}

/// The newest Blender (MAJOR, MINOR) that saved the scene (`header`, of `scene`) or one of
/// its libraries, and that file: renderers need that Blender or newer, as an older one
/// cannot read the file faithfully.
fn newest_saver(
    header: crate::render::BlendHeader,
    scene: &Path,
    deps: &[crate::transfer::project::Dependency],
) -> Option<((u16, u16), PathBuf)> {
    let libraries = deps
        .iter()
        .filter(|d| d.kind == "library" && d.exists)
        .filter_map(|d| {
            let h = crate::render::check_blend_file(Path::new(&d.path)).ok()?;
            Some((h, PathBuf::from(&d.path)))
        });
    std::iter::once((header, scene.to_path_buf()))
        .chain(libraries)
        .filter_map(|(h, f)| Some((h.saved_by?, f)))
        .max_by_key(|(v, _)| *v)
}

/// Runs the dependency walk in this machine's Blender. An error says what failed, and the
/// version of the Blender that failed when it said.
async fn discover_deps(
    env: &SubmitEnv,
    scene: &std::path::Path,
) -> Result<crate::render::discover::Discovery, (String, Option<String>)> {
    let blender = crate::render::find_blender(env.blender.as_deref()).map_err(|e| {
        let e = format!(
            "this daemon has no Blender to find the files the scene needs ({e}); install \
             Blender (or start `meshd join --blender PATH`), or submit with --no-deps to send \
             only the .blend"
        );
        (e, None)
    })?;
    let work = env
        .scratch
        .join(format!("discover-{:016x}", rand::random::<u64>()));
    let result = crate::render::discover::discover(&blender, scene, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result.map_err(|e| {
        let mine = e.blender().map(String::from);
        (format!("cannot list the scene's dependencies: {e}"), mine)
    })
}

struct ImportedProject {
    /// The files and the manifest, kept from collections until the job is in the ledger
    /// (dropped when the submit handler returns, after the daemon added the job).
    _pins: Vec<crate::store::Pin>,
    id: crate::ids::BlobId,
    files: usize,
    bytes: u64,
}

/// Copies every planned file into the store and stores the project manifest.
fn import_project(
    store: &Store,
    plan: &crate::transfer::project::ProjectPlan,
    protected: &guard::Protected,
) -> Result<ImportedProject, String> {
    use crate::transfer::project::{ProjectFile, ProjectManifest};
    let mut files = Vec::with_capacity(plan.files.len());
    let mut pins = Vec::with_capacity(plan.files.len() + 1);
    for (rel, abs) in &plan.files {
        let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", abs.display());
        let mut file = std::fs::File::open(abs).map_err(|e| cannot(&e))?;
        if protected.holds_file(&file) {
            return Err(format!(
                "{} is one of this daemon's own files (it holds keys): meshd sends none of them",
                abs.display()
            ));
        }
        let (blob, pin) = store
            .import_open_pinned(&mut file)
            .map_err(|e| cannot(&e))?;
        pins.push(pin);
        let size = store.manifest(&blob).map(|m| m.size).unwrap_or(0);
        files.push(ProjectFile {
            path: rel.clone(),
            blob,
            size,
        });
    }
    let root = plan
        .root
        .to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", plan.root.display()))?
        .to_string();
    let manifest =
        ProjectManifest::new(root, plan.scene.clone(), files).map_err(|e| e.to_string())?;
    let (id, pin) = store
        .import_bytes_pinned(&manifest.encode())
        .map_err(|e| format!("cannot store the project manifest: {e}"))?;
    pins.push(pin);
    Ok(ImportedProject {
        _pins: pins,
        id,
        files: manifest.files.len(),
        bytes: manifest.total_size(),
    })
}

/// Serves the API on `listener` until the returned task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    tx: mpsc::Sender<ApiRequest>,
    store: Store,
    me: PeerId,
    env: SubmitEnv,
    cloud: crate::cloud::handle::CloudHandle,
) -> tokio::task::JoinHandle<()> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let ctx = Arc::new(Ctx {
        token,
        addr,
        dash: dashboard::Dashboard::default(),
        tx,
        store,
        me,
        env,
        cloud,
    });
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/invite", get(invite))
        .route("/v1/rotate-key", post(rotate_key))
        .route("/v1/logs", get(logs))
        .route("/v1/jobs", post(submit))
        .route("/v1/gc", post(gc))
        .route("/v1/fetch", post(fetch))
        .route("/v1/control", post(control))
        .route("/v1/cloud", get(cloud::list))
        .route("/v1/cloud/rent", post(cloud::rent))
        .route("/v1/cloud/release", post(cloud::release))
        .merge(dashboard::routes())
        .with_state(ctx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("local API stopped: {e}");
        }
    })
}
