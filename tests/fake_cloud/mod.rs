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

/// What a test rents: `image`, labelled `label`, the node port 4747, a dummy key.
pub fn rent_spec(image: &str, label: &str) -> meshd::cloud::instance::RentSpec {
    meshd::cloud::instance::RentSpec {
        image: image.into(),
        label: label.into(),
        node_port: 4747,
        ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE meshd".into(),
        bid_usd_per_hour: None,
        disk_gb: 40,
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
    /// Rented instances by id (a BTreeMap: the list pages in id order).
    pub instances: std::collections::BTreeMap<u64, VastInstance>,
    next_id: u64,
    /// `show` calls before a new instance runs (`None`: it never does).
    pub polls_to_run: Option<u32>,
    /// Host port a container port is mapped to (else 40000 + port).
    pub host_ports: HashMap<u16, u16>,
    /// The machine behind every instance (a test's sshd), if any.
    pub machine: Option<Machine>,
    /// Offers listed but taken by someone else by the time they are rented: 410.
    pub taken: Vec<u64>,
}

/// What a rented machine is in a test: the sshd's authorized-keys file (a key attached or
/// ordered with is written there, so SSH works only with the key meshd registered), and what
/// destroying an instance does to it (kill the node that runs there, as a provider tearing
/// down the container would).
#[derive(Clone)]
pub struct Machine {
    pub authorized_keys: std::path::PathBuf,
    pub teardown: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Machine {
    fn authorize(&self, key: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.authorized_keys)
        {
            let _ = writeln!(f, "{key}");
        }
    }
}

pub type FakeVast = Fake<VastState>;

pub fn vast(key: &str, offers: Vec<Value>) -> FakeVast {
    let state = VastState {
        key: key.into(),
        offers,
        polls_to_run: Some(2),
        ..VastState::default()
    };
    serve(
        state,
        |s| {
            Router::new()
                .route("/api/v0/bundles/", post(vast_bundles))
                .route("/api/v0/asks/{id}/", axum::routing::put(vast_create))
                .route(
                    "/api/v0/instances/{id}/",
                    get(vast_show).delete(vast_destroy),
                )
                .route("/api/v1/instances/", get(vast_list))
                .route("/api/v0/instances/{id}/ssh/", post(vast_attach_ssh))
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
    /// Orders by id; cancelled ones stay with `expired: true`.
    pub orders: std::collections::BTreeMap<u64, Value>,
    next_order: u64,
    /// `my_orders` calls before a new order is online with its ports.
    pub polls_to_run: u32,
    /// Host port a container port is mapped to (else 41000 + port).
    pub host_ports: HashMap<u16, u16>,
    pub machine: Option<Machine>,
}

impl CloreState {
    /// Orders still active (not expired).
    pub fn active_ids(&self) -> Vec<u64> {
        self.orders
            .iter()
            .filter(|(_, o)| o["expired"] != true)
            .map(|(id, _)| *id)
            .collect()
    }
}

pub type FakeClore = Fake<CloreState>;

pub fn clore(key: &str, servers: Vec<Value>) -> FakeClore {
    let state = CloreState {
        key: key.into(),
        servers,
        polls_to_run: 1,
        ..CloreState::default()
    };
    serve(
        state,
        |s| {
            Router::new()
                .route("/v1/marketplace", get(clore_marketplace))
                .route("/v1/create_order", post(clore_create_order))
                .route("/v1/my_orders", get(clore_my_orders))
                .route("/v1/cancel_order", post(clore_cancel_order))
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

// ---------------------------------------------------------------------------------------
// Vast.ai instances

/// A rented instance on the fake Vast.
#[derive(Clone, Debug)]
pub struct VastInstance {
    pub id: u64,
    pub offer: Value,
    pub label: String,
    pub image: String,
    /// Container ports asked for with `-p P:P` in `env`.
    pub ports: Vec<u16>,
    pub price: Option<f64>,
    pub ssh_key: Option<String>,
    /// `show` calls left before it runs (`None`: never runs).
    pub polls_to_run: Option<u32>,
    pub stopped: bool,
    /// Unix seconds it was made.
    pub created: f64,
}

impl VastState {
    /// Instances not destroyed.
    pub fn live_ids(&self) -> Vec<u64> {
        self.instances.keys().copied().collect()
    }
}

fn vast_instance_json(i: &VastInstance, host_port_of: &dyn Fn(u16) -> u16) -> Value {
    let running = i.polls_to_run == Some(0) && !i.stopped;
    let (actual, cur) = if i.stopped {
        ("stopped", "stopped")
    } else if running {
        ("running", "running")
    } else {
        ("loading", "running")
    };
    let ports: serde_json::Map<String, Value> = if running {
        i.ports
            .iter()
            .chain(std::iter::once(&22))
            .map(|p| {
                (
                    format!("{p}/tcp"),
                    json!([{"HostIp": "0.0.0.0", "HostPort": host_port_of(*p).to_string()}]),
                )
            })
            .collect()
    } else {
        serde_json::Map::new()
    };
    json!({
        "id": i.id, "machine_id": i.offer["machine_id"], "actual_status": actual,
        "intended_status": if i.stopped { "stopped" } else { "running" },
        "cur_state": cur, "next_state": cur,
        "status_msg": if running { "success, running" } else { "pulling image" },
        "label": i.label, "image_uuid": i.image, "image_runtype": "ssh ssh_direc ssh_proxy",
        "ssh_host": "ssh4.vast.example", "ssh_port": 26512, "public_ipaddr": " 127.0.0.1 ",
        "ports": if running { Value::Object(ports) } else { Value::Null },
        "gpu_name": i.offer["gpu_name"], "num_gpus": i.offer["num_gpus"],
        "dph_total": i.price.unwrap_or(i.offer["dph_total"].as_f64().unwrap_or(0.0)),
        "is_bid": i.price.is_some(), "start_date": i.created,
    })
}

fn vast_err(status: StatusCode, error: &str, msg: &str) -> Response {
    (
        status,
        Json(json!({"success": false, "error": error, "msg": msg})),
    )
        .into_response()
}

/// Auth for endpoints that need a key, plus the rate limit.
fn vast_gate(
    s: &mut VastState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Option<Response> {
    match vast_auth(s, headers, q) {
        Err(r) => {
            s.rejected += 1;
            Some(*r)
        }
        Ok(false) => Some(vast_err(
            StatusCode::UNAUTHORIZED,
            "auth_error",
            "Invalid user key",
        )),
        Ok(true) => vast_rate_limited(s),
    }
}

async fn vast_create(
    State(st): State<Arc<Mutex<VastState>>>,
    axum::extract::Path(offer_id): axum::extract::Path<u64>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = vast_gate(&mut s, &headers, &q) {
        return r;
    }
    if s.taken.contains(&offer_id) {
        s.offers.retain(|o| o["id"] != offer_id);
        return vast_err(
            StatusCode::GONE,
            "no_such_ask",
            &format!("Instance type by id {offer_id} is no longer available."),
        );
    }
    let Some(pos) = s.offers.iter().position(|o| o["id"] == offer_id) else {
        return vast_err(
            StatusCode::NOT_FOUND,
            "invalid_args",
            &format!(
                "error 404/3603: no_such_ask Instance type by id {offer_id} is not available."
            ),
        );
    };
    if body["image"].as_str().is_none_or(str::is_empty) {
        return vast_err(StatusCode::BAD_REQUEST, "invalid_args", "image is required");
    }
    let Some(env) = body["env"].as_object() else {
        return vast_err(
            StatusCode::BAD_REQUEST,
            "invalid_args",
            "env must be a JSON object",
        );
    };
    let ports: Vec<u16> = env
        .keys()
        .filter_map(|k| k.strip_prefix("-p ")?.split(':').next()?.parse().ok())
        .collect();
    let offer = s.offers.remove(pos);
    let price = body["price"].as_f64();
    s.next_id += 1;
    let id = 7_835_600 + s.next_id;
    let too_low = price.is_some_and(|p| p < offer["min_bid"].as_f64().unwrap_or(0.0));
    let inst = VastInstance {
        id,
        offer,
        label: body["label"].as_str().unwrap_or("").to_string(),
        image: body["image"].as_str().unwrap_or("").to_string(),
        ports,
        price,
        ssh_key: None,
        polls_to_run: s.polls_to_run,
        stopped: too_low,
        created: unix_now(),
    };
    s.instances.insert(id, inst);
    if too_low {
        // Vast makes the instance, stopped, and says the bid failed.
        return (
            StatusCode::OK,
            Json(json!({"success": false, "error": "invalid_price", "msg": "bid too low", "new_contract": id})),
        )
            .into_response();
    }
    Json(json!({"success": true, "new_contract": id})).into_response()
}

async fn vast_show(
    State(st): State<Arc<Mutex<VastState>>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = vast_gate(&mut s, &headers, &q) {
        return r;
    }
    let map = s.host_ports.clone();
    let Some(i) = s.instances.get_mut(&id) else {
        return Json(json!({"instances": null})).into_response();
    };
    if let Some(n) = i.polls_to_run.as_mut() {
        *n = n.saturating_sub(1);
    }
    let v = vast_instance_json(i, &|p| {
        map.get(&p)
            .copied()
            .unwrap_or_else(|| 40_000u16.wrapping_add(p))
    });
    Json(json!({"instances": v})).into_response()
}

async fn vast_destroy(
    State(st): State<Arc<Mutex<VastState>>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = vast_gate(&mut s, &headers, &q) {
        return r;
    }
    match s.instances.remove(&id) {
        Some(_) => {
            if let Some(m) = &s.machine {
                (m.teardown)(id);
            }
            Json(json!({"success": true, "msg": "destroying instance"})).into_response()
        }
        None => vast_err(
            StatusCode::NOT_FOUND,
            "no_such_instance",
            "no such instance",
        ),
    }
}

async fn vast_list(
    State(st): State<Arc<Mutex<VastState>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = vast_gate(&mut s, &headers, &q) {
        return r;
    }
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25)
        .min(25);
    let after: u64 = q
        .get("after_token")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let map = s.host_ports.clone();
    let all: Vec<&VastInstance> = s.instances.values().filter(|i| i.id > after).collect();
    let page: Vec<Value> = all
        .iter()
        .take(limit)
        .map(|i| {
            vast_instance_json(i, &|p| {
                map.get(&p)
                    .copied()
                    .unwrap_or_else(|| 40_000u16.wrapping_add(p))
            })
        })
        .collect();
    let next = (all.len() > limit).then(|| all[limit - 1].id.to_string());
    Json(json!({
        "success": true, "instances_found": page.len(), "total_instances": s.instances.len(),
        "next_token": next, "instances": page,
    }))
    .into_response()
}

async fn vast_attach_ssh(
    State(st): State<Arc<Mutex<VastState>>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = vast_gate(&mut s, &headers, &q) {
        return r;
    }
    let Some(key) = body["ssh_key"].as_str().filter(|k| k.starts_with("ssh-")) else {
        return vast_err(
            StatusCode::BAD_REQUEST,
            "invalid_args",
            "ssh_key is not a public key",
        );
    };
    if s.instances.contains_key(&id)
        && let Some(m) = &s.machine
    {
        m.authorize(key);
    }
    match s.instances.get_mut(&id) {
        Some(i) => {
            i.ssh_key = Some(key.to_string());
            Json(json!({"success": true, "msg": "ssh key added"})).into_response()
        }
        None => vast_err(
            StatusCode::NOT_FOUND,
            "no_such_instance",
            "no such instance",
        ),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn clore_create_order(
    State(st): State<Arc<Mutex<CloreState>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut s = st.lock().unwrap();
    if let Some(e) = clore_gate(&mut s, &headers, true) {
        return Json(e);
    }
    let Some(server_id) = body["renting_server"].as_u64() else {
        return Json(json!({"code": 2, "error": "renting_server missing"}));
    };
    if body["image"].as_str().is_none_or(str::is_empty) || !body["ports"].is_object() {
        return Json(json!({"code": 2, "error": "image and ports are required"}));
    }
    let spot = match body["type"].as_str() {
        Some("on-demand") => false,
        Some("spot") if body["spotprice"].is_number() => true,
        _ => {
            return Json(
                json!({"code": 2, "error": "type must be on-demand, or spot with spotprice"}),
            );
        }
    };
    let Some(server) = s.servers.iter_mut().find(|v| v["id"] == server_id) else {
        return Json(json!({"code": 6, "error": "server-offline"}));
    };
    if server["rented"] == true {
        return Json(json!({"code": 6, "error": "server-already-rented"}));
    }
    server["rented"] = true.into();
    let price = if spot {
        body["spotprice"].as_f64().unwrap_or(0.0)
    } else {
        server["price"]["on_demand"]["USD-Blockchain"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let specs = server["specs"].clone();
    let ports: Vec<String> = body["ports"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    s.next_order += 1;
    let id = 38_000 + s.next_order;
    let order = json!({
        "id": id, "si": server_id, "image": body["image"], "currency": body["currency"],
        "price": price, "creation_fee": 0.1, "spend": 0.0, "ct": unix_now(), "mrl": 72,
        "online": false, "spot": spot, "expired": false, "pub_cluster": [],
        "tcp_ports": [], "specs": {"gpu": specs["gpu"], "gpuram": specs["gpuram"]},
        "reliability": 0.99, "cuda_version": "12.4",
        "polls_left": s.polls_to_run, "wanted_ports": ports,
        "ssh_key": body["ssh_key"],
    });
    s.orders.insert(id, order);
    Json(json!({"code": 0}))
}

async fn clore_my_orders(
    State(st): State<Arc<Mutex<CloreState>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let mut s = st.lock().unwrap();
    if let Some(e) = clore_gate(&mut s, &headers, true) {
        return Json(e);
    }
    let completed = q.get("return_completed").is_some_and(|v| v == "true");
    let map = s.host_ports.clone();
    let machine = s.machine.clone();
    for o in s.orders.values_mut() {
        let left = o["polls_left"].as_u64().unwrap_or(0);
        if left > 0 {
            o["polls_left"] = (left - 1).into();
        } else if o["expired"] != true && o["online"] != true {
            let ports: Vec<String> = o["wanted_ports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str())
                        .filter_map(|p| p.parse::<u16>().ok())
                        .map(|p| {
                            format!(
                                "{p}:{}",
                                map.get(&p)
                                    .copied()
                                    .unwrap_or_else(|| 41_000u16.wrapping_add(p))
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(m), Some(key)) = (&machine, o["ssh_key"].as_str()) {
                m.authorize(key);
            }
            o["online"] = true.into();
            o["pub_cluster"] = json!(["127.0.0.1"]);
            o["tcp_ports"] = json!(ports);
        }
    }
    let orders: Vec<Value> = s
        .orders
        .values()
        .filter(|o| completed || o["expired"] != true)
        .map(|o| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("polls_left");
                m.remove("wanted_ports");
                m.remove("ssh_key");
            }
            o
        })
        .collect();
    Json(json!({"orders": orders, "code": 0}))
}

async fn clore_cancel_order(
    State(st): State<Arc<Mutex<CloreState>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut s = st.lock().unwrap();
    if let Some(e) = clore_gate(&mut s, &headers, true) {
        return Json(e);
    }
    let Some(id) = body["id"].as_u64() else {
        return Json(json!({"code": 2, "error": "id missing"}));
    };
    let Some(order) = s.orders.get_mut(&id).filter(|o| o["expired"] != true) else {
        return Json(json!({"code": 2, "error": "no such active order"}));
    };
    order["expired"] = true.into();
    order["online"] = false.into();
    let si = order["si"].clone();
    if let Some(m) = &s.machine {
        (m.teardown)(id);
    }
    if let Some(server) = s.servers.iter_mut().find(|v| v["id"] == si) {
        server["rented"] = false.into();
    }
    Json(json!({"code": 0}))
}
