//! The web dashboard: one page (assets embedded in the binary) on the API's loopback address,
//! fed by a Server-Sent Events stream of the jobs and peers.
//!
//! Access: `meshd dashboard` asks for a one-time login code over the token-protected API
//! (`POST /v1/dashboard/login`) and opens `/ui/login?code=…`; that page sets an `HttpOnly`,
//! `SameSite=Strict` session cookie and redirects to `/`. Every dashboard request must carry
//! a session cookie and a `Host` of this listener (`127.0.0.1:PORT`, `localhost:PORT` or
//! `[::1]:PORT`), so a page on another origin cannot reach it, by DNS rebinding or otherwise;
//! requests that change something must also come from this origin (`Origin` and
//! `Sec-Fetch-Site`).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET  | `/` | the page (`index.html`, `app.js`, `style.css` inlined) |
//! | GET  | `/ui/login?code=C` | sets the session cookie, redirects to `/` |
//! | GET  | `/ui/events?job=ID` | SSE: a `state` event every second: [`DashState`] |
//! | POST | `/ui/control` | [`ControlRequest`] → [`crate::api::types::ControlResponse`] |
//! | GET  | `/ui/frame/JOB/N` | the written frame; `?thumb=1`: the renderer's thumbnail (a JPEG at most 240 px wide, fetched from the peers that hold it if need be) |
//! | GET  | `/ui/logs/JOB/N` | the frame's Blender log, from its renderer: [`crate::api::types::LogsResponse`] |

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::types::{ControlRequest, FramesQuery, PeersResponse, StatusQuery, StatusResponse};
use super::{Ctx, ask, err};
use crate::daemon::{ApiRequest, ThumbError};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
const COOKIE: &str = "meshd_session";
/// How long a login code from `meshd dashboard` stays good.
const CODE_LIFETIME: Duration = Duration::from_secs(120);
/// Most sessions kept; the oldest goes first.
const MAX_SESSIONS: usize = 64;
/// Most thumbnails kept in memory (a few KiB each).
const MAX_THUMBS: usize = 4096;

/// Login codes, sessions and thumbnails of one daemon's dashboard.
#[derive(Default)]
pub struct Dashboard {
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<Vec<String>>,
    thumbs: Mutex<Thumbs>,
}

/// Thumbnails by job selector and frame.
type Thumbs = HashMap<(String, u32), Bytes>;

/// Why a dashboard request is turned away.
enum Refusal {
    /// `Host` is not this listener.
    Host,
    /// No known session cookie.
    Session,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Host => (StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response(),
            Refusal::Session => (
                StatusCode::UNAUTHORIZED,
                Html(
                    "<p>Not signed in: run <code>meshd dashboard</code> to open the dashboard.</p>",
                ),
            )
                .into_response(),
        }
    }
}

/// What the page shows, sent every second.
#[derive(Serialize)]
pub struct DashState {
    pub jobs: StatusResponse,
    /// The job whose frame grid is open, with every frame.
    pub job: Option<crate::api::types::JobView>,
    pub peers: PeersResponse,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    code: String,
}

#[derive(Deserialize)]
pub struct EventsQuery {
    job: Option<String>,
}

#[derive(Deserialize)]
pub struct FrameQuery {
    #[serde(default)]
    thumb: Option<u8>,
}

/// `POST /v1/dashboard/login` answer: where to point the browser.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginUrl {
    pub url: String,
}

