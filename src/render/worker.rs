//! The persistent Blender worker: one Blender process loads the scene once and renders
//! frame after frame on command (see the module docs of [`crate::render`] for the protocol).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;

use super::blendfile::{BlendFileError, check_blend_file};
use super::discover::write_project_modules;
use super::probe::{PYTHON_EXIT_CODE, private_env};
pub use super::process::FrameLog;
use super::process::{Blender, Outcome, one_line};
use super::sandbox::{Sandbox, View};
use super::settings::{DeviceKind, Engine, RenderSettings};
use super::verify::check_image;

/// The embedded driver script.
pub const DRIVER_PY: &str = include_str!("driver.py");
/// Least time Blender gets to load a scene and report `ready`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a job's project lies on this machine, for the driver's remap and checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectLayout {
    /// The project root on the submitting machine.
    pub root_submit: String,
    /// The same root here.
    pub root_here: PathBuf,
    /// Every file that existed at submit, relative to the root.
    pub files: Vec<String>,
}

impl ProjectLayout {
    pub fn of(c: &crate::transfer::checkout::Checkout) -> Self {
        ProjectLayout {
            root_submit: c.manifest.root.clone(),
            root_here: c.root_here.clone(),
            files: c.manifest.files.iter().map(|f| f.path.clone()).collect(),
        }
    }
}

/// Everything a [`Worker`] needs; one worker serves one job on one device.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub blender: PathBuf,
    /// The `.blend` to render.
    pub scene: PathBuf,
    /// The project the scene belongs to: its dependencies are remapped and checked after load.
    pub project: Option<ProjectLayout>,
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
    /// `--simulate-render`: run no Blender, take this long per frame (see
    /// [`super::simulate`]). A benchmarking aid only.
    pub simulate: Option<Duration>,
    /// The job's frame size when its submitter knew it (`JobSpec::size`): simulated frames
    /// are made at it, as the submitter checks every frame's size.
    pub frame_size: Option<(u32, u32)>,
    /// Where Blender runs: inside bubblewrap it sees the project read-only and may write
    /// only to `work_dir` and the output dir.
    pub sandbox: Sandbox,
}

/// A frame Blender wrote and meshd checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedFrame {
    pub frame: u32,
    pub path: PathBuf,
    /// Its thumbnail ([`super::thumb`]), next to it; `None` when none could be made (a
    /// multilayer EXR).
    pub thumb: Option<PathBuf>,
    pub width: u32,
    pub height: u32,
    /// From the render command to Blender's answer (scene loading excluded).
    pub render_ms: u64,
}

/// A frame Blender wrote, not checked yet ([`Worker::render_unchecked`]).
#[derive(Debug)]
pub struct Unchecked {
    frame: u32,
    path: PathBuf,
    render_ms: u64,
    /// The output size from Blender's `ready` event.
    expected_size: Option<(u32, u32)>,
    allow_blank: bool,
    /// Checked already (a simulated frame).
    checked: Option<RenderedFrame>,
}

impl Unchecked {
    fn checked(rf: RenderedFrame) -> Self {
        Unchecked {
            frame: rf.frame,
            path: rf.path.clone(),
            render_ms: rf.render_ms,
            expected_size: None,
            allow_blank: true,
            checked: Some(rf),
        }
    }

    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// From the render command to Blender's answer.
    pub fn render_ms(&self) -> u64 {
        self.render_ms
    }

    /// Checks the image ([`check_image`]: it decodes, has the size Blender announced, is
    /// not blank unless the job allows it) and writes its thumbnail next to it. Blocking:
    /// it decodes the whole frame.
    pub fn check(self) -> Result<RenderedFrame, FrameError> {
        if let Some(rf) = self.checked {
            return Ok(rf);
        }
        let frame = self.frame;
        let c = check_image(&self.path, self.expected_size, self.allow_blank)
            .map_err(|reason| FrameError::Output { frame, reason })?;
        let thumb = c
            .image
            .as_ref()
            .and_then(|img| super::thumb::write_for(img, &self.path));
        Ok(RenderedFrame {
            frame,
            path: self.path,
            thumb,
            width: c.size.0,
            height: c.size.1,
            render_ms: self.render_ms,
        })
    }
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
    /// The scene file is missing or not a `.blend`; checked before Blender starts.
    #[error(transparent)]
    Scene(#[from] BlendFileError),
    /// The output directory cannot be used (not creatable, or not UTF-8 / has `#{}`).
    #[error("{0}")]
    OutputDir(String),
    /// Blender could not be started, or exited or hung before the driver was ready.
    #[error("{reason}")]
    Start {
        reason: String,
        log_tail: Vec<String>,
    },
    /// The job's settings do not fit this scene or Blender (camera, scene, format, device).
    #[error("job settings cannot be applied: {0}")]
    Settings(String),
    /// A file the scene needs, present at submit, did not resolve after load.
    #[error("{}{}", .0.first().map(String::as_str).unwrap_or("missing dependency"),
        if .0.len() > 1 { format!(" (and {} more)", .0.len() - 1) } else { String::new() })]
    MissingDependency(Vec<String>),
    /// Blender rendered but reported an error for the frame; it stays running.
    #[error("{reason}")]
    Blender { frame: u32, reason: String },
    /// Blender exited or was killed mid-frame; the next frame starts a new one.
    #[error("{reason}")]
    Crashed {
        frame: u32,
        reason: String,
        /// Blender's `*.crash.txt`, when it wrote one.
        crash_log: Option<PathBuf>,
        log_tail: Vec<String>,
    },
    /// The frame ran past [`WorkerConfig::frame_timeout`]; Blender was killed.
    #[error("frame {frame} took longer than {limit:?}; Blender was stopped")]
    Timeout { frame: u32, limit: Duration },
    /// Blender said done, but the image failed [`check_image`].
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
    project: Option<&'a ProjectLayout>,
}

