//! Clore.ai's HTTP API (`https://api.clore.ai/v1/...`), as far as meshd uses it.
//!
//! - Auth: header `auth: KEY` (not `Authorization`). The marketplace works without a key.
//! - Every answer carries an integer `code` (0 OK, 3 bad key, 5 rate limit, others with an
//!   `error` string), presumably with HTTP 200. Code 5 is retried after 1.1 s, growing 1.5x.
//! - Prices are per day; meshd converts to per hour. The marketplace has no server-side
//!   filters: meshd filters the list itself.

use std::time::Duration;

use serde_json::Value;

use super::instance::{Instance, InstanceState, RentSpec};
use super::offers::{Filter, Offer};
use super::{CloudConfig, CloudError, Endpoint, Provider, RATE_LIMIT_ATTEMPTS, backoff};

/// First wait after code 5 (Clore allows one call per second per key).
const RATE_LIMIT_WAIT: Duration = Duration::from_millis(1100);

/// `specs.gpu` is `"2x NVIDIA GeForce RTX 4090"`: the count and the model.
fn split_gpu(spec: &str) -> (u32, String) {
    let spec = spec.trim();
    if let Some((n, rest)) = spec.split_once(['x', 'X'])
        && let Ok(n) = n.trim().parse::<u32>()
    {
        return (n.clamp(1, 64), rest.trim().to_string());
    }
    (1, spec.to_string())
}

/// A USD price per day from `price`: on-demand or spot, in USD-Blockchain, else the
/// marketplace's own USD figures.
fn usd_per_day(price: &Value, spot: bool) -> Option<f64> {
    if spot {
        price["spot"]["USD-Blockchain"]
            .as_f64()
            .or_else(|| price["usd"]["spot"].as_f64())
    } else {
        price["on_demand"]["USD-Blockchain"]
            .as_f64()
            .or_else(|| price["usd"]["on_demand_usd"].as_f64())
            .or_else(|| price["usd"]["on_demand_clore"].as_f64())
    }
}

/// One marketplace server as an offer, or `None` if it is rented or lacks a price.
pub fn parse_server(v: &Value, spot: bool) -> Option<Offer> {
    if v["rented"].as_bool() == Some(true) {
        return None;
    }
    let id = v["id"].as_u64()?;
    let (gpus, gpu) = match v["specs"]["gpu"].as_str() {
        Some(s) => split_gpu(s),
        None => {
            let arr = v["gpu_array"].as_array()?;
            let first = arr.first()?;
            let name = first
                .as_str()
                .or_else(|| first.as_array()?.first()?.as_str())?;
            (arr.len().clamp(1, 64) as u32, name.to_string())
        }
    };
    let per_day = usd_per_day(&v["price"], spot)?;
    Some(
        Offer {
            provider: Provider::Clore,
            id,
            gpu,
            gpus,
            vram_gb: v["specs"]["gpuram"].as_f64().unwrap_or(0.0),
            usd_per_hour: per_day / 24.0,
            reliability: v["reliability"].as_f64(),
            country: v["specs"]["net"]["cc"]
                .as_str()
                .map(str::trim)
                .filter(|c| c.len() == 2)
                .map(str::to_ascii_uppercase),
            spot,
            model: None,
            score_per_gpu: None,
        }
        .with_speed(),
    )
}

/// A Clore API client. Calls through one client are spaced [`SPACING`] apart, orders
/// [`ORDER_SPACING`] apart (Clore allows about one call per second per key): share one
/// client between tasks.
pub struct Clore {
    api: Endpoint,
    /// When the last call ended, and the last order was placed.
    last_call: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    last_order: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Least time between two calls, and between two orders.
const SPACING: Duration = Duration::from_millis(1100);
const ORDER_SPACING: Duration = Duration::from_secs(5);

impl Clore {
    pub fn new(cfg: &CloudConfig) -> Result<Self, CloudError> {
        Ok(Clore {
            api: Endpoint::new(cfg, Provider::Clore)?,
            last_call: tokio::sync::Mutex::new(None),
            last_order: tokio::sync::Mutex::new(None),
        })
    }

    /// Servers for rent that match `filter` (not ranked).
    pub async fn offers(&self, filter: &Filter) -> Result<Vec<Offer>, CloudError> {
        let answer = self
            .call(reqwest::Method::GET, "/marketplace", None)
            .await?;
        let servers = answer["servers"]
            .as_array()
            .ok_or_else(|| self.api.bad_answer("no \"servers\" list"))?;
        Ok(servers
            .iter()
            .filter_map(|s| parse_server(s, filter.spot))
            .filter(|o| filter.accepts(o))
            .collect())
    }

