//! `meshd cloud rent|list|release`, and `submit --cloud`: machines the daemon rents.
//!
//! The daemon does the renting (it must outlive this command to release them); the CLI asks
//! for it, then follows the rentals until their nodes joined the mesh or failed. Ctrl-C while
//! following releases what this command rented.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::ApiClient;
use super::cloud::FilterArgs;
use crate::api::types::{
    CloudListResponse, CloudReleaseRequest, CloudReleaseResponse, CloudRentRequest,
    CloudRentResponse, RentalInfo,
};
use crate::cloud::Provider;
use crate::cloud::rental::Phase;

/// What every rent takes besides the filters.
#[derive(clap::Args, Debug, Clone)]
pub struct RentLimits {
    /// A spot bid for the whole machine, $/h (default: the minimum bid plus 10%).
    #[arg(long, value_name = "USD/h", allow_negative_numbers = true)]
    pub bid: Option<f64>,
    /// Container image; it needs sshd (the providers add it) and, ideally, Blender.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The port the provider maps for the node's daemon.
    #[arg(long, value_name = "PORT", default_value_t = 4747)]
    pub node_port: u16,
    /// Dollars these machines may spend in all; machines are released before the next hour
    /// would exceed it.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub budget: Option<f64>,
    /// Release a machine that has rendered nothing this long: `90s`, `5m`, `1h`.
    #[arg(long, value_name = "TIME", default_value = "5m", value_parser = parse_duration)]
    pub idle_release: Duration,
}

#[derive(clap::Args, Debug)]
pub struct RentArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Machines to rent.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u32,
    #[command(flatten)]
    limits: RentLimits,
    /// Release them when this job is over (its id or first characters).
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
    /// Return once the rent started, without following it.
    #[arg(long)]
    no_wait: bool,
    #[arg(long)]
    json: bool,
}

/// `90s`, `5m`, `1h`, or seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("{s:?} is not a time: give it like 90s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?} is not a time: give it like 90s, 5m or 1h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is too long"))
}

/// The request for `count` machines of `filter`, within `limits`, for `job`.
pub fn rent_request(
    which: &FilterArgs,
    count: u32,
    limits: &RentLimits,
    job: Option<String>,
) -> anyhow::Result<CloudRentRequest> {
    let filter = which.filter()?;
    if limits.budget.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
        bail!("--budget takes a positive number of dollars, like 20");
    }
    Ok(CloudRentRequest {
        provider: which.provider,
        count,
        filter,
        bid_usd_per_hour: limits.bid,
        image: limits.image.clone(),
        node_port: limits.node_port,
        job,
        budget_usd: limits.budget,
        idle_release_secs: limits.idle_release.as_secs().max(1),
    })
}

pub async fn rent(data_dir: &Path, a: RentArgs) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let job = match &a.job {
        Some(sel) => Some(resolve_job(&client, sel).await?),
        None => None,
    };
    let req = rent_request(&a.filter, a.count, &a.limits, job)?;
    let resp = ask_rent(&client, &req).await?;
    if !a.json {
        announce(&resp, a.filter.provider);
    }
    if a.no_wait {
        if a.json {
            outln!("{}", serde_json::to_string(&resp)?);
        }
        return Ok(0);
    }
    let rentals = follow(&client, &resp, !a.json).await?;
    if a.json {
        outln!("{}", serde_json::to_string(&rentals)?);
    }
    Ok(outcome(&rentals))
}

/// The full id of the one job `sel` names (an id, its first characters, or a name).
pub(super) async fn resolve_job(client: &ApiClient, sel: &str) -> anyhow::Result<String> {
    let q = [("job", sel), ("frames", "none")];
    let status: crate::api::types::StatusResponse = client.get_query("/v1/status", &q).await?;
    match status.jobs.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => bail!("no job matches {sel:?}: see meshd status"),
        _ => bail!("{sel:?} matches several jobs: give more of the id"),
    }
}

/// Asks the daemon to rent. Ctrl-C while it searches offers waits for its answer and
/// releases what it started (exit 130): the daemon rents whether or not anyone listens.
pub async fn ask_rent(
    client: &ApiClient,
    req: &CloudRentRequest,
) -> anyhow::Result<CloudRentResponse> {
    let post = client.post::<_, CloudRentResponse>("/v1/cloud/rent", req);
    tokio::pin!(post);
    tokio::select! {
        resp = &mut post => resp,
        _ = tokio::signal::ctrl_c() => {
            if let Ok(resp) = post.await {
                release_group(client, resp.group).await?;
            }
            std::process::exit(130);
        }
    }
}

/// Releases the machines of one rent, saying how many.
pub(super) async fn release_group(client: &ApiClient, group: u64) -> anyhow::Result<()> {
    let req = CloudReleaseRequest {
        group: Some(group),
        ..Default::default()
    };
    let out: CloudReleaseResponse = client.post("/v1/cloud/release", &req).await?;
    eprintln!("interrupted: releasing {} machine(s)", out.released.len());
    Ok(())
}