/// A persistent Blender for one job. Starts Blender on first use; dropping it kills Blender.
pub struct Worker {
    config: WorkerConfig,
    proc: Option<Blender>,
    /// The output dir `proc` was started with: a sandboxed Blender can write nowhere else.
    proc_out: PathBuf,
    /// Set while a frame is in flight; still set on entry means a `render` was dropped.
    busy: bool,
    /// The lines of the frame being rendered (or the last one), across Blender restarts.
    log: FrameLog,
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Self {
        Worker {
            config,
            proc: None,
            proc_out: PathBuf::new(),
            busy: false,
            log: FrameLog::default(),
        }
    }

    /// Blender's lines of the frame being rendered, readable while it renders.
    pub fn frame_log(&self) -> FrameLog {
        self.log.clone()
    }

    /// The running Blender's process id, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Blender::pid)
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
        let written = self.render_unchecked(frame, out_dir, progress).await?;
        // Decoding a large frame takes a while: off the runtime's threads.
        tokio::task::spawn_blocking(move || written.check())
            .await
            .map_err(|e| FrameError::Output {
                frame,
                reason: format!("the output check crashed: {e}"),
            })?
    }

    /// Renders `frame` like [`render`](Self::render), without checking the image yet: the
    /// caller checks it ([`Unchecked::check`]) while Blender goes on with the next frame.
    pub async fn render_unchecked(
        &mut self,
        frame: u32,
        out_dir: &Path,
        progress: Option<&UnboundedSender<FrameProgress>>,
    ) -> Result<Unchecked, FrameError> {
        if self.busy {
            tracing::warn!(
                frame,
                "previous render was abandoned mid-frame: restarting Blender"
            );
            if let Some(p) = self.proc.take() {
                p.kill().await;
            }
        }
        if let Some(secs) = self.config.simulate {
            let seed = self.config.scene.to_string_lossy().into_owned();
            let size = self.config.frame_size;
            let rf = super::simulate::render(seed.as_bytes(), frame, secs, size, out_dir).await?;
            return Ok(Unchecked::checked(rf));
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
    ) -> Result<Unchecked, FrameError> {
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

        // A Blender that died while idle is replaced without failing this frame.
        if let Some(p) = self.proc.as_mut()
            && let Some(status) = p.try_exited()
        {
            tracing::warn!(%status, tail = ?p.tail, "idle Blender exited: restarting it");
            self.proc = None;
        }
        if self.config.sandbox.is_on()
            && self.proc_out != out_dir
            && let Some(p) = self.proc.take()
        {
            // Its sandbox cannot write to the new output dir.
            p.quit().await;
        }
        if self.proc.is_none() {
            self.proc = Some(self.start(&out_dir).await?);
            self.proc_out = out_dir.clone();
        }
        let proc = self.proc.as_mut().ok_or_else(|| FrameError::Start {
            reason: "Blender is not running".into(),
            log_tail: Vec::new(),
        })?;
        if !proc.missing_deps.is_empty() {
            return Err(FrameError::MissingDependency(proc.missing_deps.clone()));
        }
        if let Some(e) = &proc.settings_error {
            return Err(FrameError::Settings(e.clone()));
        }
        let timeout = self.config.frame_timeout;
        let outcome = proc.run_frame(frame, &pattern, timeout, progress).await;
        save_frame_log(&self.config.work_dir, frame, &proc.frame_log.lines());
        let (path, render_ms) = match outcome {
            Outcome::Done(path, ms) => (path, ms),
            Outcome::Failed(reason) => return Err(FrameError::Blender { frame, reason }),
            Outcome::TimedOut => {
                if let Some(p) = self.proc.take() {
                    p.kill().await;
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
        let written = Unchecked {
            frame,
            path,
            render_ms,
            expected_size: proc.size,
            allow_blank: self.config.settings.allow_blank,
            checked: None,
        };
        proc.frames += 1;
        self.maybe_recycle();
        Ok(written)
    }

    /// Quits Blender (in the background) when it has rendered enough frames or grown too big.
    fn maybe_recycle(&mut self) {
        let Some(p) = &self.proc else { return };
        let max = self.config.max_frames_per_process;
        let rss = p.rss_mib();
        let too_big = matches!((rss, self.config.max_rss_mib), (Some(r), Some(m)) if r > m);
        if (max > 0 && p.frames >= max) || too_big {
            tracing::info!(frames = p.frames, rss_mib = ?rss, "recycling Blender");
            if let Some(p) = self.proc.take() {
                tokio::spawn(p.quit());
            }
        }
    }

    /// Asks Blender to quit and waits for it (killing it after a grace period).
    pub async fn shutdown(mut self) {
        if let Some(p) = self.proc.take() {
            if self.busy {
                p.kill().await;
            } else {
                p.quit().await;
            }
        }
    }

    async fn start(&self, out_dir: &Path) -> Result<Blender, FrameError> {
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
        write_project_modules(&c.work_dir).map_err(io)?;
        let job = c.work_dir.join("meshd_job.json");
        std::fs::write(
            &job,
            serde_json::to_vec(&self.driver_config()).map_err(|e| io(e.into()))?,
        )
        .map_err(io)?;
        let scene = std::path::absolute(&c.scene).map_err(io)?;

        let view = View {
            read: vec![match &c.project {
                Some(p) => p.root_here.clone(),
                None => scene.parent().unwrap_or(&scene).to_path_buf(),
            }],
            write: vec![c.work_dir.clone(), out_dir.to_path_buf()],
        };
        let mut cmd = c.sandbox.command(&c.blender, &view);
        cmd.args(["-b", "--factory-startup"])
            .arg(if c.scripts_allowed { "-y" } else { "-Y" })
            .arg("-noaudio")
            // Blender 5.0 prints per-frame progress (`Fra:`, `Sample a/b`) only with the
            // `render` log category on; earlier versions print it anyway and accept the flag.
            .args(["--log", "render"])
            .arg(&scene)
            .arg("--python-exit-code")
            .arg(PYTHON_EXIT_CODE.to_string())
            .arg("--python")
            .arg(&driver)
            .arg("--")
            .arg("--meshd-config")
            .arg(&job);
        private_env(&mut cmd, &c.work_dir);
        let mut proc = Blender::spawn(cmd, self.log.clone()).map_err(|e| FrameError::Start {
            reason: format!("cannot run Blender at {}: {e}", c.blender.display()),
            log_tail: Vec::new(),
        })?;
        tracing::info!(pid = ?proc.pid(), scene = %scene.display(), "started Blender");
        let limit = c.frame_timeout.unwrap_or_default().max(STARTUP_TIMEOUT);
        match tokio::time::timeout(limit, proc.wait_ready()).await {
            Ok(Ok(())) => Ok(proc),
            Ok(Err(last_error)) => {
                let status = proc.exit_status().await;
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
                proc.kill().await;
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
            project: self.config.project.as_ref(),
        }
    }
}

/// Where a worker keeps the Blender log of its last attempt at `frame`.
fn frame_log_path(work_dir: &Path, frame: u32) -> PathBuf {
    work_dir.join("logs").join(format!("frame_{frame:04}.log"))
}

/// Keeps `lines` as the log of `frame` (`meshd logs`); a failure to write only loses it.
fn save_frame_log(work_dir: &Path, frame: u32, lines: &[String]) {
    let path = frame_log_path(work_dir, frame);
    let text: String = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    let written =
        std::fs::create_dir_all(work_dir.join("logs")).and_then(|()| std::fs::write(&path, text));
    if let Err(e) = written {
        tracing::debug!("cannot keep the log of frame {frame}: {e}");
    }
}

/// The Blender log of this peer's last attempt at `frame` of the job whose worker dirs
/// (`worker-<slot>`) lie in `job_dir`: the newest of them.
pub fn read_frame_log(job_dir: &Path, frame: u32) -> Option<Vec<String>> {
    let newest = std::fs::read_dir(job_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .map(|e| frame_log_path(&e.path(), frame))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()?;
    let text = std::fs::read_to_string(newest.1).ok()?;
    Some(text.lines().map(str::to_string).collect())
}

/// The error for a Blender that exited (or closed its output) mid-frame.
async fn exited_error(
    p: Option<Blender>,
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
    let status = p.exit_status().await;
    let crash_log = crash_log.or_else(|| p.find_crash_log(&config.work_dir.join("tmp")));
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

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
