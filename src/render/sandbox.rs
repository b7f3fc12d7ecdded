//! Blender's sandbox: every Blender a daemon starts for a job (and the device probe) runs
//! inside [bubblewrap](https://github.com/containers/bubblewrap) when it is installed.
//!
//! A `.blend` is code: drivers and text blocks run Python when scripts are allowed, and a
//! compositor's File Output node writes wherever its path says even when they are not. The
//! sandbox gives Blender a filesystem of its own:
//!
//! - the system (`/usr`, `/etc`, `/opt`, the `/lib*` and `/bin` dirs), `/sys` and Blender's
//!   own directory, read-only; a fresh `/proc`;
//! - a minimal `/dev` (null, zero, random, …) with the GPU devices (`/dev/nvidia*`,
//!   `/dev/dri`, `/dev/kfd`) and no terminal: `/dev/tty` is `/dev/null` and the daemon's
//!   terminal is out of reach, so nothing can be typed into it (TIOCSTI);
//! - a fresh, empty `/tmp` and `/dev/shm`; no `/home`, `/root`, `/run` or `/var`;
//! - the data dir hidden (identity, mesh key, other jobs, blobs), with the job's project
//!   read-only and the worker's own dirs (config, temp, output) writable inside it;
//! - no network (a namespace with only its own loopback), no other process visible, and an
//!   environment of a few known variables, so no API key or token of the daemon's
//!   environment reaches it.
//!
//! Blender stays in the daemon's session: a new one (`--new-session`) would put it in an
//! autogroup of its own, so that `nice meshd join` no longer lowered its CPU share and it
//! competed with the rest of the machine differently than unconfined (measured: 1.47x
//! slower next to a niced CPU hog in the daemon's session).
//!
//! Blender dies with the sandbox and the sandbox with the daemon (`--die-with-parent`; what
//! bubblewrap can leave behind despite it is killed at the next start, see [`super::leftovers`]).
//! `meshd join --no-sandbox` turns this off ([`Sandbox::Off`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use thiserror::Error;
use tokio::process::Command;

/// System directories shown read-only, when they exist. A symlink (`/bin` -> `usr/bin` on
/// merged-/usr systems) is recreated as the same symlink.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/nix",
];

/// Variables passed into the sandbox (prefixes end in `_`); everything else is dropped.
const KEEP_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "LD_LIBRARY_PATH",
    "OCIO",
    "LC_",
    "CUDA_",
    "NVIDIA_",
    "HIP_",
    "ROCR_",
    "ONEAPI_",
    "SYCL_",
    "__GL",
];

/// How Blender processes are confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// Blender runs with the daemon's user, files, network and environment.
    Off,
    /// Blender runs inside bubblewrap.
    Bwrap(Bwrap),
}

/// A working bubblewrap and what it hides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bwrap {
    /// The `bwrap` executable.
    pub program: PathBuf,
    /// Directories hidden behind an empty tmpfs even where a system dir would show them:
    /// the daemon's data dir.
    pub hide: Vec<PathBuf>,
    /// Extra read-only paths (`--sandbox-read`): a Blender started through a wrapper script
    /// whose interpreter lives elsewhere, say.
    pub read: Vec<PathBuf>,
}

/// What one sandboxed Blender may see besides the system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Read-only (the job's project).
    pub read: Vec<PathBuf>,
    /// Read-write (the worker's own dir, the output dir). The first is the working dir and
    /// `HOME`.
    pub write: Vec<PathBuf>,
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap ({program}) cannot make a sandbox here: {reason}; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), or run `meshd join --no-sandbox` to render unconfined"
    )]
    Unusable { program: String, reason: String },
}

