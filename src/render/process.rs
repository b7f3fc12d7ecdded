//! One running Blender that speaks the driver protocol (see [`crate::render`]): spawning
//! it, reading its output, sending render commands, and ending it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::logparse::{LogEvent, parse_line};
use super::probe::MARKER;
use super::worker::FrameProgress;

/// Time a Blender told to quit gets before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// Least interval between two progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Log lines kept for crash reports.
const TAIL_LINES: usize = 50;
/// Most lines of one frame's log kept ([`Blender::frame_log`]), and most bytes of a line.
const FRAME_LOG_LINES: usize = 400;
const FRAME_LOG_LINE_BYTES: usize = 500;

/// Blender's lines since the current (or last) frame's render command: the last
/// [`FRAME_LOG_LINES`], each cut to [`FRAME_LOG_LINE_BYTES`]. Shared, so the daemon can
/// read the log of a frame while it renders (`meshd logs`).
#[derive(Clone, Debug, Default)]
pub struct FrameLog(std::sync::Arc<std::sync::Mutex<VecDeque<String>>>);

impl FrameLog {
    /// A copy of the lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn push(&self, line: &str) {
        let Ok(mut l) = self.0.lock() else { return };
        if l.len() == FRAME_LOG_LINES {
            l.pop_front();
        }
        let mut cut = line.len().min(FRAME_LOG_LINE_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        l.push_back(line[..cut].to_string());
    }

    fn clear(&self) {
        if let Ok(mut l) = self.0.lock() {
            l.clear();
        }
    }
}

