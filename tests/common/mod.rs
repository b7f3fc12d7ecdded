//! Test harness: daemons as separate processes of the built binary on 127.0.0.1, each with its
//! own data dir, killed when the test ends (pass or fail). Waits are bounded polls of a
//! condition, never fixed sleeps.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshd");

/// Polls `cond` every 100 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// The Blender the tests use: $BLENDER or `blender` on PATH. Missing Blender fails the test.
pub fn blender() -> PathBuf {
    if let Some(b) = std::env::var_os("BLENDER") {
        return PathBuf::from(b);
    }
    let ok = Command::new("blender")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match ok {
        Ok(s) if s.success() => PathBuf::from("blender"),
        _ => panic!(
            "Blender is required for this test: install it (apt-get install blender) or set BLENDER"
        ),
    }
}

/// Generates the test scene with the project's own script.
pub fn make_scene(
    dir: &Path,
    name: &str,
    frames: u32,
    width: u32,
    height: u32,
    samples: u32,
) -> PathBuf {
    let out = dir.join(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_demo_scene.py");
    let status = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio", "--python"])
        .arg(&script)
        .arg("--")
        .arg(&out)
        .args([
            "--frames",
            &frames.to_string(),
            "--width",
            &width.to_string(),
        ])
        .args([
            "--height",
            &height.to_string(),
            "--samples",
            &samples.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run blender");
    assert!(status.success() && out.is_file(), "scene generation failed");
    out
}

/// Where a test daemon runs, and how it is told its data dir.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// On 127.0.0.1, its data dir an absolute path.
    Loopback,
    /// On 127.0.0.1, started from the test's root with its data dir relative to it.
    Relative,
    /// In network namespace `.0`, listening on all its interfaces, with mDNS.
    Netns(&'a str),
}

pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Network namespace the daemon (and its CLI calls) run in.
    netns: Option<String>,
}

/// A command for the meshd binary, inside `netns` when given.
fn meshd_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    }
}