    /// Ids of the account's active orders: taken just before ordering, so that the new
    /// order can be told apart without comparing clocks.
    pub async fn order_ids(&self) -> Result<Vec<u64>, CloudError> {
        self.api.require_key()?;
        Ok(self
            .my_orders()
            .await?
            .iter()
            .filter_map(|o| o["id"].as_u64())
            .collect())
    }

    /// Orders `server` for `spec` (a spot order bids `spot_usd_per_day`): the order's id.
    /// `create_order` answers without one; the order is found in `my_orders` as the one on
    /// that server that is not among `before` (the ids [`Self::order_ids`] gave just before).
    pub async fn create(
        &self,
        server: u64,
        spec: &RentSpec,
        spot_usd_per_day: Option<f64>,
        before: &[u64],
    ) -> Result<u64, CloudError> {
        self.api.require_key()?;
        let body = order_body(server, spec, spot_usd_per_day);
        {
            let mut last = self.last_order.lock().await;
            if let Some(t) = *last {
                tokio::time::sleep_until(t + ORDER_SPACING).await;
            }
            let placed = self
                .call(reqwest::Method::POST, "/create_order", Some(&body))
                .await;
            *last = Some(tokio::time::Instant::now());
            placed?;
        }
        for attempt in 0..ORDER_LOOKUPS {
            if attempt > 0 {
                tokio::time::sleep(RATE_LIMIT_WAIT).await;
            }
            let v = self.my_orders().await?;
            let new = v
                .iter()
                .filter(|o| o["si"].as_u64() == Some(server))
                .filter_map(|o| o["id"].as_u64())
                .filter(|id| !before.contains(id))
                .max();
            if let Some(id) = new {
                return Ok(id);
            }
        }
        Err(self.api.bad_answer(
            "the new order never showed in my_orders: check the Clore console and cancel it there",
        ))
    }

    /// Active orders, as instances.
    pub async fn orders(&self, node_port: u16) -> Result<Vec<Instance>, CloudError> {
        self.api.require_key()?;
        Ok(self
            .my_orders()
            .await?
            .iter()
            .filter_map(|o| parse_order(o, node_port))
            .collect())
    }