impl Sandbox {
    /// The sandbox to use: [`Sandbox::Off`] when `disabled` or when bubblewrap is not
    /// installed (the caller warns), else a bubblewrap that was tried once and works (in a
    /// fresh dir under `scratch`, the daemon's private scratch dir, never the shared temp
    /// dir).
    pub async fn detect(
        disabled: bool,
        hide: Vec<PathBuf>,
        read: Vec<PathBuf>,
        scratch: &Path,
    ) -> Result<Sandbox, SandboxError> {
        if disabled {
            return Ok(Sandbox::Off);
        }
        let Some(program) = find_bwrap() else {
            return Ok(Sandbox::Off);
        };
        let bwrap = Bwrap {
            program,
            hide,
            read,
        };
        bwrap.try_once(scratch).await?;
        Ok(Sandbox::Bwrap(bwrap))
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Sandbox::Bwrap(_))
    }

    /// A command that runs `program` inside the sandbox with `view`; unconfined when off.
    /// The caller adds `program`'s own arguments and its environment.
    pub fn command(&self, program: &Path, view: &View) -> Command {
        match self {
            Sandbox::Off => Command::new(program),
            Sandbox::Bwrap(b) => {
                let mut cmd = Command::new(&b.program);
                cmd.args(b.args(program, view));
                cmd.env_clear();
                cmd.envs(std::env::vars_os().filter(|(k, _)| kept(k)));
                if let Some(home) = view.write.first() {
                    cmd.env("HOME", home);
                }
                cmd
            }
        }
    }
}

impl Bwrap {
    /// bubblewrap's arguments, up to and including `program` itself.
    pub fn args(&self, program: &Path, view: &View) -> Vec<OsString> {
        let mut a = Args::default();
        a.flags(&["--die-with-parent", "--unshare-all", "--cap-drop", "ALL"]);
        for dir in SYSTEM_DIRS {
            let p = Path::new(dir);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        a.pair("--symlink", &target, p);
                    }
                }
                Ok(m) if m.is_dir() => a.pair("--ro-bind", p, p),
                _ => {}
            }
        }
        a.one("--dev", Path::new("/dev"));
        a.pair("--ro-bind", Path::new("/dev/null"), Path::new("/dev/tty"));
        for gpu in gpu_devices() {
            a.pair("--dev-bind", &gpu, &gpu);
        }
        a.one("--proc", Path::new("/proc"));
        a.pair("--ro-bind-try", Path::new("/sys"), Path::new("/sys"));
        a.one("--tmpfs", Path::new("/tmp"));
        a.one("--tmpfs", Path::new("/dev/shm"));
        for h in &self.hide {
            a.one("--tmpfs", h);
        }
        // Blender's own directory (a tarball keeps its libraries and `X.Y/` next to the
        // binary), where its symlinks lead: the binary is started by that path, so the
        // directory holding a symlink to it (a home dir, say) stays hidden.
        let program = resolve(program);
        let mut read: Vec<PathBuf> = program
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| vec![d.to_path_buf()])
            .unwrap_or_default();
        read.extend(self.read.iter().chain(&view.read).map(|p| absolute(p)));
        for r in &read {
            a.pair("--ro-bind-try", r, r);
        }
        for w in &view.write {
            let w = absolute(w);
            a.pair("--bind", &w, &w);
        }
        if let Some(w) = view.write.first() {
            a.one("--chdir", &absolute(w));
        }
        a.0.push("--".into());
        a.0.push(program.into());
        a.0
    }

    /// Runs `true` in a sandbox once, so that a bubblewrap that cannot work here (no user
    /// namespaces in a container) is found at start, not at the first frame.
    async fn try_once(&self, scratch: &Path) -> Result<(), SandboxError> {
        let unusable = |reason: String| SandboxError::Unusable {
            program: self.program.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(scratch).map_err(|e| unusable(e.to_string()))?;
        let scratch = tempfile::Builder::new()
            .prefix("sandbox-")
            .tempdir_in(scratch)
            .map_err(|e| unusable(e.to_string()))?;
        let view = View {
            read: Vec::new(),
            write: vec![scratch.path().to_path_buf()],
        };
        let truth = ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap_or(Path::new("true"));
        let out = Sandbox::Bwrap(self.clone())
            .command(truth, &view)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(20), out)
            .await
            .map_err(|_| unusable("it did not answer within 20 s".into()))?
            .map_err(|e| unusable(e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        Err(unusable(format!("{} ({})", line.trim(), out.status)))
    }
}

/// The GPU device nodes of this machine: NVIDIA's (`/dev/nvidia*`), DRM (`/dev/dri`) and
/// AMD's compute device (`/dev/kfd`).
fn gpu_devices() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("nvidia") || name == "dri" || name == "kfd"
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flags(&mut self, f: &[&str]) {
        self.0.extend(f.iter().map(OsString::from));
    }
    fn one(&mut self, flag: &str, p: &Path) {
        self.0.push(flag.into());
        self.0.push(p.into());
    }
    fn pair(&mut self, flag: &str, a: &Path, b: &Path) {
        self.0.push(flag.into());
        self.0.push(a.into());
        self.0.push(b.into());
    }
}

