//! The persistent Blender worker: one Blender process loads the scene once and renders
//! frame after frame on command (see the module docs of [`crate::render`] for the protocol).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::blendfile::{BlendFileError, check_blend_file};
use super::logparse::{LogEvent, parse_line};
use super::probe::{MARKER, PYTHON_EXIT_CODE, private_env};
use super::settings::{DeviceKind, Engine, RenderSettings};
use super::verify::verify_image;

/// The embedded driver script.
pub const DRIVER_PY: &str = include_str!("driver.py");
/// Least time Blender gets to load a scene and report `ready`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Time a Blender told to quit gets before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// Least interval between two progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Log lines kept for crash reports.
const TAIL_LINES: usize = 50;

/// Everything a [`Worker`] needs; one worker serves one job on one device.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub blender: PathBuf,
    /// The `.blend` to render.
    pub scene: PathBuf,
    /// A private directory for Blender's config dirs, temp dir and the driver files.
    pub work_dir: PathBuf,
    pub settings: RenderSettings,
    pub device: DeviceKind,
    /// Cycles device id of the one GPU to use; `None` uses every device of `device`'s kind.
    pub device_id: Option<String>,
    /// Let Python in the `.blend` run (`-y`); otherwise `-Y`.
    pub scripts_allowed: bool,
    /// Restart Blender after this many frames; 0 means never.
    pub max_frames_per_process: u32,
    /// Restart Blender after a frame that leaves its resident memory above this.
    pub max_rss_mib: Option<u64>,
    /// Longest a frame may take, and also the least Blender gets to load the scene.
    pub frame_timeout: Option<Duration>,
}

/// A frame Blender wrote and meshd checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedFrame {
    pub frame: u32,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// From the render command to Blender's answer (scene loading excluded).
    pub render_ms: u64,
}

/// Sampling progress of the frame being rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameProgress {
    pub frame: u32,
    pub current: u32,
    pub total: u32,
    /// Cycles' estimate of the time left, when it gave one.
    pub remaining_secs: Option<f64>,
}

/// Why a frame failed. [`FrameError::reason`] gives one line for users and the ledger.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error(transparent)]
    Scene(#[from] BlendFileError),
    #[error("{0}")]
    OutputDir(String),
    #[error("{reason}")]
    Start {
        reason: String,
        log_tail: Vec<String>,
    },
    #[error("job settings cannot be applied: {0}")]
    Settings(String),
    #[error("{reason}")]
    Blender { frame: u32, reason: String },
    #[error("{reason}")]
    Crashed {
        frame: u32,
        reason: String,
        crash_log: Option<PathBuf>,
        log_tail: Vec<String>,
    },
    #[error("frame {frame} took longer than {limit:?}; Blender was stopped")]
    Timeout { frame: u32, limit: Duration },
    #[error("{reason}")]
    Output { frame: u32, reason: String },
}

impl FrameError {
    /// One line saying why: Blender's own `Error:` line when it printed one.
    pub fn reason(&self) -> String {
        one_line(&self.to_string())
    }

    /// Blender's last output lines, for crash reports.
    pub fn log_tail(&self) -> &[String] {
        match self {
            FrameError::Start { log_tail, .. } | FrameError::Crashed { log_tail, .. } => log_tail,
            _ => &[],
        }
    }
}

fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join("; ")
}

/// Settings the driver applies at start, as `driver.py` reads them.
#[derive(Serialize)]
struct DriverConfig<'a> {
    scene: Option<&'a str>,
    camera: Option<&'a str>,
    engine: Option<&'static str>,
    format: &'static str,
    color_depth: Option<u8>,
    resolution_pct: Option<u16>,
    samples: Option<u32>,
    device: &'static str,
    device_id: Option<&'a str>,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event {
    Ready {
        width: Option<u32>,
        height: Option<u32>,
        error: Option<String>,
    },
    Done {
        frame: u32,
        path: PathBuf,
    },
    Error {
        frame: Option<u32>,
        message: String,
    },
}

/// A running Blender that said `ready`.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: UnboundedReceiver<String>,
    size: Option<(u32, u32)>,
    settings_error: Option<String>,
    tail: VecDeque<String>,
    started: SystemTime,
    frames: u32,
}

impl Proc {
    fn remember(&mut self, line: &str) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }
}

/// How one frame on a live process ended, before output checks.
enum Outcome {
    Done(PathBuf, u64),
    Failed(String),
    Exited(Option<String>, Option<PathBuf>),
    TimedOut,
}

/// A persistent Blender for one job. Starts Blender on first use; dropping it kills Blender.
pub struct Worker {
    config: WorkerConfig,
    proc: Option<Proc>,
    /// Set while a frame is in flight; still set on entry means a `render` was dropped.
    busy: bool,
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Self {
        Worker {
            config,
            proc: None,
            busy: false,
        }
    }