impl Daemon {
    /// Starts `meshd join` with its data dir under `root`, and waits until its API answers.
    pub fn start(root: &Path, name: &str, ticket: Option<&str>, extra: &[&str]) -> Daemon {
        Self::start_env(root, name, ticket, extra, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables (the `test-faults` switches).
    pub fn start_env(
        root: &Path,
        name: &str,
        ticket: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::start_with(root, name, ticket, Place::Loopback, extra, env)
    }

    /// Like [`Daemon::start`], run from `root` with its data dir given relative to it
    /// (`--data-dir NAME`), as a user in that folder would.
    pub fn start_relative(root: &Path, name: &str, ticket: Option<&str>, extra: &[&str]) -> Daemon {
        Self::start_with(root, name, ticket, Place::Relative, extra, &[])
    }

    /// Starts a daemon inside network namespace `ns`, listening on all its interfaces, with mDNS.
    pub fn start_in_netns(
        root: &Path,
        name: &str,
        ns: &str,
        ticket: Option<&str>,
        extra: &[&str],
    ) -> Daemon {
        Self::start_with(root, name, ticket, Place::Netns(ns), extra, &[])
    }

    fn start_with(
        root: &Path,
        name: &str,
        ticket: Option<&str>,
        place: Place,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let loopback = [
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
        ];
        let (net_args, netns): (&[&str], _) = match place {
            Place::Loopback | Place::Relative => (&loopback, None),
            Place::Netns(ns) => (
                &["--listen", "/ip4/0.0.0.0/tcp/0", "--api", "127.0.0.1:0"],
                Some(ns),
            ),
        };
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = root.join(format!("{name}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = meshd_command(netns);
        match place {
            Place::Relative => cmd.current_dir(root).arg("--data-dir").arg(name),
            Place::Loopback | Place::Netns(_) => cmd.arg("--data-dir").arg(&dir),
        };
        cmd.arg("join");
        if let Some(t) = ticket {
            cmd.arg(t);
        }
        cmd.args(net_args)
            .args(extra)
            .env("BLENDER", blender())
            .env("RUST_LOG", "info,libp2p_gossipsub=error")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let child = cmd.spawn().expect("spawn meshd");
        let d = Daemon {
            name: name.into(),
            dir,
            child: Some(child),
            log,
            netns: netns.map(String::from),
        };
        d.wait_ready();
        d
    }

    /// Restarts a killed daemon with the same data dir.
    pub fn restart(&mut self, root: &Path, extra: &[&str]) {
        self.restart_env(root, extra, &[]);
    }

    /// Restarts a killed daemon with the same data dir and extra environment variables.
    pub fn restart_env(&mut self, root: &Path, extra: &[&str], env: &[(&str, &str)]) {
        self.kill();
        let name = self.name.clone();
        let fresh = Daemon::start_env(root, &name, None, extra, env);
        *self = fresh;
    }

    fn wait_ready(&self) {
        wait_until(
            Duration::from_secs(30),
            &format!("{} to answer on its API", self.name),
            || {
                let out = self.cli(&["invite", "--json"]);
                out.status.success()
            },
        );
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        meshd_command(self.netns.as_deref())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run meshd")
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("valid JSON")
    }

    pub fn ticket(&self) -> String {
        self.cli_json(&["invite", "--json"])["ticket"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn peer_id(&self) -> String {
        let peers = self.cli_json(&["peers", "--json"]);
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["self"] == true)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Ids of the peers this daemon is connected to.
    pub fn connected_peers(&self) -> Vec<String> {
        let peers = self.cli_json(&["peers", "--json"]);
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["self"] == false && p["connected"] == true)
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Peers (self included) that this daemon sees able to render.
    pub fn renderers(&self) -> usize {
        let peers = self.cli_json(&["peers", "--json"]);
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["can_render"] == true)
            .count()
    }

    pub fn status(&self) -> Value {
        self.cli_json(&["status", "--json"])
    }

    /// The job's status (with its frames, also once archived), or `Null` if unknown here.
    pub fn job(&self, id: &str) -> Value {
        let out = self.cli(&["status", id, "--json"]);
        if !out.status.success() {
            return Value::Null;
        }
        let s: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        s["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without terminal colours: `key=value` fields read as written.
    pub fn plain_log(&self) -> String {
        let log = self.log();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // Skip an escape sequence: ESC [ … final letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Kills the daemon (SIGKILL), and then the sandboxes bubblewrap may leave behind when
    /// its daemon dies at the wrong moment (see `meshd::render::leftovers`): a restarted
    /// daemon would clean them up, and a test that ends here does the same. Done here, not
    /// when the value is dropped: `restart` drops it with the new daemon already running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // A sandbox being started as its daemon died may appear just after a sweep.
            for _ in 0..5 {
                if meshd::render::leftovers::kill_leftover_sandboxes(&self.dir) == 0 {
                    break;
                }
            }
        }
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|mut c| c.wait().ok())
            .and_then(|s| s.code())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Submits `scene` with `frames` from `d`; returns the job id.
pub fn submit(d: &Daemon, scene: &Path, frames: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "submit",
        scene.to_str().unwrap(),
        frames,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    d.cli_json(&args)["id"].as_str().unwrap().to_string()
}

/// Generates the production-like test project (shot + linked library + textures by relative
/// and absolute paths + UDIM tiles + an image sequence) under `dir` with the project's script.
pub fn make_project(dir: &Path, frames: u32, width: u32, height: u32, samples: u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_test_project.py");
    let out = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio", "--python"])
        .arg(&script)
        .arg("--")
        .arg(dir)
        .args(["--frames", &frames.to_string()])
        .args([
            "--width",
            &width.to_string(),
            "--height",
            &height.to_string(),
        ])
        .args(["--samples", &samples.to_string()])
        .output()
        .expect("run blender");
    assert!(
        out.status.success() && dir.join("shots/shot.blend").is_file(),
        "project generation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Blender's own render of `scene`'s frames `first..=last` into `out` (`frame_####.png`).
pub fn reference_render(scene: &Path, out: &Path, first: u32, last: u32) {
    let status = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio"])
        .arg(scene)
        .arg("-o")
        .arg(out.join("frame_####"))
        .args([
            "-F",
            "PNG",
            "-s",
            &first.to_string(),
            "-e",
            &last.to_string(),
            "-a",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run blender");
    assert!(status.success(), "reference render failed");
}

/// Mean absolute difference per channel (0-255) between two images of the same size.
pub fn image_diff(a: &Path, b: &Path) -> f64 {
    let a = image::open(a)
        .unwrap_or_else(|e| panic!("{}: {e}", a.display()))
        .to_rgba8();
    let b = image::open(b)
        .unwrap_or_else(|e| panic!("{}: {e}", b.display()))
        .to_rgba8();
    assert_eq!(a.dimensions(), b.dimensions(), "images differ in size");
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// Asserts that each of `frames` in `out` (`frame_####.png`) is Blender's own render in
/// `reference`: a mean difference under 1 (of 255) per channel.
pub fn assert_like_blender(out: &Path, reference: &Path, frames: impl IntoIterator<Item = u32>) {
    for f in frames {
        let name = format!("frame_{f:04}.png");
        let diff = image_diff(&out.join(&name), &reference.join(&name));
        assert!(
            diff < 1.0,
            "{} differs from Blender's own render (mean diff {diff:.2})",
            out.join(&name).display()
        );
    }
}

/// Asserts that `dir` holds exactly `frames` as valid PNGs of `size` and nothing else.
pub fn assert_frames(dir: &Path, frames: &[u32], size: (u32, u32)) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = frames.iter().map(|f| format!("frame_{f:04}.png")).collect();
    want.sort();
    assert_eq!(names, want, "output dir holds exactly one file per frame");
    for n in &names {
        let img = image::open(dir.join(n)).unwrap_or_else(|e| panic!("{n} does not decode: {e}"));
        assert_eq!((img.width(), img.height()), size, "{n} has the wrong size");
    }
}

/// Pids of the direct children of `pid` (Linux /proc).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Field 4 is the parent pid; the command name (field 2) may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Every process below `pid`: its children, theirs, and so on (a sandboxed Blender is a
/// grandchild of its daemon, under bubblewrap).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in child_pids(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A two-host LAN made of network namespaces joined by a veth pair (10.201.x.1 and .2 on a
/// /24, multicast routed on it), deleted when dropped. Needs root and iproute2.
pub struct TestLan {
    pub ns: [String; 2],
    veth: [String; 2],
}

impl TestLan {
    /// `None` (with a note on stderr) when not root: namespaces need CAP_NET_ADMIN.
    pub fn new() -> Option<TestLan> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref() != Some("0") {
            eprintln!(
                "SKIPPED: this test builds network namespaces and needs root (CI runs as root)"
            );
            return None;
        }
        Some(Self::create())
    }

    fn create() -> TestLan {
        let tag = std::process::id() % 100_000;
        let ns = [format!("meshd-a-{tag}"), format!("meshd-b-{tag}")];
        let veth = [format!("mda{tag}"), format!("mdb{tag}")];
        let net = 100 + tag % 150;
        let lan = TestLan {
            ns: ns.clone(),
            veth: veth.clone(),
        };
        let ip = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("run ip (install iproute2)");
            assert!(st.success(), "ip {args:?} failed (these tests need root)");
        };
        // Leftovers of an earlier run killed before its cleanup (same pid, reused): remove.
        for n in &ns {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &veth[0]])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns[0]]);
        ip(&["netns", "add", &ns[1]]);
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ]);
        for i in 0..2 {
            ip(&["link", "set", &veth[i], "netns", &ns[i]]);
            let addr = format!("10.201.{net}.{}/24", i + 1);
            ip(&["-n", &ns[i], "addr", "add", &addr, "dev", &veth[i]]);
            ip(&[
                "-n",
                &ns[i],
                "link",
                "set",
                &veth[i],
                "up",
                "multicast",
                "on",
            ]);
            ip(&["-n", &ns[i], "link", "set", "lo", "up"]);
            ip(&["-n", &ns[i], "route", "add", "224.0.0.0/4", "dev", &veth[i]]);
        }
        lan
    }
}

impl TestLan {
    /// Cuts the link between the two hosts: nothing passes until [`TestLan::heal`].
    pub fn cut(&self) {
        let st = Command::new("ip")
            .args(["-n", &self.ns[0], "link", "set", &self.veth[0], "down"])
            .status()
            .expect("run ip");
        assert!(st.success(), "cutting the link failed");
    }

    /// Brings the link back (with its multicast route).
    pub fn heal(&self) {
        let st = Command::new("ip")
            .args(["-n", &self.ns[0], "link", "set", &self.veth[0], "up"])
            .status()
            .expect("run ip");
        assert!(st.success(), "healing the link failed");
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.ns[0],
                "route",
                "replace",
                "224.0.0.0/4",
                "dev",
                &self.veth[0],
            ])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for TestLan {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Python for [`with_python`] that leaves `autorun.ran` in Blender's temp dir (`$TMPDIR`,
/// inside the worker's dir), the one place a sandboxed Blender may write besides its output.
pub const AUTORUN_MARKER: &str =
    "import os, pathlib\npathlib.Path(os.environ['TMPDIR'], 'autorun.ran').write_text('ran')\n";

/// Saves a copy of `scene` as `out` after running Blender Python `setup` on it (`bpy` is
/// imported).
pub fn edit_scene(scene: &Path, out: &Path, setup: &str) {
    let script = out.with_extension("py");
    std::fs::write(
        &script,
        format!(
            "import bpy\n{setup}\nbpy.ops.wm.save_as_mainfile(filepath={out:?})\n",
            out = out.to_str().unwrap(),
        ),
    )
    .unwrap();
    let st = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio"])
        .arg(scene)
        .args(["--python-exit-code", "1", "--python"])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        st.success() && out.is_file(),
        "cannot make {}",
        out.display()
    );
}

/// Saves a copy of `scene` as `out` with extra Blender Python run before saving (`setup`,
/// may be empty) and a text block holding `autorun`, registered to run when the file loads
/// with scripts allowed.
pub fn with_python_setup(scene: &Path, out: &Path, setup: &str, autorun: &str) {
    edit_scene(
        scene,
        out,
        &format!(
            "{setup}\n\
             t = bpy.data.texts.new('autorun.py')\n\
             t.write({autorun:?})\n\
             t.use_module = True\n"
        ),
    );
}

/// [`with_python_setup`] without setup.
pub fn with_python(scene: &Path, out: &Path, autorun: &str) {
    with_python_setup(scene, out, "", autorun);
}

/// The first file called `name` under `dir`, at any depth.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name() == name {
                return Some(p);
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    None
}
