//! `meshd submit FILE FRAMES`: checks the input, hands the job to the local daemon and, with
//! `--wait`, follows it with a progress bar until every frame is in the output dir.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::ApiClient;
use crate::api::types::{StatusResponse, SubmitRequest, SubmitResponse};
use crate::ledger::{FrameSet, JobState};
use crate::render::settings::{
    DeviceKind, DeviceRequirement, Engine, OutputFormat, RenderSettings,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineArg {
    Cycles,
    Eevee,
    Workbench,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Png,
    Jpeg,
    Exr,
    ExrMultilayer,
    Tiff,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Optix,
    Cuda,
    Hip,
    Oneapi,
    Metal,
    Cpu,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The .blend file (may be gzip- or zstd-compressed).
    pub file: PathBuf,
    /// Frames: `7`, `1-250`, `1,5,10-20`, or with a step `1-250x10`.
    #[arg(allow_hyphen_values = true)]
    pub frames: String,
    /// Output directory (default ./meshd-out/<name>/). Frames are written as frame_####.<ext>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Job name (default: the file name without .blend).
    #[arg(long)]
    pub name: Option<String>,
    /// When every frame is in, assemble them into a video with ffmpeg (implies --wait):
    /// `<job name>.mp4` in the output dir, or see --fps and --codec.
    #[arg(long)]
    pub video: bool,
    #[command(flatten)]
    pub video_encoding: super::video::Encoding,
    /// Show progress and exit when every frame is in (non-zero if the job fails).
    #[arg(long)]
    pub wait: bool,
    /// Higher renders first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Render engine (default: the file's).
    #[arg(long, value_enum)]
    pub engine: Option<EngineArg>,
    /// Output image format.
    #[arg(long, value_enum, default_value = "png")]
    pub format: FormatArg,
    /// Bits per channel: 8/16 for PNG and TIFF, 16/32 for EXR.
    #[arg(long, value_parser = ["8", "16", "32"])]
    pub color_depth: Option<String>,
    /// Scene inside the .blend to render (default: the active scene).
    #[arg(long)]
    pub scene: Option<String>,
    /// Camera object to render through (default: the scene camera).
    #[arg(long)]
    pub camera: Option<String>,
    /// Resolution percentage (1-1000).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub resolution: Option<u16>,
    /// Samples per pixel (Cycles samples, Eevee TAA samples).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub samples: Option<u32>,
    /// Only peers with a GPU render this job.
    #[arg(long)]
    pub gpu_only: bool,
    /// Only peers with this device type render this job.
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Only devices with at least this much memory (MiB).
    #[arg(long, value_name = "MIB")]
    pub min_vram: Option<u64>,
    /// Let Python inside the .blend run (only on peers started with --allow-scripts).
    #[arg(long)]
    pub allow_scripts: bool,
    /// Accept frames that are entirely black or transparent.
    #[arg(long)]
    pub allow_blank: bool,
    /// Refuse (exit 3, nothing submitted) when a file the scene needs is missing.
    #[arg(long)]
    pub strict: bool,
    /// Send only the .blend, without looking for the textures, libraries and caches it needs
    /// (for a daemon without Blender, or a self-contained file). Renderers will lack them.
    #[arg(long)]
    pub no_deps: bool,
    /// Only peers with this Blender render the job: `4.2` (that series) or `4.2+` (4.2 or
    /// newer). Default: the series of this machine's Blender, so that every frame matches
    /// what the artist sees (versions shade and sample differently); with --no-deps, the
    /// version that saved the .blend, or newer.
    #[arg(long, value_name = "X.Y[+]")]
    pub blender_version: Option<String>,
    /// Print the submitted job as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rent machines for this job, released when it ends: `vast:4` or `clore:2`.
    #[arg(long, value_name = "PROVIDER:N", value_parser = parse_cloud)]
    pub cloud: Option<(crate::cloud::Provider, u32)>,
    /// With --cloud: only this GPU model, e.g. "RTX 4090".
    #[arg(long, value_name = "NAME", requires = "cloud")]
    pub cloud_gpu: Option<String>,
    /// With --cloud: most dollars per hour per machine.
    #[arg(
        long,
        value_name = "USD/h",
        requires = "cloud",
        allow_negative_numbers = true
    )]
    pub cloud_max_price: Option<f64>,
    /// With --cloud: interruptible machines (cheaper; frames of an outbid one go back to
    /// the mesh).
    #[arg(long, requires = "cloud")]
    pub spot: bool,
    #[command(flatten)]
    pub rent: super::rent::RentLimits,
}