    /// The running Blender's process id, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.child.id())
    }

    /// Renders `frame` to `out_dir/frame_####.<ext>` and checks the image.
    ///
    /// Cancel-safe: if this future is dropped mid-frame, the next call kills that Blender
    /// and starts a new one. A Blender that dies or times out is replaced on the next call.
    pub async fn render(
        &mut self,
        frame: u32,
        out_dir: &Path,
        progress: Option<&UnboundedSender<FrameProgress>>,
    ) -> Result<RenderedFrame, FrameError> {
        if self.busy {
            tracing::warn!(
                frame,
                "previous render was abandoned mid-frame: restarting Blender"
            );
            if let Some(p) = self.proc.take() {
                kill(p).await;
            }
        }
        self.busy = true;
        let result = self.render_inner(frame, out_dir, progress).await;
        self.busy = false;
        result
    }

    async fn render_inner(
        &mut self,
        frame: u32,
        out_dir: &Path,
        progress: Option<&UnboundedSender<FrameProgress>>,
    ) -> Result<RenderedFrame, FrameError> {
        let out_dir = std::path::absolute(out_dir)
            .map_err(|e| FrameError::OutputDir(format!("bad output directory: {e}")))?;
        let pattern = out_dir.join("frame_####");
        let pattern = match pattern.to_str() {
            Some(p) if !out_dir.to_string_lossy().contains(['#', '{', '}']) => p.to_string(),
            _ => {
                return Err(FrameError::OutputDir(format!(
                    "output directory {} must be UTF-8 without '#', '{{' or '}}'",
                    out_dir.display()
                )));
            }
        };
        std::fs::create_dir_all(&out_dir).map_err(|e| {
            FrameError::OutputDir(format!("cannot create {}: {e}", out_dir.display()))
        })?;
        let ext = self.config.settings.format.extension();
        let expected = out_dir.join(format!("frame_{frame:04}.{ext}"));

        if self.proc.is_none() {
            self.proc = Some(self.start().await?);
        }
        let proc = self.proc.as_mut().ok_or_else(|| FrameError::Start {
            reason: "Blender is not running".into(),
            log_tail: Vec::new(),
        })?;
        if let Some(e) = &proc.settings_error {
            return Err(FrameError::Settings(e.clone()));
        }
        let outcome = run_frame(proc, frame, &pattern, self.config.frame_timeout, progress).await;
        let (path, render_ms) = match outcome {
            Outcome::Done(path, ms) => (path, ms),
            Outcome::Failed(reason) => return Err(FrameError::Blender { frame, reason }),
            Outcome::TimedOut => {
                if let Some(p) = self.proc.take() {
                    kill(p).await;
                }
                let limit = self.config.frame_timeout.unwrap_or_default();
                return Err(FrameError::Timeout { frame, limit });
            }
            Outcome::Exited(last_error, crash_log) => {
                let p = self.proc.take();
                return Err(exited_error(p, frame, last_error, crash_log, &self.config).await);
            }
        };
        if path != expected {
            return Err(FrameError::Output {
                frame,
                reason: format!(
                    "Blender wrote {} instead of {}",
                    path.display(),
                    expected.display()
                ),
            });
        }
        let allow_blank = self.config.settings.allow_blank;
        let (width, height) = verify_image(&path, proc.size, allow_blank)
            .map_err(|reason| FrameError::Output { frame, reason })?;
        proc.frames += 1;
        self.maybe_recycle();
        Ok(RenderedFrame {
            frame,
            path,
            width,
            height,
            render_ms,
        })
    }

    /// Quits Blender (in the background) when it has rendered enough frames or grown too big.
    fn maybe_recycle(&mut self) {
        let Some(p) = &self.proc else { return };
        let max = self.config.max_frames_per_process;
        let rss = p.child.id().and_then(rss_mib);
        let too_big = matches!((rss, self.config.max_rss_mib), (Some(r), Some(m)) if r > m);
        if (max > 0 && p.frames >= max) || too_big {
            tracing::info!(frames = p.frames, rss_mib = ?rss, "recycling Blender");
            if let Some(p) = self.proc.take() {
                tokio::spawn(quit(p));
            }
        }
    }

    /// Asks Blender to quit and waits for it (killing it after a grace period).
    pub async fn shutdown(mut self) {
        if let Some(p) = self.proc.take() {
            if self.busy {
                kill(p).await;
            } else {
                quit(p).await;
            }
        }
    }

    async fn start(&self) -> Result<Proc, FrameError> {
        let c = &self.config;
        check_blend_file(&c.scene)?;
        let io = |e: std::io::Error| FrameError::Start {
            reason: format!("cannot prepare {}: {e}", c.work_dir.display()),
            log_tail: Vec::new(),
        };
        for sub in ["config", "scripts", "datafiles", "tmp"] {
            std::fs::create_dir_all(c.work_dir.join(sub)).map_err(io)?;
        }
        let driver = c.work_dir.join("meshd_driver.py");
        std::fs::write(&driver, DRIVER_PY).map_err(io)?;
        let job = c.work_dir.join("meshd_job.json");
        std::fs::write(
            &job,
            serde_json::to_vec(&self.driver_config()).map_err(|e| io(e.into()))?,
        )
        .map_err(io)?;
        let scene = std::path::absolute(&c.scene).map_err(io)?;

        let mut cmd = Command::new(&c.blender);
        cmd.args(["-b", "--factory-startup"])
            .arg(if c.scripts_allowed { "-y" } else { "-Y" })
            .arg("-noaudio")
            .arg(&scene)
            .arg("--python-exit-code")
            .arg(PYTHON_EXIT_CODE.to_string())
            .arg("--python")
            .arg(&driver)
            .arg("--")
            .arg("--meshd-config")
            .arg(&job)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        private_env(&mut cmd, &c.work_dir);
        let started = SystemTime::now();
        let mut child = cmd.spawn().map_err(|e| FrameError::Start {
            reason: format!("cannot run Blender at {}: {e}", c.blender.display()),
            log_tail: Vec::new(),
        })?;
        tracing::info!(pid = ?child.id(), scene = %scene.display(), "started Blender");
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, tx));
        }
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io(std::io::ErrorKind::BrokenPipe.into()))?;
        let mut proc = Proc {
            child,
            stdin,
            lines,
            size: None,
            settings_error: None,
            tail: VecDeque::new(),
            started,
            frames: 0,
        };
        let limit = c.frame_timeout.unwrap_or_default().max(STARTUP_TIMEOUT);
        match tokio::time::timeout(limit, wait_ready(&mut proc)).await {
            Ok(Ok(())) => Ok(proc),
            Ok(Err(last_error)) => {
                let status = exit_status(&mut proc.child).await;
                let reason = match last_error {
                    Some(e) => format!("Blender: Error: {e}"),
                    None => format!(
                        "Blender {status} before it was ready{}",
                        proc.tail
                            .back()
                            .map(|l| format!(": {l}"))
                            .unwrap_or_default()
                    ),
                };
                Err(FrameError::Start {
                    reason,
                    log_tail: proc.tail.into(),
                })
            }
            Err(_) => {
                let log_tail = proc.tail.clone().into();
                kill(proc).await;
                Err(FrameError::Start {
                    reason: format!("Blender did not load the scene within {limit:?}"),
                    log_tail,
                })
            }
        }
    }

    fn driver_config(&self) -> DriverConfig<'_> {
        let s = &self.config.settings;
        DriverConfig {
            scene: s.scene.as_deref(),
            camera: s.camera.as_deref(),
            engine: s.engine.map(|e| match e {
                Engine::Cycles => "CYCLES",
                Engine::Eevee => "EEVEE",
                Engine::Workbench => "WORKBENCH",
            }),
            format: s.format.blender_name(),
            color_depth: s.color_depth,
            resolution_pct: s.resolution_pct,
            samples: s.samples,
            device: self.config.device.blender_name(),
            device_id: self.config.device_id.as_deref(),
        }
    }
}