/// `program` as an absolute path with its symlinks resolved, looked up on `PATH` when it is a
/// bare name.
fn resolve(program: &Path) -> PathBuf {
    let found = if program.components().count() == 1 {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
    } else {
        None
    };
    let p = found.unwrap_or_else(|| absolute(program));
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn kept(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    KEEP_ENV.iter().any(|k| {
        if k.ends_with('_') || *k == "__GL" {
            name.starts_with(k)
        } else {
            name == *k
        }
    })
}

/// `bwrap` on `PATH`, or in `/usr/bin`.
fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("bwrap"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bwrap() -> Bwrap {
        Bwrap {
            program: "/usr/bin/bwrap".into(),
            hide: vec!["/data/meshd".into()],
            read: vec!["/opt/extra".into()],
        }
    }

    fn strings(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    /// The position of `flag a b` (or `flag a`) in `args`.
    fn find(args: &[String], want: &[&str]) -> Option<usize> {
        args.windows(want.len()).position(|w| w == want)
    }

    #[test]
    fn the_data_dir_is_hidden_before_the_job_dirs_are_shown() {
        let view = View {
            read: vec!["/data/meshd/work/j/project".into()],
            write: vec![
                "/data/meshd/work/j/worker-0".into(),
                "/data/meshd/work/j/out-0".into(),
            ],
        };
        let args = strings(&bwrap().args(Path::new("/opt/blender-9/blender"), &view));
        let hide = find(&args, &["--tmpfs", "/data/meshd"]).expect("data dir hidden");
        let tmp = find(&args, &["--tmpfs", "/tmp"]).expect("fresh /tmp");
        let project = find(
            &args,
            &[
                "--ro-bind-try",
                "/data/meshd/work/j/project",
                "/data/meshd/work/j/project",
            ],
        )
        .expect("project read-only");
        let work = find(
            &args,
            &[
                "--bind",
                "/data/meshd/work/j/worker-0",
                "/data/meshd/work/j/worker-0",
            ],
        )
        .expect("worker dir writable");
        let out = find(
            &args,
            &[
                "--bind",
                "/data/meshd/work/j/out-0",
                "/data/meshd/work/j/out-0",
            ],
        )
        .expect("output writable");
        // bubblewrap mounts in order: a later mount covers an earlier one.
        assert!(tmp < hide && hide < project && hide < work && hide < out);
        assert!(find(&args, &["--ro-bind-try", "/opt/extra", "/opt/extra"]).is_some());
        assert!(find(&args, &["--chdir", "/data/meshd/work/j/worker-0"]).is_some());
        for flag in ["--unshare-all", "--die-with-parent"] {
            assert!(args.contains(&flag.to_string()), "{flag}");
        }
        assert!(
            !args.contains(&"--new-session".to_string()),
            "stays in the daemon's session"
        );
        let dev = find(&args, &["--dev", "/dev"]).expect("a minimal /dev");
        let tty = find(&args, &["--ro-bind", "/dev/null", "/dev/tty"]).expect("no terminal");
        assert!(dev < tty);
        assert_eq!(&args[args.len() - 2..], ["--", "/opt/blender-9/blender"]);
        assert!(
            find(
                &args,
                &["--ro-bind-try", "/opt/blender-9", "/opt/blender-9"]
            )
            .is_some()
        );
        // Nothing writable but the view.
        let writable: Vec<&String> = args
            .windows(2)
            .filter(|w| w[0] == "--bind")
            .map(|w| &w[1])
            .collect();
        assert_eq!(writable.len(), 2, "{args:?}");
        assert!(
            !args
                .iter()
                .any(|a| a == "/home" || a == "/root" || a == "/run")
        );
    }

    #[test]
    fn only_known_variables_pass() {
        for k in [
            "PATH",
            "LANG",
            "LC_ALL",
            "CUDA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES",
        ] {
            assert!(kept(std::ffi::OsStr::new(k)), "{k}");
        }
        for k in [
            "VAST_API_KEY",
            "CLORE_API_KEY",
            "HOME",
            "SSH_AUTH_SOCK",
            "PATHX",
            "AWS_SECRET",
        ] {
            assert!(!kept(std::ffi::OsStr::new(k)), "{k}");
        }
    }
}
