//! Local stand-ins for the Vast.ai and Clore.ai HTTP APIs, following
//! ../shared/reference/cloud-apis.md: the same paths (Vast's trailing slashes), auth
//! (Vast: `Authorization: Bearer` or `?api_key=`; Clore: `auth`), answer and error shapes
//! (Vast: HTTP status + `{success, error, msg}`, 429 as plain text; Clore: HTTP 200 with an
//! integer `code`), query semantics, and failures that can be switched on.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// A fake provider running on 127.0.0.1 until dropped.
pub struct Fake<S> {
    pub url: String,
    pub state: Arc<Mutex<S>>,
    _rt: tokio::runtime::Runtime,
}

fn serve<S: Send + 'static>(
    state: S,
    app: impl FnOnce(Arc<Mutex<S>>) -> Router,
    prefix: &str,
) -> Fake<S> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let state = Arc::new(Mutex::new(state));
    let router = app(state.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Fake {
        url: format!("http://{addr}{prefix}"),
        state,
        _rt: rt,
    }
}

// ---------------------------------------------------------------------------------------
// Vast.ai

#[derive(Default)]
pub struct VastState {
    pub key: String,
    pub offers: Vec<Value>,
    /// Answer this many next calls with 429 (plain text, no Retry-After).
    pub rate_limit_next: u32,
    /// Every search query received.
    pub queries: Vec<Value>,
    /// Requests that carried a wrong key.
    pub rejected: u32,
}

pub type FakeVast = Fake<VastState>;

pub fn vast(key: &str, offers: Vec<Value>) -> FakeVast {
    let state = VastState {
        key: key.into(),
        offers,
        ..VastState::default()
    };
    serve(
        state,
        |s| {
            Router::new()
                .route("/api/v0/bundles/", post(vast_bundles))
                .with_state(s)
        },
        "",
    )
}

/// A Vast offer with the fields meshd reads, in Vast's units.
pub fn vast_offer(id: u64, gpu: &str, gpus: u32, gpu_ram_mb: u32, dph: f64, cc: &str) -> Value {
    json!({
        "id": id, "ask_contract_id": id, "machine_id": id + 1000, "host_id": 7,
        "gpu_name": gpu, "num_gpus": gpus, "gpu_ram": gpu_ram_mb, "gpu_total_ram": gpu_ram_mb * gpus,
        "cpu_ram": 64000, "cpu_cores": 16, "disk_space": 200.0,
        "dph_total": dph, "dph_base": dph * 0.95, "min_bid": (dph * 0.4 * 1000.0).round() / 1000.0,
        "storage_cost": 0.1, "inet_down": 900.0, "inet_up": 500.0,
        "reliability": 0.99, "reliability2": 0.99, "cuda_max_good": 12.4, "compute_cap": 890,
        "driver_version": "550.54.14", "geolocation": format!("Somewhere, {cc}"),
        "verification": "verified", "verified": true, "external": false,
        "rentable": true, "rented": false, "direct_port_count": 10, "static_ip": false,
        "public_ipaddr": "203.0.113.7", "score": 100.0, "dlperf": 50.0, "is_bid": false,
    })
}

/// Vast's auth: the bearer header, or `?api_key=`. None is allowed where Vast allows it
/// (offer search); a wrong one never is.
fn vast_auth(
    s: &VastState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<bool, Box<Response>> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    match bearer.or_else(|| q.get("api_key").cloned()) {
        None => Ok(false),
        Some(k) if k == s.key => Ok(true),
        Some(_) => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"success": false, "error": "auth_error", "msg": "Invalid user key"})),
            )
                .into_response(),
        )),
    }
}

fn vast_rate_limited(s: &mut VastState) -> Option<Response> {
    (s.rate_limit_next > 0).then(|| {
        s.rate_limit_next -= 1;
        (
            StatusCode::TOO_MANY_REQUESTS,
            "API requests too frequent endpoint threshold=4.5",
        )
            .into_response()
    })
}

/// The value of `field` in an offer as filters see it (`geolocation`: the country code).
fn offer_field(o: &Value, field: &str) -> Value {
    if field == "geolocation" {
        return o["geolocation"]
            .as_str()
            .and_then(|g| g.rsplit(',').next())
            .map(|c| json!(c.trim()))
            .unwrap_or(Value::Null);
    }
    o[field].clone()
}

fn cmp(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => Some(x.cmp(y)),
            _ => (a == b).then_some(std::cmp::Ordering::Equal),
        },
    }
}

/// `{field: {op: value}}` over one offer. Unknown ops match nothing.
fn matches(o: &Value, field: &str, ops: &Value) -> bool {
    let Some(ops) = ops.as_object() else {
        return false;
    };
    let v = offer_field(o, field);
    ops.iter().all(|(op, want)| match op.as_str() {
        "eq" => cmp(&v, want) == Some(std::cmp::Ordering::Equal),
        "neq" => cmp(&v, want) != Some(std::cmp::Ordering::Equal),
        "gt" => cmp(&v, want) == Some(std::cmp::Ordering::Greater),
        "gte" => matches!(
            cmp(&v, want),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        ),
        "lt" => cmp(&v, want) == Some(std::cmp::Ordering::Less),
        "lte" => matches!(
            cmp(&v, want),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ),
        "in" => want.as_array().is_some_and(|a| {
            a.iter()
                .any(|w| cmp(&v, w) == Some(std::cmp::Ordering::Equal))
        }),
        "notin" => want.as_array().is_some_and(|a| {
            !a.iter()
                .any(|w| cmp(&v, w) == Some(std::cmp::Ordering::Equal))
        }),
        _ => false,
    })
}