    /// Cancels order `id`. One that is no longer active counts as cancelled.
    pub async fn cancel(&self, id: u64) -> Result<(), CloudError> {
        self.api.require_key()?;
        let body = serde_json::json!({ "id": id });
        match self
            .call(reqwest::Method::POST, "/cancel_order", Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ (CloudError::BadKey(_) | CloudError::Unreachable { .. })) => Err(e),
            Err(e) => {
                let active = self.my_orders().await?;
                if active.iter().any(|o| o["id"].as_u64() == Some(id)) {
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn my_orders(&self) -> Result<Vec<Value>, CloudError> {
        let v = self
            .call(
                reqwest::Method::GET,
                "/my_orders?return_completed=false",
                None,
            )
            .await?;
        v["orders"]
            .as_array()
            .cloned()
            .ok_or_else(|| self.api.bad_answer("no \"orders\" list"))
    }

    /// One API call: the JSON answer when `code` is 0, else an error. Code 5 is retried.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CloudError> {
        for attempt in 0..RATE_LIMIT_ATTEMPTS {
            let (status, text) = {
                let mut last = self.last_call.lock().await;
                if let Some(t) = *last {
                    tokio::time::sleep_until(t + SPACING).await;
                }
                let answer = self.api.send(method.clone(), path, body).await;
                *last = Some(tokio::time::Instant::now());
                answer?
            };
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                return Err(if status.is_success() {
                    self.api.bad_answer("not JSON")
                } else {
                    CloudError::Api {
                        provider: Provider::Clore.name(),
                        msg: super::clean(&format!("HTTP {status}")),
                    }
                });
            };
            match value["code"].as_i64() {
                Some(0) => return Ok(value),
                Some(3) => return Err(CloudError::BadKey(Provider::Clore)),
                Some(5) => {
                    tracing::debug!(attempt, "Clore rate limit; waiting");
                    tokio::time::sleep(backoff(RATE_LIMIT_WAIT, attempt)).await;
                }
                Some(code) => {
                    let what = match code {
                        1 => {
                            "database error (often: not enough balance, or the server was just rented)"
                        }
                        2 => "invalid input",
                        4 => "invalid endpoint",
                        _ => "error",
                    };
                    let detail = value["error"].as_str().unwrap_or("");
                    return Err(CloudError::Api {
                        provider: Provider::Clore.name(),
                        msg: super::clean(format!("code {code}, {what} {detail}").trim()),
                    });
                }
                None => return Err(self.api.bad_answer("no \"code\"")),
            }
        }
        Err(CloudError::RateLimited(Provider::Clore))
    }
}

/// Looks in `my_orders` for a new order this many times, 1.1 s apart.
const ORDER_LOOKUPS: u32 = 10;

/// The `create_order` body: SSH and the node's port as TCP ports, OptiX libraries injected,
/// priced in USD; a spot order with its bid per day.
pub fn order_body(server: u64, spec: &RentSpec, spot_usd_per_day: Option<f64>) -> Value {
    let mut ports = serde_json::Map::new();
    ports.insert("22".into(), Value::String("tcp".into()));
    ports.insert(spec.node_port.to_string(), Value::String("tcp".into()));
    let mut body = serde_json::json!({
        "renting_server": server,
        "type": if spot_usd_per_day.is_some() { "spot" } else { "on-demand" },
        "currency": "USD-Blockchain",
        "image": spec.image,
        "ports": ports,
        "env": {"NVIDIA_DRIVER_CAPABILITIES": "all"},
        "ssh_key": spec.ssh_public_key,
    });
    if let Some(bid) = spot_usd_per_day {
        body["spotprice"] = serde_json::json!(bid);
    }
    body
}

/// An order as an instance: `tcp_ports` entries are `"<container>:<host>"`, the host is
/// `pub_cluster[0]`. Clore has no status string: an expired order is gone, an online one
/// with its SSH port mapped runs.
pub fn parse_order(v: &Value, node_port: u16) -> Option<Instance> {
    let id = v["id"].as_u64()?;
    let host = v["pub_cluster"][0].as_str().map(str::trim).unwrap_or("");
    let mapped = |port: u16| -> Option<(String, u16)> {
        v["tcp_ports"].as_array()?.iter().find_map(|p| {
            let (inner, outer) = p.as_str()?.split_once(':')?;
            (inner.trim().parse::<u16>().ok()? == port && !host.is_empty())
                .then(|| Some((host.to_string(), outer.trim().parse().ok()?)))?
        })
    };
    let state = if v["expired"].as_bool() == Some(true) {
        InstanceState::Gone
    } else if v["online"].as_bool() == Some(true) && mapped(22).is_some() {
        InstanceState::Running
    } else {
        InstanceState::Starting
    };
    let running = state == InstanceState::Running;
    Some(Instance {
        provider: Provider::Clore,
        id,
        label: None,
        machine: v["si"].as_u64(),
        ssh: mapped(22).filter(|_| running),
        node: mapped(node_port).filter(|_| running),
        usd_per_hour: v["price"].as_f64().map(|p| p / 24.0),
        started_unix: v["ct"].as_f64(),
        state,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn servers_are_read_in_clores_units() {
        let v = json!({"id": 6, "rented": false, "reliability": 0.99,
            "gpu_array": ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"],
            "price": {"on_demand": {"CLORE-Blockchain": 55.0, "USD-Blockchain": 7.2},
                      "spot": {"CLORE-Blockchain": 20.0},
                      "usd": {"on_demand_clore": 7.2, "spot": 2.6}},
            "specs": {"gpu": "2x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "CZ"}}});
        let o = parse_server(&v, false).unwrap();
        assert_eq!(
            (o.id, o.gpus, o.gpu.as_str()),
            (6, 2, "NVIDIA GeForce RTX 4090")
        );
        assert!((o.usd_per_hour - 0.3).abs() < 1e-9, "7.2 $/day");
        assert_eq!(o.country.as_deref(), Some("CZ"));
        assert_eq!(o.score_per_gpu, Some(11_078));
        let s = parse_server(&v, true).unwrap();
        assert!((s.usd_per_hour - 2.6 / 24.0).abs() < 1e-9);
        let mut rented = v.clone();
        rented["rented"] = json!(true);
        assert!(parse_server(&rented, false).is_none());
        let mut bare = v.clone();
        bare["specs"]["gpu"] = Value::Null;
        assert_eq!(parse_server(&bare, false).unwrap().gpus, 2);
    }
}