/// Sends each line of `r` (lossily decoded) to `tx` until end of stream.
async fn forward_lines(r: impl AsyncRead + Unpin, tx: UnboundedSender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if tx.send(line.trim_end().to_string()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads until the `ready` event; `Err(last Blender error)` if Blender exits first.
async fn wait_ready(p: &mut Proc) -> Result<(), Option<String>> {
    let mut last_error = None;
    while let Some(line) = p.lines.recv().await {
        if let Some(json) = line.strip_prefix(MARKER) {
            if let Ok(Event::Ready {
                width,
                height,
                error,
            }) = serde_json::from_str(json)
            {
                p.size = width.zip(height);
                p.settings_error = error;
                tracing::debug!(size = ?p.size, error = ?p.settings_error, "Blender ready");
                return Ok(());
            }
            continue;
        }
        p.remember(&line);
        for ev in parse_line(&line) {
            if let LogEvent::Error(e) = ev {
                last_error = Some(e);
            }
        }
    }
    Err(last_error)
}

async fn run_frame(
    p: &mut Proc,
    frame: u32,
    pattern: &str,
    timeout: Option<Duration>,
    progress: Option<&UnboundedSender<FrameProgress>>,
) -> Outcome {
    let cmd = serde_json::json!({"cmd": "render", "frame": frame, "out": pattern});
    let sent = Instant::now();
    let (mut last_error, mut crash_log) = (None, None);
    let mut line = cmd.to_string();
    line.push('\n');
    if let Err(e) = p.stdin.write_all(line.as_bytes()).await {
        tracing::warn!("cannot send to Blender: {e}");
        return Outcome::Exited(None, None);
    }
    if p.stdin.flush().await.is_err() {
        return Outcome::Exited(None, None);
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut remaining, mut last_sent) = (None, None::<Instant>);
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, p.lines.recv()).await {
                Ok(next) => next,
                Err(_) => return Outcome::TimedOut,
            },
            None => p.lines.recv().await,
        };
        let Some(line) = next else {
            return Outcome::Exited(last_error, crash_log);
        };
        if let Some(json) = line.strip_prefix(MARKER) {
            match serde_json::from_str::<Event>(json) {
                Ok(Event::Done { frame: f, path }) if f == frame => {
                    return Outcome::Done(path, sent.elapsed().as_millis() as u64);
                }
                Ok(Event::Error { frame: f, message }) if f.is_none_or(|f| f == frame) => {
                    return Outcome::Failed(match last_error {
                        Some(e) => format!("Blender: Error: {e}"),
                        None => format!("Blender: {}", one_line(&message)),
                    });
                }
                other => tracing::debug!("ignoring driver event {other:?}"),
            }
            continue;
        }
        tracing::trace!(target: "meshd::blender", "{line}");
        p.remember(&line);
        for ev in parse_line(&line) {
            let (current, total) = match ev {
                LogEvent::Sample { current, total } | LogEvent::EeveeSample { current, total } => {
                    (current, total)
                }
                LogEvent::Remaining(s) => {
                    remaining = Some(s);
                    continue;
                }
                LogEvent::Error(e) => {
                    last_error = Some(e);
                    continue;
                }
                LogEvent::CrashLog(path) => {
                    crash_log = Some(PathBuf::from(path));
                    continue;
                }
                _ => continue,
            };
            let Some(tx) = progress else { continue };
            if last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL) || current == total {
                last_sent = Some(Instant::now());
                let remaining_secs = if current == total {
                    Some(0.0)
                } else {
                    remaining
                };
                let _ = tx.send(FrameProgress {
                    frame,
                    current,
                    total,
                    remaining_secs,
                });
            }
        }
    }
}