/// "renting 2 machines on Vast.ai (1 fewer than asked: ...)".
pub fn announce(resp: &CloudRentResponse, provider: Provider) {
    outln!(
        "renting {} machine{} on {} (group {})",
        resp.rentals.len(),
        if resp.rentals.len() == 1 { "" } else { "s" },
        provider.name(),
        resp.group
    );
    if resp.short_by > 0 {
        eprintln!(
            "warning: {} fewer than asked: not enough matching offers, or the budget allows no more",
            resp.short_by
        );
    }
}

/// 0 when at least one machine joined; 1 when none did (the first reason printed).
pub fn outcome(rentals: &[RentalInfo]) -> i32 {
    if rentals.iter().any(|r| r.phase == Phase::Joined) {
        return 0;
    }
    let why = rentals
        .iter()
        .find_map(|r| r.note.clone())
        .unwrap_or_else(|| "unknown reason".into());
    eprintln!("error: no machine joined the mesh: {why}");
    1
}

/// Follows the rentals of `resp` until each joined the mesh or was released, printing each
/// change. Ctrl-C releases them all.
pub async fn follow(
    client: &ApiClient,
    resp: &CloudRentResponse,
    print: bool,
) -> anyhow::Result<Vec<RentalInfo>> {
    let mut seen: HashMap<u64, Phase> = HashMap::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let list: CloudListResponse = client.get("/v1/cloud").await?;
        let mine: Vec<RentalInfo> = list
            .rentals
            .into_iter()
            .filter(|r| resp.rentals.contains(&r.id))
            .collect();
        for r in &mine {
            if print && seen.insert(r.id, r.phase) != Some(r.phase) {
                outln!("{}", describe(r));
            }
        }
        let settled = mine.len() == resp.rentals.len()
            && mine
                .iter()
                .all(|r| matches!(r.phase, Phase::Joined | Phase::Releasing | Phase::Released));
        if settled {
            return Ok(mine);
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                release_group(client, resp.group).await?;
                std::process::exit(130);
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One line per rental state: "rental 3  vast 7835601  RTX 4090  $0.410/h  joined as 12D3…".
fn describe(r: &RentalInfo) -> String {
    let what = match r.phase {
        Phase::Ordering => "ordering".to_string(),
        Phase::Starting => "starting".to_string(),
        Phase::Bootstrapping => "starting meshd over SSH".to_string(),
        Phase::Joined => format!("joined the mesh as {}", r.peer.as_deref().unwrap_or("?")),
        Phase::Releasing => format!("releasing: {}", r.note.as_deref().unwrap_or("")),
        Phase::Released => format!("released: {}", r.note.as_deref().unwrap_or("")),
    };
    format!(
        "rental {}  {} {}  {}  ${:.3}/h  {}",
        r.id,
        r.provider.tag(),
        r.instance.map_or("-".into(), |i| i.to_string()),
        if r.gpu.is_empty() {
            "?".into()
        } else {
            format!("{}x {}", r.gpus, crate::cloud::clean(&r.gpu))
        },
        r.usd_per_hour,
        crate::cloud::clean(&what)
    )
}

pub async fn list(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let list: CloudListResponse = client.get("/v1/cloud").await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if list.rentals.is_empty() {
        outln!("nothing rented");
        return Ok(0);
    }
    outln!(
        "{:<4} {:<6} {:>10} {:<22} {:>8} {:>8} {:<13} {:<14} NOTE",
        "ID",
        "CLOUD",
        "INSTANCE",
        "GPU",
        "$/h",
        "SPENT",
        "STATE",
        "PEER"
    );
    for r in &list.rentals {
        let gpu: String = crate::cloud::clean(&format!("{}x {}", r.gpus, r.gpu))
            .chars()
            .take(22)
            .collect();
        let peer = r.peer.as_deref().map_or("-".to_string(), |p| {
            p.chars()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        });
        outln!(
            "{:<4} {:<6} {:>10} {:<22} {:>8.3} {:>8} {:<13} {:<14} {}",
            r.id,
            r.provider.tag(),
            r.instance.map_or("-".into(), |i| i.to_string()),
            gpu,
            r.usd_per_hour,
            format!("${:.2}", r.spent_usd),
            format!("{:?}", r.phase).to_lowercase(),
            peer,
            crate::cloud::clean(r.note.as_deref().unwrap_or(""))
        );
    }
    outln!(
        "billed now: ${:.3}/h; spent: ${:.2}",
        list.usd_per_hour,
        list.spent_usd
    );
    Ok(0)
}

pub async fn release(data_dir: &Path, ids: Vec<u64>, all: bool, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let req = CloudReleaseRequest {
        ids: ids.clone(),
        group: None,
        all,
    };
    let out: CloudReleaseResponse = client.post("/v1/cloud/release", &req).await?;
    if json {
        outln!("{}", serde_json::to_string(&out)?);
    } else if out.released.is_empty() {
        outln!("nothing to release");
    } else {
        outln!(
            "releasing rental{} {}",
            if out.released.len() == 1 { "" } else { "s" },
            out.released
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !all && out.released.is_empty() && !ids.is_empty() {
        eprintln!("error: no live rental has id {ids:?}: see meshd cloud list");
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
