//! Vast.ai's HTTP API (`https://console.vast.ai/api/v0/...`), as far as meshd uses it.
//!
//! - Auth: `Authorization: Bearer KEY`. Offer search works without a key.
//! - Errors: a non-2xx status or `"success": false`, with `msg`/`error` (or plain text).
//!   401 is a bad key. 429 (no Retry-After) is retried after 0.5 s, growing 1.5x.
//! - Offer search: `POST /api/v0/bundles/` with a query of `{field: {op: value}}` filters
//!   and `order`, `type`, `limit`, `allocated_storage`; answers `{"offers": [...]}`.

use std::time::Duration;

use serde_json::{Value, json};

use super::instance::{Instance, InstanceState, RentSpec};
use super::offers::{Filter, Offer};
use super::{CloudConfig, CloudError, Endpoint, Provider, RATE_LIMIT_ATTEMPTS, backoff};

/// Disk asked for per instance (GB): Blender, the project, frames in flight.
pub const DISK_GB: u32 = 40;

/// First wait after a 429.
const RATE_LIMIT_WAIT: Duration = Duration::from_millis(500);

/// The search query for `filter`: the CLI's defaults (verified, rentable, not rented),
/// a mapped port for the node's daemon, the user's filters, cheapest first.
pub fn query(f: &Filter, limit: u32) -> Value {
    let mut q = json!({
        "verified": {"eq": true},
        "external": {"eq": false},
        "rentable": {"eq": true},
        "rented": {"eq": false},
        "direct_port_count": {"gte": 1},
        "order": [["dph_total", "asc"]],
        "type": if f.spot { "bid" } else { "on-demand" },
        "limit": limit,
        "allocated_storage": DISK_GB,
    });
    if let Some(g) = &f.gpu {
        // Vast names have spaces ("RTX 4090"); its CLI lets `_` stand for one.
        q["gpu_name"] = json!({"eq": g.replace('_', " ")});
    }
    if let Some(v) = f.min_vram_gb {
        // MB, and reported memory runs a few percent short.
        q["gpu_ram"] = json!({"gte": (v * 1024.0 * 0.93).floor()});
    }
    if let Some(p) = f.max_usd_per_hour {
        q["dph_total"] = json!({"lte": p});
    }
    if let Some(c) = &f.country {
        q["geolocation"] = json!({"in": [c.to_ascii_uppercase()]});
    }
    if let Some(r) = f.min_reliability {
        q["reliability2"] = json!({"gte": r});
    }
    q
}

/// One offer of a search answer, or `None` if it lacks what meshd needs.
pub fn parse_offer(v: &Value, spot: bool) -> Option<Offer> {
    if v["rented"].as_bool() == Some(true) {
        return None;
    }
    let id = v["id"].as_u64().or_else(|| v["ask_contract_id"].as_u64())?;
    let gpu = v["gpu_name"].as_str()?.trim().to_string();
    let price = if spot {
        v["min_bid"].as_f64().or_else(|| v["dph_total"].as_f64())
    } else {
        v["dph_total"].as_f64()
    }?;
    let country = v["geolocation"]
        .as_str()
        .and_then(|g| g.rsplit(',').next())
        .map(str::trim)
        .filter(|c| c.len() == 2)
        .map(str::to_ascii_uppercase);
    Some(
        Offer {
            provider: Provider::Vast,
            id,
            gpu,
            gpus: v["num_gpus"].as_u64().unwrap_or(1).clamp(1, 64) as u32,
            vram_gb: v["gpu_ram"].as_f64().unwrap_or(0.0) / 1024.0,
            usd_per_hour: price,
            reliability: v["reliability2"]
                .as_f64()
                .or_else(|| v["reliability"].as_f64()),
            country,
            spot,
            model: None,
            score_per_gpu: None,
        }
        .with_speed(),
    )
}

/// A Vast API client.
pub struct Vast {
    api: Endpoint,
}

impl Vast {
    pub fn new(cfg: &CloudConfig) -> Result<Self, CloudError> {
        Ok(Vast {
            api: Endpoint::new(cfg, Provider::Vast)?,
        })
    }

    /// Offers matching `filter`, as Vast sends them (not ranked).
    pub async fn offers(&self, filter: &Filter, limit: u32) -> Result<Vec<Offer>, CloudError> {
        let body = query(filter, limit);
        let answer = self
            .call(reqwest::Method::POST, "/api/v0/bundles/", Some(&body))
            .await?;
        let rows = answer["offers"]
            .as_array()
            .ok_or_else(|| self.api.bad_answer("no \"offers\" list"))?;
        Ok(rows
            .iter()
            .filter_map(|o| parse_offer(o, filter.spot))
            .collect())
    }

