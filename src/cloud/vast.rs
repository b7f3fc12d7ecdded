//! Vast.ai's HTTP API (`https://console.vast.ai/api/v0/...`), as far as meshd uses it.
//!
//! - Auth: `Authorization: Bearer KEY`. Offer search works without a key.
//! - Errors: a non-2xx status or `"success": false`, with `msg`/`error` (or plain text).
//!   401 is a bad key. 429 (no Retry-After) is retried after 0.5 s, growing 1.5x.
//! - Offer search: `POST /api/v0/bundles/` with a query of `{field: {op: value}}` filters
//!   and `order`, `type`, `limit`, `allocated_storage`; answers `{"offers": [...]}`.

use std::time::Duration;

use serde_json::{Value, json};

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

    /// One API call: the JSON answer, or an error. 429 is retried.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CloudError> {
        for attempt in 0..RATE_LIMIT_ATTEMPTS {
            let (status, text) = self.api.send(method.clone(), path, body).await?;
            if status.as_u16() == 429 {
                tracing::debug!(attempt, "Vast rate limit; waiting");
                tokio::time::sleep(backoff(RATE_LIMIT_WAIT, attempt)).await;
                continue;
            }
            if status.as_u16() == 401 {
                return Err(CloudError::BadKey(Provider::Vast));
            }
            let value: Option<Value> = serde_json::from_str(&text).ok();
            if !status.is_success() || value.as_ref().is_some_and(|v| v["success"] == false) {
                return Err(CloudError::Api {
                    provider: Provider::Vast.name(),
                    msg: error_message(status.as_u16(), value.as_ref(), &text),
                });
            }
            return value.ok_or_else(|| self.api.bad_answer("not JSON"));
        }
        Err(CloudError::RateLimited(Provider::Vast))
    }
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