/// A driver event (`@@MESHD@@ {json}`).
#[derive(Deserialize, Debug)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event {
    Ready {
        width: Option<u32>,
        height: Option<u32>,
        error: Option<String>,
        /// Dependencies that did not resolve after load (`missing dependency PATH`).
        #[serde(default)]
        missing: Vec<String>,
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

/// How one frame ended, before output checks.
pub(super) enum Outcome {
    /// The driver said `done`: Blender's output path and the time since the command.
    Done(PathBuf, u64),
    /// The driver said `error`: a one-line reason.
    Failed(String),
    /// Blender's output ended: its last `Error:` line and crash report, if any.
    Exited(Option<String>, Option<PathBuf>),
    TimedOut,
}

/// A running Blender with the driver loaded.
pub(super) struct Blender {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: UnboundedReceiver<String>,
    /// Output size from the `ready` event.
    pub size: Option<(u32, u32)>,
    /// Settings problem from the `ready` event; fails every frame.
    pub settings_error: Option<String>,
    /// Dependencies that did not resolve (from the `ready` event); fail every frame.
    pub missing_deps: Vec<String>,
    /// Last [`TAIL_LINES`] lines of output.
    pub tail: VecDeque<String>,
    /// Blender's lines since the current (or last) frame's render command.
    pub frame_log: FrameLog,
    pub started: SystemTime,
    /// Frames rendered successfully.
    pub frames: u32,
}

impl Blender {
    /// Spawns `cmd` with piped stdio (killed when dropped) and starts reading its output;
    /// each frame's lines go to `frame_log`.
    pub fn spawn(mut cmd: Command, frame_log: FrameLog) -> std::io::Result<Blender> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let started = SystemTime::now();
        let mut child = cmd.spawn()?;
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, tx));
        }
        Ok(Blender {
            stdin: child.stdin.take(),
            child,
            lines,
            size: None,
            settings_error: None,
            missing_deps: Vec::new(),
            tail: VecDeque::new(),
            frame_log,
            started,
            frames: 0,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if Blender has already exited.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident memory in MiB (Linux `/proc`; `None` elsewhere).
    pub fn rss_mib(&self) -> Option<u64> {
        tree_rss_kib(self.pid()?, 0).map(|kib| kib / 1024)
    }

    fn remember(&mut self, line: &str) {
        self.frame_log.push(line);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    /// Reads until the `ready` event; `Err(last Blender error)` if Blender's output ends first.
    pub async fn wait_ready(&mut self) -> Result<(), Option<String>> {
        let mut last_error = None;
        while let Some(line) = self.lines.recv().await {
            if let Some(json) = line.strip_prefix(MARKER) {
                if let Ok(Event::Ready {
                    width,
                    height,
                    error,
                    missing,
                }) = serde_json::from_str(json)
                {
                    self.size = width.zip(height);
                    self.settings_error = error;
                    self.missing_deps = missing;
                    tracing::debug!(size = ?self.size, error = ?self.settings_error, "Blender ready");
                    return Ok(());
                }
                continue;
            }
            self.remember(&line);
            for ev in parse_line(&line) {
                if let LogEvent::Error(e) = ev {
                    last_error = Some(e);
                }
            }
        }
        Err(last_error)
    }

    /// Sends one render command and reads until its answer, Blender's exit, or `timeout`.
    pub async fn run_frame(
        &mut self,
        frame: u32,
        pattern: &str,
        timeout: Option<Duration>,
        progress: Option<&UnboundedSender<FrameProgress>>,
    ) -> Outcome {
        let mut cmd =
            serde_json::json!({"cmd": "render", "frame": frame, "out": pattern}).to_string();
        cmd.push('\n');
        self.frame_log.clear();
        let sent = Instant::now();
        if let Err(e) = self.send(&cmd).await {
            tracing::warn!("cannot send to Blender: {e}");
            return Outcome::Exited(None, None);
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let (mut last_error, mut crash_log) = (None, None);
        let (mut remaining, mut last_sent) = (None, None::<Instant>);
        let mut sent_current = 0u32;
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.lines.recv()).await {
                    Ok(next) => next,
                    Err(_) => return Outcome::TimedOut,
                },
                None => self.lines.recv().await,
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
            self.remember(&line);
            for ev in parse_line(&line) {
                let (current, total) = match ev {
                    LogEvent::Sample { current, total }
                    | LogEvent::EeveeSample { current, total } => (current, total),
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
                // Throttled, but the first real sample and the last always go out: Blender 4.x
                // prints `Sample 1/N` and then nothing until `Sample N/N`.
                let first_real = current > 0 && sent_current == 0;
                if last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL)
                    || current == total
                    || first_real
                {
                    last_sent = Some(Instant::now());
                    sent_current = current;
                    let done = current == total;
                    let _ = tx.send(FrameProgress {
                        frame,
                        current,
                        total,
                        remaining_secs: if done { Some(0.0) } else { remaining },
                    });
                }
            }
        }
    }

    async fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or(std::io::ErrorKind::BrokenPipe)?;
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    }

    /// "crashed (signal 9)", "exited with code 1", after waiting a little for the exit.
    pub async fn exit_status(&mut self) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(s)) => s,
            _ => {
                let _ = self.child.start_kill();
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

    /// The newest `*.crash.txt` in `dir` written since this Blender started.
    pub fn find_crash_log(&self, dir: &Path) -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".crash.txt"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .filter(|(t, _)| *t >= self.started)
            .max()
            .map(|(_, p)| p)
    }

    /// Kills Blender and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(QUIT_GRACE, self.child.wait()).await;
    }

    /// Asks Blender to quit, and kills it if it has not within [`QUIT_GRACE`].
    pub async fn quit(mut self) {
        let _ = self.send("{\"cmd\":\"quit\"}\n").await;
        self.stdin = None; // end of stdin also ends the driver's loop
        if tokio::time::timeout(QUIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("Blender did not quit in time: killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// Joins the non-empty lines of `s` with "; ".
pub(super) fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join("; ")
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

/// Asks the kernel to kill Blender when the daemon dies, even by SIGKILL, so a crashed daemon
/// never leaves a Blender rendering (and a rented GPU busy) behind.
/// A daemon that dies between the fork and the `prctl` would go unnoticed: the child then
/// checks that its parent is still the daemon, and gives up if not.
#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let daemon = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe and touch only the child's own
    // process state.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != daemon {
                return Err(std::io::Error::other("the daemon is gone"));
            }
            Ok(())
        });
    }
}

/// Resident memory of `pid` and its descendants (a sandboxed Blender is a grandchild of
/// the process meshd started), from `/proc`.
fn tree_rss_kib(pid: u32, depth: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let own = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let below: u64 = if depth < 8 {
        children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .filter_map(|c| tree_rss_kib(c, depth + 1))
            .sum()
    } else {
        0
    };
    Some(own + below)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_cmd: &mut Command) {}