pub(super) fn routes() -> Router<Arc<Ctx>> {
    use axum::routing::{get, post};
    Router::new()
        .route("/", get(page))
        .route("/ui/login", get(login))
        .route("/ui/events", get(events))
        .route("/ui/control", post(control))
        .route("/ui/frame/{job}/{frame}", get(frame))
        .route("/ui/logs/{job}/{frame}", get(logs))
        .route("/v1/dashboard/login", post(new_code))
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// `POST /v1/dashboard/login` (bearer token): a one-time login URL.
async fn new_code(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Err(e) = super::check_token(&ctx, &headers) {
        return e.into_response();
    }
    let code = random_hex();
    if let Ok(mut codes) = ctx.dash.codes.lock() {
        codes.retain(|_, at| at.elapsed() < CODE_LIFETIME);
        codes.insert(code.clone(), Instant::now());
    }
    Json(LoginUrl {
        url: format!("http://{}/ui/login?code={code}", ctx.addr),
    })
    .into_response()
}

/// The `Host` header names this listener: no DNS rebinding.
fn host_ok(ctx: &Ctx, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let port = ctx.addr.port();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        ctx.addr.to_string(),
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(host))
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The checks every dashboard request passes: host, then session.
fn admit(ctx: &Ctx, headers: &HeaderMap) -> Result<(), Refusal> {
    if !host_ok(ctx, headers) {
        return Err(Refusal::Host);
    }
    let known = session_of(headers).is_some_and(|s| {
        ctx.dash.sessions.lock().is_ok_and(|list| {
            list.iter()
                .any(|k| super::constant_time_eq(k.as_bytes(), s.as_bytes()))
        })
    });
    if known { Ok(()) } else { Err(Refusal::Session) }
}

/// A request that changes something comes from the dashboard's own page.
fn same_origin(ctx: &Ctx, headers: &HeaderMap) -> bool {
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == "same-origin");
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => {
            let port = ctx.addr.port();
            [
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
                format!("http://[::1]:{port}"),
            ]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(o))
        }
    };
    site_ok && origin_ok
}