impl SubmitArgs {
    fn settings(&self) -> RenderSettings {
        RenderSettings {
            engine: self.engine.map(|e| match e {
                EngineArg::Cycles => Engine::Cycles,
                EngineArg::Eevee => Engine::Eevee,
                EngineArg::Workbench => Engine::Workbench,
            }),
            format: match self.format {
                FormatArg::Png => OutputFormat::Png,
                FormatArg::Jpeg => OutputFormat::Jpeg,
                FormatArg::Exr => OutputFormat::OpenExr,
                FormatArg::ExrMultilayer => OutputFormat::OpenExrMultilayer,
                FormatArg::Tiff => OutputFormat::Tiff,
            },
            color_depth: self.color_depth.as_deref().and_then(|d| d.parse().ok()),
            scene: self.scene.clone(),
            camera: self.camera.clone(),
            resolution_pct: self.resolution,
            samples: self.samples,
            device: DeviceRequirement {
                gpu_only: self.gpu_only,
                kind: self.device.map(|d| match d {
                    DeviceArg::Optix => DeviceKind::Optix,
                    DeviceArg::Cuda => DeviceKind::Cuda,
                    DeviceArg::Hip => DeviceKind::Hip,
                    DeviceArg::Oneapi => DeviceKind::OneApi,
                    DeviceArg::Metal => DeviceKind::Metal,
                    DeviceArg::Cpu => DeviceKind::Cpu,
                }),
                min_vram_mib: self.min_vram,
            },
            allow_scripts: self.allow_scripts,
            allow_blank: self.allow_blank,
        }
    }
}

pub async fn run(data_dir: &std::path::Path, args: SubmitArgs) -> anyhow::Result<i32> {
    // Check everything we can before touching the daemon, so bad input changes nothing.
    crate::render::check_blend_file(&args.file)?;
    let frames: FrameSet = args.frames.parse()?;
    let settings = args.settings();
    if let Some(depth) = settings.color_depth {
        let allowed: &[u8] = match settings.format {
            OutputFormat::Png | OutputFormat::Tiff => &[8, 16],
            OutputFormat::Jpeg => &[8],
            OutputFormat::OpenExr | OutputFormat::OpenExrMultilayer => &[16, 32],
        };
        if !allowed.contains(&depth) {
            bail!(
                "--color-depth {depth} is not available for {}: use {}",
                settings.format.blender_name(),
                allowed
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
        }
    }
    let path = std::fs::canonicalize(&args.file)
        .with_context(|| format!("cannot resolve {}", args.file.display()))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("job")
            .to_string(),
    };
    if name.is_empty()
        || name.len() > crate::ledger::job::MAX_JOB_NAME
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        bail!(
            "job name must be 1 to 200 characters without / or \\ or control characters: pass --name"
        );
    }
    if let Some(v) = &args.blender_version
        && crate::ledger::job::BlenderReq::parse(v).is_none()
    {
        bail!("{}", crate::ledger::job::BlenderReq::parse_error(v));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let out_dir = match &args.out {
        Some(o) => cwd.join(o),
        None => cwd.join("meshd-out").join(&name),
    };
    let cloud = match args.cloud {
        Some((provider, count)) => Some(super::rent::rent_request(
            &super::cloud::FilterArgs {
                provider,
                gpu: args.cloud_gpu.clone(),
                min_vram: None,
                max_price: args.cloud_max_price,
                region: None,
                min_reliability: None,
                spot: args.spot,
            },
            count,
            &args.rent,
            None,
        )?),
        None if args.rent.budget.is_some() || args.rent.image.is_some() => {
            bail!("--budget and --image are for machines rented with --cloud vast:N")
        }
        None => None,
    };
    let client = ApiClient::connect(data_dir)?;
    let req = SubmitRequest {
        path,
        frames: frames.to_string(),
        name,
        out_dir,
        settings,
        priority: args.priority,
        strict: args.strict,
        no_deps: args.no_deps,
        require_blender: args.blender_version.clone(),
        listed: None,
    };
    let resp: SubmitResponse = match client.post_or_refusal("/v1/jobs", &req).await? {
        Ok(resp) => resp,
        Err(refusal) if !refusal.missing.is_empty() => {
            if args.json {
                outln!("{}", serde_json::to_string(&refusal)?);
            } else {
                print_missing(&refusal.missing);
            }
            eprintln!("error: {}", refusal.error);
            return Ok(3);
        }
        Err(refusal) => bail!("{}", refusal.error),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&resp)?);
    } else {
        print_missing(&resp.missing);
        for w in &resp.warnings {
            eprintln!("warning: {}", super::printable(w));
        }
        outln!(
            "submitted job {} ({}): {} frames, {} file{} ({}) -> {}",
            &resp.id[..12],
            resp.name,
            resp.frames_total,
            resp.files,
            if resp.files == 1 { "" } else { "s" },
            human_bytes(resp.bytes),
            resp.out_dir.display()
        );
    }
    let waits = args.wait || args.video;
    let video = args.video.then_some(args.video_encoding);
    let Some(mut rent) = cloud else {
        if !waits {
            return Ok(0);
        }
        return wait_and_encode(&client, &resp, video).await;
    };
    rent.job = Some(resp.id.clone());
    let provider = rent.provider;
    let rented = match super::rent::ask_rent(&client, &rent).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: renting failed: {e}; job {} goes on with the mesh's own peers",
                &resp.id[..12]
            );
            return Ok(1);
        }
    };
    if !args.json {
        super::rent::announce(&rented, provider);
    }
    if !waits {
        let rentals = super::rent::follow(&client, &rented, !args.json).await?;
        return Ok(super::rent::outcome(&rentals));
    }
    // Ctrl-C releases what was rented for the job (the job itself goes on).
    tokio::select! {
        code = wait_and_encode(&client, &resp, video) => code,
        _ = tokio::signal::ctrl_c() => {
            super::rent::release_group(&client, rented.group).await?;
            Ok(130)
        }
    }
}

