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
//! | POST   | /v1/jobs     | [`types::SubmitRequest`] → [`types::SubmitResponse`] |

pub mod types;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use crate::daemon::ApiRequest;
use crate::ledger::{FrameSet, JobSpec, job::JOB_SPEC_VERSION};
use crate::store::Store;
use types::{
    ErrorBody, InviteResponse, PeersResponse, StatusResponse, SubmitRequest, SubmitResponse,
};

struct Ctx {
    token: String,
    tx: mpsc::Sender<ApiRequest>,
    store: Store,
    me: PeerId,
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn err(status: StatusCode, msg: impl Into<String>) -> (StatusCode, Json<ErrorBody>) {
    (status, Json(ErrorBody { error: msg.into() }))
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

async fn status(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> ApiResult<StatusResponse> {
    check_token(&ctx, &headers)?;
    Ok(Json(ask(&ctx, ApiRequest::Status).await?))
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

async fn submit(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<SubmitResponse> {
    check_token(&ctx, &headers)?;
    let bad = |m: String| err(StatusCode::BAD_REQUEST, m);
    if !req.path.is_absolute() || !req.out_dir.is_absolute() {
        return Err(bad("scene and output paths must be absolute".into()));
    }
    crate::render::check_blend_file(&req.path).map_err(|e| bad(e.to_string()))?;
    let frames: FrameSet = req
        .frames
        .parse()
        .map_err(|e: crate::ledger::FrameSetError| bad(e.to_string()))?;
    let scene_file = req
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .map(str::to_string)
        .ok_or_else(|| bad("the scene's file name must be valid UTF-8".into()))?;
    let store = ctx.store.clone();
    let path = req.path.clone();
    let scene = tokio::task::spawn_blocking(move || store.import_copy(&path))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| bad(format!("cannot read {}: {e}", req.path.display())))?;
    let spec = JobSpec {
        version: JOB_SPEC_VERSION,
        name: req.name,
        scene,
        scene_file,
        frames,
        settings: req.settings,
        submitter: ctx.me,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        priority: req.priority,
    };
    spec.validate().map_err(bad)?;
    let out_dir = req.out_dir;
    ask(&ctx, |reply| {
        ApiRequest::Submit(Box::new(spec), out_dir, reply)
    })
    .await?
    .map(Json)
    .map_err(bad)
}

/// Serves the API on `listener` until the returned task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    tx: mpsc::Sender<ApiRequest>,
    store: Store,
    me: PeerId,
) -> tokio::task::JoinHandle<()> {
    let ctx = Arc::new(Ctx {
        token,
        tx,
        store,
        me,
    });
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/invite", get(invite))
        .route("/v1/jobs", post(submit))
        .with_state(ctx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("local API stopped: {e}");
        }
    })
}
