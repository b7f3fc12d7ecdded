//! `meshd video JOB`: assembles a job's frames, as written in its output dir on this machine,
//! into a video with ffmpeg (also run by `meshd submit --video` when the job ends).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokio::io::AsyncBufReadExt;

use super::ApiClient;
use crate::api::types::StatusResponse;

#[derive(Args, Debug)]
pub struct VideoArgs {
    /// A job id (or its first characters) or a job name.
    pub job: String,
    /// The video file (default: `<job name>.<ext>` in the job's output dir).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub encoding: Encoding,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// How the frames are encoded (shared with `meshd submit --video`).
#[derive(Args, Debug, Clone, Copy)]
pub struct Encoding {
    /// Frames per second.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub fps: u32,
    #[arg(long, value_enum, default_value_t = Codec::H264)]
    pub codec: Codec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    /// H.264 in .mp4 (CRF 18): plays everywhere.
    H264,
    /// H.265 in .mp4 (CRF 20): smaller, plays on recent players.
    H265,
    /// Apple ProRes 422 HQ in .mov: for editing.
    Prores,
    /// VP9 in .webm: for the web.
    Vp9,
    /// FFV1 in .mkv: lossless.
    Ffv1,
}

impl Codec {
    fn extension(self) -> &'static str {
        match self {
            Codec::H264 | Codec::H265 => "mp4",
            Codec::Prores => "mov",
            Codec::Vp9 => "webm",
            Codec::Ffv1 => "mkv",
        }
    }

    /// ffmpeg's output options for this codec.
    fn options(self) -> Vec<&'static str> {
        let codec: &[&str] = match self {
            Codec::H264 => &[
                "-c:v",
                "libx264",
                "-crf",
                "18",
                "-preset",
                "medium",
                "-pix_fmt",
                "yuv420p",
                "-movflags",
                "+faststart",
            ],
            Codec::H265 => &[
                "-c:v",
                "libx265",
                "-crf",
                "20",
                "-pix_fmt",
                "yuv420p",
                "-tag:v",
                "hvc1",
                "-movflags",
                "+faststart",
            ],
            Codec::Prores => &[
                "-c:v",
                "prores_ks",
                "-profile:v",
                "3",
                "-pix_fmt",
                "yuv422p10le",
            ],
            Codec::Vp9 => &[
                "-c:v",
                "libvpx-vp9",
                "-crf",
                "30",
                "-b:v",
                "0",
                "-pix_fmt",
                "yuv420p",
            ],
            Codec::Ffv1 => &["-c:v", "ffv1", "-level", "3"],
        };
        // Chroma-subsampled formats need even sizes: `pad` adds a pixel where needed.
        let pad: &[&str] = match self {
            Codec::Ffv1 => &[],
            _ => &["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
        };
        [pad, codec].concat()
    }
}

pub async fn run(data_dir: &Path, args: VideoArgs) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let query = [("job", args.job.as_str()), ("frames", "none")];
    let status: StatusResponse = client.get_query("/v1/status", &query).await?;
    let view = match status.jobs.as_slice() {
        [one] => one,
        [] => bail!(
            "no job matches {:?}: `meshd status` lists them",
            super::printable(&args.job)
        ),
        _ => bail!(
            "{} jobs match {:?}: give more of the id",
            status.jobs.len(),
            super::printable(&args.job)
        ),
    };
    let Some(dir) = &view.out_dir else {
        bail!(
            "this daemon does not write job {}'s frames: run this on the submitting machine, or `meshd fetch {} --out DIR` first",
            super::printable(&view.name),
            &view.id[..12]
        );
    };
    let written = view.frames_written.unwrap_or(0);
    if written < view.frames_total {
        bail!(
            "job {} has {written} of {} frames in {}: wait for the rest (`meshd status`)",
            super::printable(&view.name),
            view.frames_total,
            dir.display()
        );
    }
    let out = args
        .out
        .unwrap_or_else(|| default_output(dir, &view.name, args.encoding.codec));
    encode(dir, view.frames_total, &out, args.encoding, args.force).await?;
    Ok(0)
}

