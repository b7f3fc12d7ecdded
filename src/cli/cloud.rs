//! `meshd cloud ...`: GPUs for rent from Vast.ai and Clore.ai.

use anyhow::bail;
use serde::Serialize;

use crate::cloud::offers::{self, Estimate, Filter, Offer, Workload};
use crate::cloud::{CloudConfig, Provider, clore::Clore, speed, vast::Vast};

#[derive(clap::Subcommand, Debug)]
pub enum CloudCommand {
    /// GPUs for rent, best value first: price per unit of Blender speed (Open Data score).
    Offers(OffersArgs),
}

#[derive(clap::Args, Debug)]
pub struct OffersArgs {
    #[arg(long, value_enum)]
    provider: Provider,
    /// Only this GPU model, e.g. "RTX 4090".
    #[arg(long, value_name = "NAME")]
    gpu: Option<String>,
    /// Least memory per GPU.
    #[arg(long, value_name = "GB", allow_negative_numbers = true)]
    min_vram: Option<f64>,
    /// Most dollars per hour for the whole machine.
    #[arg(long, value_name = "USD/h", allow_negative_numbers = true)]
    max_price: Option<f64>,
    /// Only machines in this country (two-letter code).
    #[arg(long, value_name = "CC")]
    region: Option<String>,
    /// Least host reliability, 0 to 1.
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    min_reliability: Option<f64>,
    /// Interruptible offers (Vast bid, Clore spot), priced at their minimum bid.
    #[arg(long)]
    spot: bool,
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

pub async fn run(cmd: CloudCommand) -> anyhow::Result<i32> {
    match cmd {
        CloudCommand::Offers(args) => offers(args).await,
    }
}

async fn offers(a: OffersArgs) -> anyhow::Result<i32> {
    if a.min_reliability.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        bail!("--min-reliability is between 0 and 1, like 0.98");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if a.max_price.is_some_and(|p| !positive(p)) || a.min_vram.is_some_and(|v| !positive(v)) {
        bail!("--max-price and --min-vram take positive numbers");
    }
    if a.region
        .as_ref()
        .is_some_and(|r| r.len() != 2 || !r.chars().all(|c| c.is_ascii_alphabetic()))
    {
        bail!("--region takes a two-letter country code, like US or DE");
    }
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
        _ => None,
    };
    let filter = Filter {
        gpu: a.gpu.clone(),
        min_vram_gb: a.min_vram,
        max_usd_per_hour: a.max_price,
        country: a.region.clone(),
        min_reliability: a.min_reliability,
        spot: a.spot,
    };
    let cfg = CloudConfig::load()?;
    let mut found = match a.provider {
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
            provider: a.provider,
            offers: rows,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no {} offers match: loosen the filters", a.provider.name());
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
    println!("{header}");
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
        println!("{line}");
    }
    println!(
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