const CONTROL_KEYS: &[&str] = &["order", "type", "limit", "allocated_storage"];

async fn vast_bundles(
    State(s): State<Arc<Mutex<VastState>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    let mut s = s.lock().unwrap();
    if let Err(r) = vast_auth(&s, &headers, &q) {
        s.rejected += 1;
        return *r;
    }
    if let Some(r) = vast_rate_limited(&mut s) {
        return r;
    }
    let Ok(query) = serde_json::from_str::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"success": false, "error": "invalid_args", "msg": "body is not JSON"})),
        )
            .into_response();
    };
    s.queries.push(query.clone());
    let Some(obj) = query.as_object() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"success": false, "error": "invalid_args", "msg": "query is not an object"}),
            ),
        )
            .into_response();
    };
    match obj.get("type").and_then(Value::as_str) {
        None | Some("on-demand" | "ondemand" | "bid" | "reserved") => {}
        Some(t) => {
            return (StatusCode::BAD_REQUEST, Json(json!({"success": false, "error": "invalid_args", "msg": format!("bad type {t}")}))).into_response();
        }
    }
    let mut out: Vec<Value> = s
        .offers
        .iter()
        .filter(|o| {
            obj.iter()
                .filter(|(k, _)| !CONTROL_KEYS.contains(&k.as_str()))
                .all(|(k, ops)| matches(o, k, ops))
        })
        .cloned()
        .collect();
    if let Some(order) = obj.get("order").and_then(Value::as_array) {
        for pair in order.iter().rev() {
            let (Some(field), dir) = (pair[0].as_str(), pair[1].as_str().unwrap_or("asc")) else {
                continue;
            };
            out.sort_by(|a, b| {
                let o = cmp(&a[field], &b[field]).unwrap_or(std::cmp::Ordering::Equal);
                if dir == "desc" { o.reverse() } else { o }
            });
        }
    }
    if let Some(limit) = obj.get("limit").and_then(Value::as_u64) {
        out.truncate(limit as usize);
    }
    Json(json!({"offers": out})).into_response()
}

// ---------------------------------------------------------------------------------------
// Clore.ai

#[derive(Default)]
pub struct CloreState {
    pub key: String,
    pub servers: Vec<Value>,
    /// Answer this many next calls with code 5.
    pub rate_limit_next: u32,
    /// Calls per key closer than 1 s apart get code 5, as Clore does.
    pub enforce_spacing: bool,
    last_call: HashMap<String, Instant>,
}

pub type FakeClore = Fake<CloreState>;

pub fn clore(key: &str, servers: Vec<Value>) -> FakeClore {
    let state = CloreState {
        key: key.into(),
        servers,
        ..CloreState::default()
    };
    serve(
        state,
        |s| {
            Router::new()
                .route("/v1/marketplace", get(clore_marketplace))
                .with_state(s)
        },
        "/v1",
    )
}

/// A marketplace server in Clore's shape (prices per day).
pub fn clore_server(
    id: u64,
    gpu: &str,
    gpus: u32,
    gpuram_gb: u32,
    usd_per_day: f64,
    cc: &str,
) -> Value {
    json!({
        "id": id, "owner": 4, "mrl": 72, "rented": false, "reliability": 0.99, "cuda_version": "12.4",
        "allowed_coins": ["CLORE-Blockchain", "bitcoin", "USD-Blockchain"],
        "gpu_array": vec![format!("NVIDIA GeForce {gpu}"); gpus as usize],
        "rating": {"avg": 4.9, "cnt": 12},
        "price": {
            "on_demand": {"CLORE-Blockchain": usd_per_day * 7.6, "bitcoin": 0.00001, "USD-Blockchain": usd_per_day},
            "spot": {"CLORE-Blockchain": usd_per_day * 3.0, "bitcoin": 0.000004},
            "usd": {"on_demand_clore": usd_per_day, "on_demand_btc": usd_per_day * 1.05, "on_demand_usd": usd_per_day, "spot": usd_per_day * 0.4},
        },
        "specs": {"cpu": "AMD Ryzen 9 7950X", "cpus": "16/32", "ram": 62.67, "disk": "NVMe 1000GB",
                  "disk_speed": 3000, "gpu": format!("{gpus}x NVIDIA GeForce {gpu}"), "gpuram": gpuram_gb,
                  "pcie_rev": 4, "pcie_width": 16, "net": {"up": 700, "down": 900, "cc": cc}},
    })
}

/// Clore's auth and rate limit. `required`: the endpoint needs a key.
fn clore_gate(s: &mut CloreState, headers: &HeaderMap, required: bool) -> Option<Value> {
    let key = headers
        .get("auth")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match &key {
        Some(k) if *k != s.key => return Some(json!({"code": 3, "error": "invalid_api_token"})),
        None if required => return Some(json!({"code": 3, "error": "invalid_api_token"})),
        _ => {}
    }
    if s.rate_limit_next > 0 {
        s.rate_limit_next -= 1;
        return Some(json!({"code": 5}));
    }
    if s.enforce_spacing {
        let who = key.unwrap_or_default();
        let now = Instant::now();
        if let Some(prev) = s.last_call.insert(who, now)
            && now.duration_since(prev).as_secs_f64() < 1.0
        {
            return Some(json!({"code": 5}));
        }
    }
    None
}

async fn clore_marketplace(
    State(s): State<Arc<Mutex<CloreState>>>,
    headers: HeaderMap,
) -> Json<Value> {
    let mut s = s.lock().unwrap();
    if let Some(e) = clore_gate(&mut s, &headers, false) {
        return Json(e);
    }
    Json(json!({"servers": s.servers, "my_servers": [], "code": 0}))
}