/// `<dir>/<job name>.<ext>`, the name made safe as a file name.
pub(super) fn default_output(dir: &Path, job_name: &str, codec: Codec) -> PathBuf {
    let name: String = job_name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    let name = if name.is_empty() { "video" } else { name };
    dir.join(format!("{name}.{}", codec.extension()))
}

/// Encodes the `expected` frames (`frame_NNNN.<ext>`) of `dir` into `out`, in frame order,
/// with a progress bar. A clear error when ffmpeg is missing or fails.
pub(super) async fn encode(
    dir: &Path,
    expected: usize,
    out: &Path,
    enc: Encoding,
    force: bool,
) -> anyhow::Result<()> {
    let frames = frames_in(dir)?;
    if frames.len() != expected {
        bail!(
            "{} holds {} frames of the job's {expected}: remove stray frame files or fetch again",
            dir.display(),
            frames.len()
        );
    }
    if out.exists() && !force {
        bail!("{} exists: pass --force to replace it", out.display());
    }
    // ffmpeg's image sequence input wants consecutive numbers: link the frames in order.
    let seq = tempfile::tempdir().context("cannot make a temp dir")?;
    let ext = frames
        .first()
        .and_then(|(_, p)| p.extension())
        .and_then(|e| e.to_str())
        .unwrap_or("png")
        .to_string();
    for (i, (_, path)) in frames.iter().enumerate() {
        let abs = std::path::absolute(path)?;
        std::os::unix::fs::symlink(&abs, seq.path().join(format!("{i:08}.{ext}")))
            .context("cannot link the frames for ffmpeg")?;
    }
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-nostats"])
        .args(["-progress", "pipe:1"]);
    if ext == "exr" {
        // Linear EXR to sRGB, as Blender's view transform would show it (roughly).
        cmd.args(["-apply_trc", "iec61966_2_1"]);
    }
    cmd.args(["-framerate", &enc.fps.to_string(), "-i"])
        .arg(seq.path().join(format!("%08d.{ext}")))
        .args(enc.codec.options())
        .args(["-r", &enc.fps.to_string()])
        .arg(if force { "-y" } else { "-n" })
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "ffmpeg is not installed: install it (apt install ffmpeg, or scripts/install-deps.sh)"
        ),
        Err(e) => return Err(e).context("cannot run ffmpeg"),
    };
    let bar = indicatif::ProgressBar::new(frames.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} frames encoded  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if let Some(stdout) = child.stdout.take() {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line
                .strip_prefix("frame=")
                .and_then(|n| n.trim().parse().ok())
            {
                bar.set_position(n);
            }
        }
    }
    let output = child.wait_with_output().await.context("ffmpeg")?;
    bar.finish_and_clear();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        bail!(
            "ffmpeg failed ({}): {}",
            output.status,
            super::printable(last.trim())
        );
    }
    outln!(
        "{} frames at {} fps into {}",
        frames.len(),
        enc.fps,
        out.display()
    );
    Ok(())
}

/// The frame files of `dir` (`frame_NNNN.<ext>`), by frame number.
fn frames_in(dir: &Path) -> anyhow::Result<Vec<(u32, PathBuf)>> {
    let mut frames = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.rsplit_once('.') else {
            continue;
        };
        let image = crate::render::settings::FRAME_EXTENSIONS.contains(&ext);
        if let Some(n) = stem.strip_prefix("frame_").and_then(|n| n.parse().ok())
            && image
        {
            frames.push((n, e.path()));
        }
    }
    frames.sort();
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_in_order_and_names_made_safe() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "frame_0010.png",
            "frame_0002.png",
            "frame_12345.png",
            "notes.txt",
            "frame_x.png",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let f: Vec<u32> = frames_in(d.path())
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(f, [2, 10, 12345]);
        assert_eq!(
            default_output(Path::new("/o"), "../shot 1/a", Codec::Prores),
            Path::new("/o/_shot_1_a.mov")
        );
        assert_eq!(
            default_output(Path::new("/o"), "..", Codec::H264),
            Path::new("/o/video.mp4")
        );
    }
}
