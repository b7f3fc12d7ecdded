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
    /// The data dir, symbolic links resolved: it holds this daemon's keys, and no file in it
    /// is sent with a job.
    pub data_dir: PathBuf,
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
            Some(found) => listed_by_submitter(found, &scene).map_err(bad)?,
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
    // them to every renderer.
    if let Some(e) = in_data_dir(&ctx.env.data_dir, &scene, &plan.files, &deps) {
        return Err(bad(e));
    }
    let require_blender = req
        .require_blender
        .or_else(|| newest.map(|((a, b), _)| format!("{a}.{b}+")));

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
    let project = tokio::task::spawn_blocking(move || import_project(&store, &plan2))
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

/// A file list the submitting Blender made ([`SubmitRequest::listed`]), if it is one of
/// `scene` by a Blender that says its version.
fn listed_by_submitter(
    found: crate::render::discover::Discovery,
    scene: &Path,
) -> Result<crate::render::discover::Discovery, String> {
    if !BlenderReq::AtLeast(0, 0).admits(&found.blender) {
        return Err(format!(
            "the file list sent with the job names no Blender version ({:?}): update the \
             meshd add-on",
            found.blender
        ));
    }
    let walked = found.scene.as_deref().map(std::fs::canonicalize);
    match walked {
        Some(Ok(walked)) if walked == scene => Ok(found),
        _ => Err(format!(
            "the file list sent with the job is not of {} (it lists {}): save the file and \
             submit again",
            scene.display(),
            found.scene.as_deref().unwrap_or("no file")
        )),
    }
}

/// Why a job must not be made of `files` (the project plan's, the scene among them): one
/// of them lies inside `data_dir` once symbolic links are followed, or is one of its files
/// under another name (a hard link). `None` when none does (a file that cannot be resolved
/// counts as outside: reading it fails later anyway).
fn in_data_dir(
    data_dir: &Path,
    scene: &Path,
    files: &[(String, PathBuf)],
    deps: &[crate::transfer::project::Dependency],
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // The keys, the token, the mesh id: the data dir's own files.
    let own: std::collections::HashSet<(u64, u64)> = std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let dir = data_dir.display();
    files.iter().find_map(|(_, path)| {
        let real = std::fs::canonicalize(path).ok()?;
        let linked = std::fs::metadata(&real).is_ok_and(|m| own.contains(&(m.dev(), m.ino())));
        if !real.starts_with(data_dir) && !linked {
            return None;
        }
        Some(if path == scene {
            format!(
                "the scene {} is one of this daemon's own files (its data dir {dir} holds its \
                 keys): meshd sends none of them; copy the project out of it and submit the copy",
                path.display()
            )
        } else {
            let owner = deps
                .iter()
                .find(|d| Path::new(&d.path) == path)
                .map_or_else(|| "the scene".to_string(), |d| d.owner.clone());
            format!(
                "{owner} names {}, one of this daemon's own files (its data dir {dir} holds its \
                 keys): meshd sends none of them; point it at a file outside {dir}",
                path.display()
            )
        })
    })
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
) -> Result<ImportedProject, String> {
    use crate::transfer::project::{ProjectFile, ProjectManifest};
    let mut files = Vec::with_capacity(plan.files.len());
    let mut pins = Vec::with_capacity(plan.files.len() + 1);
    for (rel, abs) in &plan.files {
        let (blob, pin) = store
            .import_copy_pinned(abs)
            .map_err(|e| format!("cannot read {}: {e}", abs.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::discover::Discovery;

    fn listing(blender: &str, scene: Option<&Path>) -> Discovery {
        Discovery {
            blender: blender.into(),
            scene: scene.map(|p| p.to_str().unwrap().to_string()),
            deps: vec![],
            errors: vec![],
            sizes: vec![],
            active: None,
        }
    }

    #[test]
    fn a_listing_counts_only_for_its_own_file_and_a_blender_version() {
        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("shot.blend");
        let other = dir.path().join("other.blend");
        std::fs::write(&shot, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let shot = std::fs::canonicalize(&shot).unwrap();
        assert!(listed_by_submitter(listing("4.3.0", Some(&shot)), &shot).is_ok());
        let e = listed_by_submitter(listing("4.3.0", Some(&other)), &shot).unwrap_err();
        assert!(e.contains("is not of") && e.contains("other.blend"), "{e}");
        let e = listed_by_submitter(listing("4.3.0", None), &shot).unwrap_err();
        assert!(e.contains("no file"), "{e}");
        let e = listed_by_submitter(listing("Blender", Some(&shot)), &shot).unwrap_err();
        assert!(e.contains("names no Blender version"), "{e}");
    }

    #[test]
    fn files_in_the_data_dir_are_named_with_what_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("identity.key"), b"secret").unwrap();
        let data = std::fs::canonicalize(&data).unwrap();
        let shot = dir.path().join("shot.blend");
        std::fs::write(&shot, b"x").unwrap();
        let link = dir.path().join("wood.png");
        std::os::unix::fs::symlink(data.join("identity.key"), &link).unwrap();
        let dep = crate::transfer::project::Dependency {
            path: link.to_str().unwrap().into(),
            raw: "//wood.png".into(),
            owner: "Image \"Wood\"".into(),
            kind: "image".into(),
            exists: true,
        };
        let files = vec![("shot.blend".into(), shot.clone())];
        assert_eq!(in_data_dir(&data, &shot, &files, &[]), None);
        let with_link = vec![files[0].clone(), ("wood.png".into(), link.clone())];
        let e = in_data_dir(&data, &shot, &with_link, std::slice::from_ref(&dep)).unwrap();
        assert!(
            e.starts_with("Image \"Wood\" names") && e.contains("data dir"),
            "{e}"
        );
        // A hard link to the key, outside the data dir, is the key all the same.
        let hard = dir.path().join("hard.png");
        std::fs::hard_link(data.join("identity.key"), &hard).unwrap();
        let e = in_data_dir(&data, &shot, &[("hard.png".into(), hard)], &[]);
        assert!(e.unwrap().contains("one of this daemon's own files"));
        let inside = data.join("shot.blend");
        std::fs::write(&inside, b"x").unwrap();
        let e = in_data_dir(
            &data,
            &inside,
            &[("shot.blend".into(), inside.clone())],
            &[],
        );
        assert!(e.unwrap().starts_with("the scene"));
    }
}
