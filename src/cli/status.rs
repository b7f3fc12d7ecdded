//! `meshd status`, `meshd peers`, `meshd invite`: read-only views, human or `--json`.

use std::path::Path;

use anyhow::bail;

use super::ApiClient;
use crate::api::types::{InviteResponse, JobView, PeersResponse, StatusResponse};

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The last 8 characters of a peer id: enough to tell peers apart in a table.
fn short_peer(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

fn state_name(j: &JobView) -> String {
    serde_json::to_value(j.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn status(
    data_dir: &Path,
    job: Option<&str>,
    json: bool,
    frames: Option<super::StatusFrames>,
) -> anyhow::Result<i32> {
    use super::StatusFrames as F;
    let client = ApiClient::connect(data_dir)?;
    let mut query: Vec<(&str, &str)> = job.map(|sel| ("job", sel)).into_iter().collect();
    // The plain list shows no frames: a 100,000-frame job's frames would cost the daemon
    // seconds to list for nothing.
    let frames = frames.unwrap_or(if json || job.is_some() {
        F::All
    } else {
        F::None
    });
    query.push((
        "frames",
        match frames {
            F::All => "all",
            F::Active => "active",
            F::None => "none",
        },
    ));
    let resp: StatusResponse = client.get_query("/v1/status", &query).await?;
    if let Some(sel) = job
        && resp.jobs.is_empty()
    {
        bail!("no job matches '{sel}': run `meshd status` to list jobs");
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(0);
    }
    if let Some(c) = &resp.cloud {
        outln!(
            "rented: {} machine{} at ${:.3}/h; ${:.2} spent (meshd cloud list)",
            c.machines,
            if c.machines == 1 { "" } else { "s" },
            c.usd_per_hour,
            c.spent_usd
        );
    }
    if resp.jobs.is_empty() {
        outln!("no jobs yet: submit one with `meshd submit scene.blend 1-250`");
        return Ok(0);
    }
    outln!(
        "{:<12}  {:<20}  {:<8}  {:>11}  {:>9}  {:>6}",
        "JOB",
        "NAME",
        "STATE",
        "DONE",
        "RENDERING",
        "FAILED"
    );
    for j in &resp.jobs {
        outln!(
            "{:<12}  {:<20}  {:<8}  {:>11}  {:>9}  {:>6}",
            short(&j.id),
            super::printable(&j.name),
            state_name(j),
            format!("{}/{}", j.frames_done, j.frames_total),
            j.frames_in_flight,
            j.frames_failed
        );
        if let Some(f) = &j.failure {
            outln!("  failed: {}", super::printable(f));
        }
        if let Some(w) = &j.waiting {
            outln!("  {}", super::printable(w));
        }
        let p = &j.project;
        match p.state.as_str() {
            "fetching" => outln!(
                "  fetching project: {} received",
                super::submit::human_bytes(p.bytes_fetched)
            ),
            "retrying" => outln!(
                "  project fetch failed, retrying: {}",
                super::printable(p.error.as_deref().unwrap_or("-"))
            ),
            _ => {}
        }
    }
    if job.is_some() {
        for j in &resp.jobs {
            if let Some(out) = &j.out_dir {
                outln!(
                    "\n{}: {} of {} frames written to {}",
                    super::printable(&j.name),
                    j.frames_written.unwrap_or(0),
                    j.frames_total,
                    out.display()
                );
            }
            let p = &j.project;
            if let (Some(files), Some(bytes)) = (p.files, p.bytes) {
                outln!(
                    "project: {files} files, {}; {} fetched from peers, {} already here",
                    super::submit::human_bytes(bytes),
                    super::submit::human_bytes(p.bytes_fetched),
                    super::submit::human_bytes(p.bytes_reused)
                );
            }
            if let Some(v) = &j.blender_version {
                let req = j
                    .require_blender
                    .as_deref()
                    .map(|r| {
                        let r = crate::ledger::job::BlenderReq::parse(r)
                            .map_or_else(|| super::printable(r), |r| r.to_string());
                        format!(" (renders only on Blender {r})")
                    })
                    .unwrap_or_default();
                outln!("submitted from Blender {}{req}", super::printable(v));
            }
            for f in &j.frames {
                let who = f.peer.as_deref().map(short_peer).unwrap_or("-");
                let time = f
                    .render_ms
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_default();
                outln!(
                    "  frame {:>6}  {:<9}  {:<8}  {}",
                    f.frame,
                    f.state,
                    who,
                    time
                );
                for r in &f.failures {
                    outln!("      failed: {}", super::printable(r));
                }
            }
        }
    }
    Ok(0)
}

pub async fn peers(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let resp: PeersResponse = client.get("/v1/peers").await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(0);
    }
    outln!(
        "{:<54}  {:<9}  {:<8}  {:<7}  {:>6}  ADDRESSES",
        "PEER",
        "STATE",
        "BLENDER",
        "DEVICE",
        "FRAMES"
    );
    for p in &resp.peers {
        let state = if p.is_self {
            "self"
        } else if p.connected {
            "connected"
        } else {
            "gone"
        };
        outln!(
            "{:<54}  {:<9}  {:<8}  {:<7}  {:>6}  {}",
            p.id,
            state,
            super::printable(p.blender.as_deref().unwrap_or("-")),
            super::printable(p.render_device.as_deref().unwrap_or("-")),
            p.frames_rendered,
            p.addrs.join(" ")
        );
        for d in &p.devices {
            let mem = d
                .memory_mib
                .map(|m| format!(", {m} MiB"))
                .unwrap_or_default();
            outln!(
                "    {} {}{}",
                d.kind.blender_name(),
                super::printable(&d.name),
                mem
            );
        }
        for r in &p.rendering {
            outln!("    rendering {}", super::printable(r));
        }
    }
    Ok(0)
}

pub async fn invite(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let resp: InviteResponse = client.get("/v1/invite").await?;
    if json {
        outln!("{}", serde_json::to_string(&resp)?);
    } else {
        outln!("meshd join {}", resp.ticket);
    }
    Ok(0)
}

/// `meshd logs JOB FRAME`.
pub async fn logs(data_dir: &Path, job: &str, frame: u32, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let frame_s = frame.to_string();
    let query = [("job", job), ("frame", frame_s.as_str())];
    let r: crate::api::types::LogsResponse = client.get_query("/v1/logs", &query).await?;
    if json {
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(0);
    }
    let by = if r.live {
        "being rendered now by"
    } else {
        "last attempt by"
    };
    outln!(
        "# frame {} of job {}, {by} {}",
        r.frame,
        r.job.get(..12).unwrap_or(&r.job),
        r.peer
    );
    for line in &r.lines {
        outln!("{}", super::printable(line));
    }
    Ok(0)
}

/// `meshd dashboard`: a one-time login link, opened in the browser (or printed).
pub async fn dashboard(data_dir: &Path, print_url: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let login: crate::api::dashboard::LoginUrl = client.post("/v1/dashboard/login", &()).await?;
    if print_url {
        outln!("{}", login.url);
        return Ok(0);
    }
    let opened = std::process::Command::new("xdg-open")
        .arg(&login.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if opened {
        outln!("dashboard opened in your browser (the link works once)");
    } else {
        outln!("open this link in a browser on this machine (it works once, for 2 minutes):");
        outln!("  {}", login.url);
    }
    Ok(0)
}

/// `meshd rotate-key`.
pub async fn rotate_key(data_dir: &Path, exclude: Vec<String>, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let req = crate::api::types::RotateKeyRequest { exclude };
    let r: crate::api::types::RotateKeyResponse = client.post("/v1/rotate-key", &req).await?;
    if json {
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(0);
    }
    outln!(
        "mesh {}: new key in use; {} peer{} took it from here",
        r.mesh_id,
        r.switched.len(),
        if r.switched.len() == 1 { "" } else { "s" }
    );
    for p in &r.excluded {
        outln!("excluded and disconnected: {p}");
    }
    for (p, why) in &r.not_reached {
        outln!(
            "not reached: {p} ({}); unless a peer passes the key on, it must join again with a new ticket",
            super::printable(why)
        );
    }
    outln!(
        "old tickets no longer work; new machines join with:\n  meshd join {}",
        r.ticket
    );
    Ok(0)
}

/// `meshd gc`.
pub async fn gc(data_dir: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let r: crate::store::gc::GcReport = client.post("/v1/gc", &()).await?;
    if json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "freed {} in {} stored file{}, {} unfinished download{} and {} work dir{}; {} kept",
            super::submit::human_bytes(r.bytes_freed),
            r.blobs_removed,
            if r.blobs_removed == 1 { "" } else { "s" },
            r.partials_removed,
            if r.partials_removed == 1 { "" } else { "s" },
            r.work_dirs_removed,
            if r.work_dirs_removed == 1 { "" } else { "s" },
            super::submit::human_bytes(r.bytes_kept),
        );
        if r.blobs_compacted > 0 {
            outln!(
                "compacted {} old file version{}: {} no longer stored twice",
                r.blobs_compacted,
                if r.blobs_compacted == 1 { "" } else { "s" },
                super::submit::human_bytes(r.bytes_deduped),
            );
        }
    }
    Ok(0)
}