/// The error for a Blender that exited (or closed its output) mid-frame.
async fn exited_error(
    p: Option<Proc>,
    frame: u32,
    last_error: Option<String>,
    crash_log: Option<PathBuf>,
    config: &WorkerConfig,
) -> FrameError {
    let Some(mut p) = p else {
        return FrameError::Crashed {
            frame,
            reason: format!("Blender vanished while rendering frame {frame}"),
            crash_log,
            log_tail: Vec::new(),
        };
    };
    let status = exit_status(&mut p.child).await;
    let crash_log = crash_log.or_else(|| find_crash_log(&config.work_dir.join("tmp"), p.started));
    let mut reason = format!("Blender {status} while rendering frame {frame}");
    if let Some(e) = &last_error {
        reason.push_str(&format!(": Error: {e}"));
    } else if let Some(c) = &crash_log {
        reason.push_str(&format!(" (crash report {})", c.display()));
    }
    tracing::warn!(frame, %reason, tail = ?p.tail, "Blender died");
    FrameError::Crashed {
        frame,
        reason,
        crash_log,
        log_tail: p.tail.into(),
    }
}

/// "crashed (signal 9)", "exited with code 1", after waiting a little for the exit.
async fn exit_status(child: &mut Child) -> String {
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = child.start_kill();
            return "stopped answering".into();
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("crashed (signal {sig})");
        }
    }
    match status.code() {
        Some(c) => format!("exited with code {c}"),
        None => format!("exited ({status})"),
    }
}

/// The newest `*.crash.txt` in `dir` written after `since`.
fn find_crash_log(dir: &Path, since: SystemTime) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".crash.txt"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(t, _)| *t >= since)
        .max()
        .map(|(_, p)| p)
}

/// Resident memory of a process in MiB (Linux `/proc`; `None` elsewhere).
fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

async fn kill(mut p: Proc) {
    let _ = p.child.start_kill();
    let _ = tokio::time::timeout(QUIT_GRACE, p.child.wait()).await;
}

async fn quit(mut p: Proc) {
    let _ = p.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
    let _ = p.stdin.flush().await;
    drop(p.stdin);
    if tokio::time::timeout(QUIT_GRACE, p.child.wait())
        .await
        .is_err()
    {
        tracing::warn!("Blender did not quit in time: killing it");
        let _ = p.child.start_kill();
        let _ = p.child.wait().await;
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
