//! `meshd join [TICKET]`: runs a daemon in the foreground until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;

use crate::daemon::DaemonConfig;
use crate::net::Ticket;

/// Default TCP port for peers (all interfaces) and for the local API (loopback).
pub const DEFAULT_P2P_PORT: u16 = 4747;
pub const DEFAULT_API_PORT: u16 = 4748;

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Ticket printed by `meshd invite` (or by the first daemon). Omit to found a new mesh.
    pub ticket: Option<String>,
    /// Read the ticket from this file instead (it holds the mesh key: keep it mode 0600).
    #[arg(long, value_name = "PATH", conflicts_with = "ticket")]
    pub ticket_file: Option<PathBuf>,
    /// Address to listen on for peers (repeatable). `/ip4/127.0.0.1/tcp/0` picks a free port.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// Address of the local control API. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)))]
    pub api: SocketAddr,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Blender executable (else $BLENDER, else `blender` on PATH).
    #[arg(long, env = "BLENDER", value_name = "PATH")]
    pub blender: Option<PathBuf>,
    /// Another peer to dial at start (repeatable), e.g. /ip4/10.0.0.5/tcp/4747/p2p/12D3...
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<Multiaddr>,
    /// Seconds a frame claim holds without a heartbeat from its holder.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// Let Python inside .blend files run, for jobs that allow it.
    #[arg(long)]
    pub allow_scripts: bool,
    /// With --allow-scripts: run Python only in jobs of this submitter (a peer id; repeatable;
    /// this peer's own jobs always count). Without it every mesh member counts.
    #[arg(
        long = "trust-submitter",
        value_name = "PEER",
        requires = "allow_scripts"
    )]
    pub trust_submitters: Vec<libp2p::PeerId>,
    /// Run Blender unconfined even where bubblewrap is installed. Scenes from any member
    /// then run with this user's files and network.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Another path Blender may read inside the sandbox (repeatable; $MESHD_SANDBOX_READ,
    /// `:`-separated), e.g. for a Blender started by a wrapper script.
    #[arg(
        long,
        value_name = "PATH",
        env = "MESHD_SANDBOX_READ",
        value_delimiter = ':'
    )]
    pub sandbox_read: Vec<PathBuf>,
    /// Do not render: only submit, store and relay.
    #[arg(long)]
    pub no_render: bool,
    /// Frames one Blender process renders before it is restarted.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub frames_per_worker: u32,
    /// Restart a Blender process whose memory grows above this many MiB.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(64..))]
    pub max_worker_rss_mib: Option<u64>,
    /// Fail a frame (and restart its Blender) when it renders longer than this many seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub frame_timeout: Option<u64>,
    /// Render with all GPUs in one Blender instead of one Blender per GPU.
    #[arg(long)]
    pub gpus_together: bool,
    /// Peers that keep a copy of each finished frame besides its renderer, so a frame
    /// survives its renderer vanishing before the submitter has it. 0 turns copies off.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub replicas: u8,
    /// Benchmarking aid, never for real work: run no Blender; every frame takes SECS seconds
    /// and yields a small PNG that differs per job and frame.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub simulate_render: Option<f64>,
    /// Bound the blob store (scenes, textures, frames), e.g. 50G or 500M. Least recently used
    /// blobs of jobs that are over go first; never those of running jobs or undelivered frames.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Archive here a job that is over once its submitter has been gone this many seconds
    /// (a submitter that never comes back never archives it for the mesh).
    #[arg(long, value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub archive_orphans_after: u64,
    /// Work on at most this many running jobs of one submitter (the oldest first).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub quota_jobs: u64,
    /// ...with at most this many frames in all.
    #[arg(long, value_name = "N", default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub quota_frames: u64,
    /// Fetch no job project bigger than this, e.g. 200G.
    #[arg(long, value_name = "SIZE", default_value = "200G", value_parser = parse_size)]
    pub quota_project_bytes: u64,
}

/// `500M`, `50G`, `1.5T`, `1024` (bytes); K/M/G/T are powers of 1024, an optional `B`/`iB`
/// may follow.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0 to 3600, like 0.5"
        )),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        _ => (body, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use a number with K, M, G or T, like 50G"))?;
    if !v.is_finite() || v <= 0.0 || v * mult as f64 >= u64::MAX as f64 {
        return Err(format!(
            "{s:?} is not a usable size: give a positive size like 50G"
        ));
    }
    Ok((v * mult as f64) as u64)
}

pub async fn run(data_dir: PathBuf, args: JoinArgs) -> anyhow::Result<i32> {
    if !args.api.ip().is_loopback() {
        anyhow::bail!(
            "--api {} is not a loopback address: the control API must stay on this machine (use 127.0.0.1)",
            args.api
        );
    }
    let from_file = match &args.ticket_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the ticket file {}", p.display()))?,
        ),
        None => None,
    };
    let ticket = match args.ticket.as_deref().or(from_file.as_deref()) {
        Some(t) => Some(Ticket::decode(t.trim()).context("invalid ticket")?),
        None => None,
    };
    let listen = if args.listen.is_empty() {
        vec![format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}").parse()?]
    } else {
        args.listen
    };
    let cfg = DaemonConfig {
        data_dir,
        listen,
        api: args.api,
        mdns: !args.no_mdns,
        blender: args.blender,
        ticket,
        peers: args.peers,
        lease: Duration::from_secs(args.lease_secs),
        allow_scripts: args.allow_scripts,
        trust_submitters: args.trust_submitters,
        no_sandbox: args.no_sandbox,
        sandbox_read: args.sandbox_read,
        render: !args.no_render,
        frames_per_worker: args.frames_per_worker,
        max_worker_rss_mib: args.max_worker_rss_mib,
        gpus_together: args.gpus_together,
        frame_timeout: args.frame_timeout.map(Duration::from_secs),
        cache_size: args.cache_size,
        archive_orphans_after: Duration::from_secs(args.archive_orphans_after),
        quota: crate::daemon::Quota {
            jobs: args.quota_jobs as usize,
            frames: args.quota_frames,
            project_bytes: args.quota_project_bytes,
        },
        replicas: args.replicas as usize,
        simulate_render: args.simulate_render.map(Duration::from_secs_f64),
    };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        signals.cancel();
    });
    // The ticket holds the mesh key: it is printed when a mesh is founded, and otherwise
    // only on request (`meshd invite`), so that it does not land in every start's log.
    let joined = cfg.ticket.is_some();
    let founding = !joined && !crate::daemon::has_mesh(&cfg.data_dir);
    crate::daemon::run(cfg, shutdown, move |invite| {
        if joined {
            outln!("joined mesh {}", invite.mesh_id);
        } else if founding {
            outln!("mesh {} is up", invite.mesh_id);
            outln!(
                "invite other machines with:\n  meshd join {}",
                invite.ticket
            );
        } else {
            outln!(
                "mesh {} is up again; `meshd invite` prints a ticket for other machines",
                invite.mesh_id
            );
        }
    })
    .await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2TB"), Ok(2 << 40));
        for bad in ["", "G", "-1G", "0", "abc", "1X", "nanG"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