async fn login(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if !host_ok(&ctx, &headers) {
        return Refusal::Host.into_response();
    }
    let fresh = ctx.dash.codes.lock().is_ok_and(|mut codes| {
        codes
            .remove(&q.code)
            .is_some_and(|at| at.elapsed() < CODE_LIFETIME)
    });
    if !fresh {
        return (
            StatusCode::UNAUTHORIZED,
            Html("<p>This login link was used or is too old: run <code>meshd dashboard</code> again.</p>"),
        )
            .into_response();
    }
    let session = random_hex();
    if let Ok(mut list) = ctx.dash.sessions.lock() {
        if list.len() >= MAX_SESSIONS {
            list.remove(0);
        }
        list.push(session.clone());
    }
    let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn page(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let html = PAGE
        .replace("/*STYLE*/", STYLE)
        .replace("/*SCRIPT*/", SCRIPT);
    (
        [
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

async fn state(ctx: &Ctx, job: Option<&str>) -> Result<DashState, String> {
    let busy = |_| "the daemon is shutting down".to_string();
    let q = StatusQuery {
        job: None,
        frames: Some(FramesQuery::None),
    };
    let jobs = ask(ctx, |reply| ApiRequest::Status(q, reply))
        .await
        .map_err(busy)?;
    let job = match job {
        Some(id) => {
            let q = StatusQuery {
                job: Some(id.to_string()),
                frames: Some(FramesQuery::All),
            };
            let mut r = ask(ctx, |reply| ApiRequest::Status(q, reply))
                .await
                .map_err(busy)?;
            (r.jobs.len() == 1).then(|| r.jobs.remove(0))
        }
        None => None,
    };
    let peers = ask(ctx, ApiRequest::Peers).await.map_err(busy)?;
    Ok(DashState { jobs, job, peers })
}

async fn events(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let job = q.job.filter(|j| !j.is_empty());
    let stream = futures::stream::unfold((ctx, job, true), |(ctx, job, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let ev = match state(&ctx, job.as_deref()).await {
            Ok(s) => Event::default()
                .event("state")
                .json_data(&s)
                .unwrap_or_else(|_| Event::default().comment("unencodable state")),
            // The daemon is stopping: end the stream.
            Err(_) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(ev), (ctx, job, false)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn control(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(req): Json<ControlRequest>,
) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    if !same_origin(&ctx, &headers) {
        return err(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
    }
    let answer = ask(&ctx, |reply| ApiRequest::Control(req, reply)).await;
    json_answer(answer, StatusCode::BAD_REQUEST)
}

/// The loop's answer as JSON, its refusal with `refused`, or why the loop could not answer.
fn json_answer<T: Serialize, E: IntoResponse>(
    answer: Result<Result<T, String>, E>,
    refused: StatusCode,
) -> Response {
    match answer {
        Ok(Ok(resp)) => Json(resp).into_response(),
        Ok(Err(e)) => err(refused, e).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn logs(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    UrlPath((job, frame)): UrlPath<(String, u32)>,
) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let q = crate::api::types::LogsQuery { job, frame };
    let answer = ask(&ctx, |reply| ApiRequest::Logs(q, reply)).await;
    json_answer(answer, StatusCode::NOT_FOUND)
}

/// The written file of `frame` in `dir`, whatever its format.
fn frame_file(dir: &Path, frame: u32) -> Option<PathBuf> {
    crate::render::settings::FRAME_EXTENSIONS
        .iter()
        .map(|ext| dir.join(crate::daemon::frame_file_name(frame, ext)))
        .find(|p| p.is_file())
}

async fn frame(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    UrlPath((job, frame)): UrlPath<(String, u32)>,
    Query(q): Query<FrameQuery>,
) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let thumb = q.thumb.unwrap_or(0) != 0;
    // A grid asks for every frame's thumbnail: the cached ones cost no trip to the loop.
    if thumb && let Some(b) = cached_thumbnail(&ctx, &job, frame) {
        return jpeg(b);
    }
    // Why the renderer's thumbnail could not be had, when it could not.
    let mut unfetched = None;
    if thumb {
        // The renderer's thumbnail, held here or fetched from the peers that hold it.
        let j = job.clone();
        match ask(&ctx, |reply| ApiRequest::Thumbnail(j, frame, reply)).await {
            Ok(Ok(b)) => return keep_thumbnail(&ctx, job, frame, Bytes::from(b)),
            // Its holders are gone, or none was made: one from the written frame, if
            // written here.
            Ok(Err(ThumbError::Failed(e))) => unfetched = Some(e),
            Ok(Err(ThumbError::None)) => {}
            Err(e) => return e.into_response(),
        }
    }
    let sel = StatusQuery {
        job: Some(job.clone()),
        frames: Some(FramesQuery::None),
    };
    let view = match ask(&ctx, |reply| ApiRequest::Status(sel, reply)).await {
        Ok(r) if r.jobs.len() == 1 => r.jobs.into_iter().next(),
        Ok(_) => None,
        Err(e) => return e.into_response(),
    };
    let Some(path) = view
        .and_then(|v| v.out_dir)
        .and_then(|dir| frame_file(&dir, frame))
    else {
        if let Some(e) = unfetched {
            return err(
                StatusCode::BAD_GATEWAY,
                format!("the frame's thumbnail could not be fetched: {e}"),
            )
            .into_response();
        }
        return err(
            StatusCode::NOT_FOUND,
            "that frame is not written on this machine",
        )
        .into_response();
    };
    if thumb {
        return thumbnail(&ctx, job, frame, path).await;
    }
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("jpg") => "image/jpeg",
        Some("tif") => "image/tiff",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        Err(e) => err(StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

/// A small JPEG of the written frame, made once and kept in memory.
/// The cached thumbnail of `frame` of `job`, if one was made.
fn cached_thumbnail(ctx: &Ctx, job: &str, frame: u32) -> Option<Bytes> {
    let thumbs = ctx.dash.thumbs.lock().ok()?;
    thumbs.get(&(job.to_string(), frame)).cloned()
}

fn jpeg(bytes: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response()
}

/// A thumbnail made here from the written frame at `path`, for results whose renderer
/// made none (a multilayer EXR, which this cannot decode either, or an older meshd).
async fn thumbnail(ctx: &Ctx, job: String, frame: u32, path: PathBuf) -> Response {
    let made = tokio::task::spawn_blocking(move || {
        let img = image::ImageReader::open(&path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())?;
        crate::render::thumb::jpeg(&img)
    })
    .await;
    let Ok(Ok(b)) = made else {
        return err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no thumbnail for this frame",
        )
        .into_response();
    };
    keep_thumbnail(ctx, job, frame, Bytes::from(b))
}

/// Keeps thumbnail `b` of `frame` in memory and serves it.
fn keep_thumbnail(ctx: &Ctx, job: String, frame: u32, b: Bytes) -> Response {
    if let Ok(mut t) = ctx.dash.thumbs.lock() {
        if t.len() >= MAX_THUMBS {
            let drop_one = t.keys().next().cloned();
            if let Some(k) = drop_one {
                t.remove(&k);
            }
        }
        t.insert((job, frame), b.clone());
    }
    jpeg(b)
}