    /// Rents offer `offer` for `spec`: the new instance's id.
    pub async fn create(&self, offer: u64, spec: &RentSpec) -> Result<u64, CloudError> {
        self.api.require_key()?;
        let body = create_body(spec);
        let path = format!("/api/v0/asks/{offer}/");
        let (status, value, text) = self.raw(reqwest::Method::PUT, &path, Some(&body)).await?;
        let id = value.as_ref().and_then(|v| v["new_contract"].as_u64());
        let ok =
            (200..300).contains(&status) && value.as_ref().is_some_and(|v| v["success"] != false);
        match (ok, id) {
            (true, Some(id)) => Ok(id),
            (true, None) => Err(self.api.bad_answer("no \"new_contract\" in the answer")),
            (false, Some(id)) => Err(CloudError::CreatedButFailed {
                provider: Provider::Vast.name(),
                id,
                msg: error_message(status, value.as_ref(), &text),
            }),
            (false, None) if status == 404 || status == 410 => Err(CloudError::OfferGone {
                provider: Provider::Vast.name(),
                id: offer,
            }),
            (false, None) => Err(CloudError::Api {
                provider: Provider::Vast.name(),
                msg: error_message(status, value.as_ref(), &text),
            }),
        }
    }

    /// Instance `id`, or `None` if Vast no longer knows it.
    pub async fn show(&self, id: u64, node_port: u16) -> Result<Option<Instance>, CloudError> {
        self.api.require_key()?;
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v0/instances/{id}/"),
                None,
            )
            .await?;
        Ok(parse_instance(&v["instances"], node_port))
    }

    /// Every instance of the account (all pages).
    pub async fn list(&self, node_port: u16) -> Result<Vec<Instance>, CloudError> {
        self.api.require_key()?;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..400 {
            let path = match &after {
                None => "/api/v1/instances/?limit=25".to_string(),
                Some(t) => format!("/api/v1/instances/?limit=25&after_token={}", urlencode(t)),
            };
            let v = self.call(reqwest::Method::GET, &path, None).await?;
            let page = v["instances"]
                .as_array()
                .ok_or_else(|| self.api.bad_answer("no \"instances\" list"))?;
            out.extend(page.iter().filter_map(|i| parse_instance(i, node_port)));
            match v["next_token"].as_str() {
                Some(t) if !t.is_empty() && !page.is_empty() => after = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
        Err(self.api.bad_answer("the instance list never ends"))
    }

    /// Lets `public_key` log in to instance `id` as root (Vast copies account keys only
    /// into new instances; this works on any).
    pub async fn attach_ssh(&self, id: u64, public_key: &str) -> Result<(), CloudError> {
        self.api.require_key()?;
        let body = serde_json::json!({ "ssh_key": public_key });
        self.call(
            reqwest::Method::POST,
            &format!("/api/v0/instances/{id}/ssh/"),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// Destroys instance `id`. One Vast no longer knows counts as destroyed.
    pub async fn destroy(&self, id: u64) -> Result<(), CloudError> {
        self.api.require_key()?;
        let path = format!("/api/v0/instances/{id}/");
        let (status, value, text) = self
            .raw(reqwest::Method::DELETE, &path, Some(&serde_json::json!({})))
            .await?;
        let gone = value
            .as_ref()
            .is_some_and(|v| matches!(v["error"].as_str(), Some("not_found" | "no_such_instance")));
        if ((200..300).contains(&status) && value.as_ref().is_some_and(|v| v["success"] != false))
            || status == 404
            || gone
        {
            return Ok(());
        }
        Err(CloudError::Api {
            provider: Provider::Vast.name(),
            msg: error_message(status, value.as_ref(), &text),
        })
    }

    /// One API call: the JSON answer, or an error. 429 is retried.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CloudError> {
        let (status, value, text) = self.raw(method, path, body).await?;
        if !(200..300).contains(&status) || value.as_ref().is_some_and(|v| v["success"] == false) {
            return Err(CloudError::Api {
                provider: Provider::Vast.name(),
                msg: error_message(status, value.as_ref(), &text),
            });
        }
        value.ok_or_else(|| self.api.bad_answer("not JSON"))
    }

    /// One request with 429 retried and 401 turned into [`CloudError::BadKey`]: the
    /// status, the body as JSON if it is, and its text.
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Option<Value>, String), CloudError> {
        for attempt in 0..RATE_LIMIT_ATTEMPTS {
            let (status, text) = self.api.send(method.clone(), path, body).await?;
            match status.as_u16() {
                429 => {
                    tracing::debug!(attempt, "Vast rate limit; waiting");
                    tokio::time::sleep(backoff(RATE_LIMIT_WAIT, attempt)).await;
                }
                401 => return Err(CloudError::BadKey(Provider::Vast)),
                s => return Ok((s, serde_json::from_str(&text).ok(), text)),
            }
        }
        Err(CloudError::RateLimited(Provider::Vast))
    }
}

/// The create body for `spec`: SSH straight to the machine, the node's port mapped, OptiX
/// libraries injected (`NVIDIA_DRIVER_CAPABILITIES=all`), an interruptible bid if asked.
/// The SSH key goes separately ([`Vast::attach_ssh`]).
pub fn create_body(spec: &RentSpec) -> Value {
    let mut env = serde_json::Map::new();
    env.insert(
        format!("-p {p}:{p}", p = spec.node_port),
        Value::String("1".into()),
    );
    env.insert(
        "NVIDIA_DRIVER_CAPABILITIES".into(),
        Value::String("all".into()),
    );
    serde_json::json!({
        "client_id": "me",
        "image": spec.image,
        "disk": spec.disk_gb,
        "label": spec.label,
        "runtype": "ssh_direct",
        "onstart": "touch ~/.no_auto_tmux",
        "env": env,
        "price": spec.bid_usd_per_hour,
        "cancel_unavail": true,
    })
}

/// An instance as Vast shows it, or `None` (`{"instances": null}`: unknown).
pub fn parse_instance(v: &Value, node_port: u16) -> Option<Instance> {
    let id = v["id"].as_u64()?;
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let (actual, intended, cur, next) = (
        s("actual_status"),
        s("intended_status"),
        s("cur_state"),
        s("next_state"),
    );
    let msg = s("status_msg");
    let state = if cur == "unloaded" || next == "unloaded" {
        InstanceState::Gone
    } else if cur == "stopped" && next == "stopped" && intended == "stopped" {
        InstanceState::Stopped
    } else if msg.contains("Error")
        || matches!(actual, "offline" | "exited")
        || (actual == "created" && msg.contains("failed"))
    {
        InstanceState::Failed(super::clean(if msg.is_empty() { actual } else { msg }))
    } else if actual == "running" && intended == "running" {
        InstanceState::Running
    } else {
        InstanceState::Starting
    };
    let ip = s("public_ipaddr").trim().to_string();
    let mapped = |port: u16| -> Option<(String, u16)> {
        let p = v["ports"][format!("{port}/tcp")][0]["HostPort"].as_str()?;
        Some((ip.clone(), p.trim().parse().ok()?)).filter(|(h, _)| !h.is_empty())
    };
    let ssh = mapped(22).or_else(|| {
        let host = v["ssh_host"].as_str()?.to_string();
        Some((host, u16::try_from(v["ssh_port"].as_u64()?).ok()?))
    });
    let running = state == InstanceState::Running;
    Some(Instance {
        provider: Provider::Vast,
        id,
        label: v["label"].as_str().map(super::clean),
        machine: v["machine_id"].as_u64(),
        ssh: ssh.filter(|_| running),
        node: mapped(node_port).filter(|_| running),
        usd_per_hour: v["dph_total"].as_f64(),
        started_unix: v["start_date"].as_f64(),
        state,
    })
}

/// Percent-encodes a query value (the list's opaque page token).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `"<error>: <msg>"` from an error body, else its first line of text; with the status.
fn error_message(status: u16, v: Option<&Value>, text: &str) -> String {
    let field = |k: &str| v.and_then(|v| v[k].as_str()).map(str::to_string);
    let msg = match (field("error"), field("msg").or_else(|| field("message"))) {
        (Some(e), Some(m)) => format!("{e}: {m}"),
        (Some(e), None) => e,
        (None, Some(m)) => m,
        (None, None) => text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
    };
    crate::cloud::clean(&format!("HTTP {status}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_carries_every_filter_in_vasts_terms() {
        let q = query(
            &Filter {
                gpu: Some("RTX_4090".into()),
                min_vram_gb: Some(24.0),
                max_usd_per_hour: Some(0.6),
                country: Some("us".into()),
                min_reliability: Some(0.98),
                spot: true,
            },
            50,
        );
        assert_eq!(q["gpu_name"], json!({"eq": "RTX 4090"}));
        assert_eq!(q["gpu_ram"], json!({"gte": 22855.0}));
        assert_eq!(q["dph_total"], json!({"lte": 0.6}));
        assert_eq!(q["geolocation"], json!({"in": ["US"]}));
        assert_eq!(q["reliability2"], json!({"gte": 0.98}));
        assert_eq!(q["type"], "bid");
        assert_eq!(q["rentable"], json!({"eq": true}));
        assert_eq!(q["limit"], 50);
    }

    #[test]
    fn offers_are_read_in_vasts_units() {
        let v = json!({"id": 7, "gpu_name": "RTX 4090", "num_gpus": 2, "gpu_ram": 24564,
            "dph_total": 0.81, "min_bid": 0.3, "reliability2": 0.995,
            "geolocation": "Texas, US", "rented": false});
        let o = parse_offer(&v, false).unwrap();
        assert_eq!((o.id, o.gpus, o.country.as_deref()), (7, 2, Some("US")));
        assert!((o.vram_gb - 23.99).abs() < 0.01);
        assert_eq!(o.usd_per_hour, 0.81);
        assert_eq!(o.score_per_gpu, Some(11_078));
        assert_eq!(parse_offer(&v, true).unwrap().usd_per_hour, 0.3);
        assert!(
            parse_offer(
                &json!({"id": 1, "gpu_name": "X", "dph_total": 1.0, "rented": true}),
                false
            )
            .is_none()
        );
        assert!(parse_offer(&json!({"gpu_name": "X", "dph_total": 1.0}), false).is_none());
    }
}