/// `vast:4` → (Vast, 4).
fn parse_cloud(s: &str) -> Result<(crate::cloud::Provider, u32), String> {
    let bad = || format!("{s:?} is not PROVIDER:N: give it like vast:4 or clore:2");
    let (p, n) = s.split_once(':').ok_or_else(bad)?;
    let provider = match p.to_ascii_lowercase().as_str() {
        "vast" => crate::cloud::Provider::Vast,
        "clore" => crate::cloud::Provider::Clore,
        _ => return Err(bad()),
    };
    let n: u32 = n
        .parse()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(bad)?;
    Ok((provider, n))
}

/// Names each missing dependency and the datablock that needs it, on stderr.
fn print_missing(missing: &[crate::transfer::project::Dependency]) {
    if missing.is_empty() {
        return;
    }
    eprintln!(
        "warning: {} file{} the scene needs {} missing (renderers will lack {}):",
        missing.len(),
        if missing.len() == 1 { "" } else { "s" },
        if missing.len() == 1 { "is" } else { "are" },
        if missing.len() == 1 { "it" } else { "them" },
    );
    for d in missing {
        eprintln!(
            "  {}  (needed by {})",
            super::printable(&d.path),
            super::printable(&d.owner)
        );
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// [`wait`], then with `video` the frames are encoded (`--video`).
async fn wait_and_encode(
    client: &ApiClient,
    job: &SubmitResponse,
    video: Option<super::video::Encoding>,
) -> anyhow::Result<i32> {
    let code = wait(client, job).await?;
    if let (0, Some(enc)) = (code, video) {
        let out = super::video::default_output(&job.out_dir, &job.name, enc.codec);
        super::video::encode(&job.out_dir, job.frames_total, &out, enc, false).await?;
    }
    Ok(code)
}

/// Follows a job until all its frames are written locally, or it fails.
pub(super) async fn wait(client: &ApiClient, job: &SubmitResponse) -> anyhow::Result<i32> {
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(job.frames_total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} frames  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let query = [("job", job.id.as_str()), ("frames", "active")];
        let status: StatusResponse = client.get_query("/v1/status", &query).await?;
        let Some(view) = status.jobs.iter().find(|j| j.id == job.id) else {
            bail!("the daemon no longer knows job {}", &job.id[..12]);
        };
        let written = view.frames_written.unwrap_or(0);
        bar.set_position(written as u64);
        bar.set_message(
            view.waiting
                .as_deref()
                .map(super::printable)
                .unwrap_or_else(|| in_flight_message(view)),
        );
        if written == view.frames_total {
            bar.finish_and_clear();
            outln!(
                "all {} frames in {} ({:.1} s)",
                view.frames_total,
                job.out_dir.display(),
                started.elapsed().as_secs_f64()
            );
            return Ok(0);
        }
        if view.state == JobState::Cancelled {
            bar.abandon();
            eprintln!(
                "error: job {} was cancelled ({written} of {} frames written)",
                super::printable(&view.name),
                view.frames_total
            );
            return Ok(2);
        }
        if view.state == JobState::Paused {
            bar.set_message("paused: `meshd resume` goes on");
        }
        if view.state == JobState::Failed {
            bar.abandon();
            eprintln!(
                "error: job {} failed: {}",
                super::printable(&view.name),
                super::printable(view.failure.as_deref().unwrap_or("unknown reason"))
            );
            return Ok(2);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// "rendering 5 (40%), 6 (12%)": frames in flight with their sample progress.
fn in_flight_message(view: &crate::api::types::JobView) -> String {
    let parts: Vec<String> = view
        .frames
        .iter()
        .filter(|f| f.state == "rendering")
        .take(6)
        .map(|f| match (f.samples_done, f.samples_total) {
            (Some(d), Some(t)) if t > 0 => format!("{} ({}%)", f.frame, d * 100 / t),
            _ => f.frame.to_string(),
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("rendering {}", parts.join(", "))
    }
}
