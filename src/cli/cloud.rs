//! `meshd cloud ...`: GPUs for rent from Vast.ai and Clore.ai.

use anyhow::bail;
use serde::Serialize;

use crate::cloud::offers::{self, Estimate, Filter, Offer, Workload};
use crate::cloud::{CloudConfig, Provider, clore::Clore, speed, vast::Vast};

#[derive(clap::Subcommand, Debug)]
pub enum CloudCommand {
    /// GPUs for rent, best value first: price per unit of Blender speed (Open Data score).
    Offers(OffersArgs),
    /// Rent machines and join them to the mesh (the daemon keeps them, and releases them).
    Rent(super::rent::RentArgs),
    /// What this daemon rents, with its cost so far.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Give rented machines back: by rental or instance id, or all of them.
    Release {
        /// Rental ids (as `meshd cloud list` shows) or provider instance ids.
        #[arg(required_unless_present = "all")]
        ids: Vec<u64>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Which machines: the flags `offers` and `rent` share.
#[derive(clap::Args, Debug, Clone)]
pub struct FilterArgs {
    #[arg(long, value_enum)]
    pub provider: Provider,
    /// Only this GPU model, e.g. "RTX 4090".
    #[arg(long, value_name = "NAME")]
    pub gpu: Option<String>,
    /// Least memory per GPU.
    #[arg(long, value_name = "GB", allow_negative_numbers = true)]
    pub min_vram: Option<f64>,
    /// Most dollars per hour for the whole machine.
    #[arg(long, value_name = "USD/h", allow_negative_numbers = true)]
    pub max_price: Option<f64>,
    /// Only machines in this country (two-letter code).
    #[arg(long, value_name = "CC")]
    pub region: Option<String>,
    /// Least host reliability, 0 to 1.
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub min_reliability: Option<f64>,
    /// Interruptible offers (Vast bid, Clore spot), priced at their minimum bid.
    #[arg(long)]
    pub spot: bool,
}

impl FilterArgs {
    /// The filter, or a one-line error for a value out of range.
    pub fn filter(&self) -> anyhow::Result<Filter> {
        if self
            .min_reliability
            .is_some_and(|r| !(0.0..=1.0).contains(&r))
        {
            bail!("--min-reliability is between 0 and 1, like 0.98");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.max_price.is_some_and(|p| !positive(p))
            || self.min_vram.is_some_and(|v| !positive(v))
        {
            bail!("--max-price and --min-vram take positive numbers");
        }
        if self
            .region
            .as_ref()
            .is_some_and(|r| r.len() != 2 || !r.chars().all(|c| c.is_ascii_alphabetic()))
        {
            bail!("--region takes a two-letter country code, like US or DE");
        }
        Ok(Filter {
            gpu: self.gpu.clone(),
            min_vram_gb: self.min_vram,
            max_usd_per_hour: self.max_price,
            country: self.region.clone(),
            min_reliability: self.min_reliability,
            spot: self.spot,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct OffersArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Estimate time and cost of a job of this many frames...
    #[arg(long, value_name = "N", requires = "secs_per_frame")]
    frames: Option<u32>,
    /// ...taking this long per frame on `--ref-gpu`.
    #[arg(
        long,
        value_name = "S",
        requires = "frames",
        allow_negative_numbers = true
    )]
    secs_per_frame: Option<f64>,
    /// Estimate the rest of this job (id or name) from its frames rendered so far on GPUs of
    /// known speed.
    #[arg(long, value_name = "JOB", conflicts_with_all = ["frames", "secs_per_frame"])]
    job: Option<String>,
    /// The GPU `--secs-per-frame` was measured on.
    #[arg(long, value_name = "NAME", default_value = "RTX 4090")]
    ref_gpu: String,
    /// Machines the job would run on, for the estimate.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u32,
    /// Rows to show.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct OfferRow<'a> {
    #[serde(flatten)]
    offer: &'a Offer,
    score: Option<f64>,
    usd_per_hour_per_kscore: Option<f64>,
    estimate: Option<Estimate>,
}

#[derive(Serialize)]
struct OffersOut<'a> {
    provider: Provider,
    offers: Vec<OfferRow<'a>>,
}

pub async fn run(data_dir: &std::path::Path, cmd: CloudCommand) -> anyhow::Result<i32> {
    match cmd {
        CloudCommand::Offers(args) => offers(data_dir, args).await,
        CloudCommand::Rent(args) => super::rent::rent(data_dir, args).await,
        CloudCommand::List { json } => super::rent::list(data_dir, json).await,
        CloudCommand::Release { ids, all, json } => {
            super::rent::release(data_dir, ids, all, json).await
        }
    }
}

async fn offers(data_dir: &std::path::Path, a: OffersArgs) -> anyhow::Result<i32> {
    let filter = a.filter.filter()?;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let workload = match (a.frames, a.secs_per_frame) {
        (Some(frames), Some(secs)) => {
            if frames == 0 || !positive(secs) {
                bail!("--frames and --secs-per-frame take positive numbers");
            }
            let Some(ref_score) = speed::score_of(&a.ref_gpu) else {
                bail!(
                    "no Blender speed known for --ref-gpu {:?}: name a measured model like \"RTX 4090\" or \"RTX 3090\"",
                    a.ref_gpu
                );
            };
            Some(Workload {
                frames,
                secs_per_frame: secs,
                ref_score,
            })
        }
        _ => match &a.job {
            Some(sel) => Some(job_workload(data_dir, sel).await?),
            None => None,
        },
    };
    let cfg = CloudConfig::load()?;
    let mut found = match a.filter.provider {
        Provider::Vast => {
            let fetched = Vast::new(&cfg)?
                .offers(&filter, (a.limit * 3).clamp(64, 500) as u32)
                .await?;
            // What Vast filtered, checked again.
            fetched.into_iter().filter(|o| filter.accepts(o)).collect()
        }
        Provider::Clore => Clore::new(&cfg)?.offers(&filter).await?,
    };
    offers::rank(&mut found);
    found.truncate(a.limit);
    let rows: Vec<OfferRow> = found
        .iter()
        .map(|o| OfferRow {
            offer: o,
            score: o.score(),
            usd_per_hour_per_kscore: o.usd_per_kscore(),
            estimate: workload.and_then(|w| offers::estimate(o, a.count, &w)),
        })
        .collect();
    if a.json {
        let out = OffersOut {
            provider: a.filter.provider,
            offers: rows,
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if rows.is_empty() {
        outln!(
            "no {} offers match: loosen the filters",
            a.filter.provider.name()
        );
        return Ok(0);
    }
    print_table(&rows, workload.is_some(), a.count);
    Ok(0)
}

fn print_table(rows: &[OfferRow], estimates: bool, count: u32) {
    let mut header = format!(
        "{:<10} {:<24} {:>2} {:>6} {:>8} {:>7} {:>10} {:>6} {:>3}",
        "ID", "GPU", "N", "VRAM", "$/h", "SPEED", "$/h/1k", "RELIAB", "CC"
    );
    if estimates {
        header.push_str(&format!(
            " {:>9} {:>9}",
            if count > 1 { "TIME(xN)" } else { "TIME" },
            "COST"
        ));
    }
    outln!("{header}");
    for r in rows {
        let o = r.offer;
        let gpu: String = crate::cloud::clean(o.model.as_deref().unwrap_or(&o.gpu))
            .chars()
            .take(24)
            .collect();
        let mut line = format!(
            "{:<10} {:<24} {:>2} {:>6} {:>8.3} {:>7} {:>10} {:>6} {:>3}",
            o.id,
            gpu,
            o.gpus,
            format!("{:.0}GB", o.vram_gb),
            o.usd_per_hour,
            r.score
                .map_or("?".into(), |s| format!("{:.1}k", s / 1000.0)),
            r.usd_per_hour_per_kscore
                .map_or("?".into(), |v| format!("{v:.4}")),
            o.reliability.map_or("?".into(), |v| format!("{v:.3}")),
            o.country.as_deref().unwrap_or("?"),
        );
        if estimates {
            match &r.estimate {
                Some(e) => line.push_str(&format!(
                    " {:>8.1}h {:>9}",
                    e.hours,
                    format!("${:.2}", e.usd)
                )),
                None => line.push_str(&format!(" {:>9} {:>9}", "?", "?")),
            }
        }
        outln!("{line}");
    }
    outln!(
        "SPEED: Blender Open Data score (OptiX, 4.x) of the whole machine; $/h/1k: dollars per hour per 1,000 points, lower is better{}",
        if estimates {
            format!(
                "; TIME and COST include {} min of start-up per machine",
                offers::STARTUP_MINUTES
            )
        } else {
            String::new()
        }
    );
}

/// The rest of job `sel`, priced from its frames rendered so far: each frame's render time
/// and the Open Data score of its renderer's GPU (read from `meshd peers`).
async fn job_workload(data_dir: &std::path::Path, sel: &str) -> anyhow::Result<Workload> {
    use crate::api::types::{PeersResponse, StatusResponse};
    let client = super::ApiClient::connect(data_dir)?;
    let id = super::rent::resolve_job(&client, sel).await?;
    let status: StatusResponse = client.get_query("/v1/status", &[("job", &id)]).await?;
    let peers: PeersResponse = client.get("/v1/peers").await?;
    let Some(job) = status.jobs.into_iter().find(|j| j.id == id) else {
        bail!("no job matches {sel:?}: see meshd status");
    };
    // The best known GPU of each peer: the one it renders with.
    let score = |peer: &str| -> Option<u32> {
        let p = peers.peers.iter().find(|p| p.id == peer)?;
        p.devices
            .iter()
            .filter_map(|d| {
                let vram = d.memory_mib.map_or(0.0, |m| m as f64 / 1024.0);
                speed::lookup(&d.name, vram).map(|(_, s)| s)
            })
            .max()
    };
    let rendered: Vec<(f64, Option<u32>)> = job
        .frames
        .iter()
        .filter(|f| f.state == "done")
        .filter_map(|f| Some((f.render_ms? as f64 / 1000.0, score(f.peer.as_deref()?))))
        .collect();
    let remaining = job.frames_total.saturating_sub(job.frames_done) as u32;
    offers::measured_workload(&rendered, remaining.max(1)).ok_or_else(|| {
        anyhow::anyhow!(
            "no frame of job {} was rendered on a GPU of known speed yet: estimate with --frames N --secs-per-frame S",
            &id[..12]
        )
    })
}
