//! Finding Blender and asking it what it can render with.
//!
//! [`probe`] runs Blender once in the background with the embedded `probe.py`, which
//! prints one line `@@MESHD@@ {json}`: the version, every Cycles device of every compute
//! backend compiled into the build, and whether Cycles has OpenImageDenoise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::process::Command;

use super::sandbox::{Sandbox, View};
use super::settings::DeviceKind;

/// The embedded probe script.
pub const PROBE_PY: &str = include_str!("probe.py");
/// Prefix of the lines the embedded Python scripts print for meshd.
pub const MARKER: &str = "@@MESHD@@ ";
/// Exit code Blender uses when an embedded script raises (`--python-exit-code`).
pub const PYTHON_EXIT_CODE: i32 = 86;
/// How long a probe may take: Blender starts in a few seconds, GPU enumeration may add more.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why Blender could not be found or probed.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("Blender not found at {0}: check the path given with --blender")]
    ExplicitMissing(PathBuf),
    #[error("Blender not found at {0}: fix or unset the BLENDER environment variable")]
    EnvMissing(PathBuf),
    #[error(
        "Blender not found: install Blender (e.g. `apt install blender`), put `blender` on PATH, \
         or set BLENDER=/path/to/blender"
    )]
    NotFound,
    #[error("cannot run Blender at {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the Blender probe: {0}")]
    Io(#[from] std::io::Error),
    #[error("Blender at {0} did not answer the probe within {1:?}")]
    Timeout(PathBuf, Duration),
    #[error("Blender at {path} gave no probe result ({status}); last output: {tail}")]
    NoResult {
        path: PathBuf,
        status: String,
        tail: String,
    },
    #[error(
        "Blender at {path} runs, but not in the sandbox renders run in ({status}; last \
         output: {tail}): it needs files the sandbox does not show, or environment variables \
         the sandbox does not pass on. Name the folders it needs with --sandbox-read DIR (where a launcher \
         script, its Python or its libraries lie), or pass --no-sandbox"
    )]
    HiddenBySandbox {
        path: PathBuf,
        status: String,
        tail: String,
    },
    #[error("Blender's probe result is malformed: {0}")]
    BadJson(String),
}

/// One Cycles compute device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub name: String,
    /// Cycles' device id (e.g. `CUDA_NVIDIA GeForce RTX 4090_0000:01:00`), used to pick one GPU.
    pub id: String,
    /// Device memory in MiB, when known: from `nvidia-smi` for CUDA/OptiX devices
    /// (Blender itself does not report it).
    pub memory_mib: Option<u64>,
}

/// What a Blender installation offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlenderInfo {
    pub path: PathBuf,
    /// `bpy.app.version_string`, e.g. `3.4.1` or `4.2.3 LTS`.
    pub version: String,
    /// Every Cycles device of every backend; the same GPU may appear under OPTIX and CUDA.
    /// Always holds at least one CPU entry.
    pub devices: Vec<DeviceInfo>,
    /// Cycles was built with OpenImageDenoise.
    pub has_oidn: bool,
}

impl BlenderInfo {
    /// The preferred device kind present: OPTIX > CUDA > HIP > ONEAPI > METAL > CPU.
    pub fn best_device(&self) -> DeviceKind {
        DeviceKind::PREFERENCE
            .into_iter()
            .find(|k| self.devices.iter().any(|d| d.kind == *k))
            .unwrap_or(DeviceKind::Cpu)
    }

    /// The devices of one kind.
    pub fn devices_of(&self, kind: DeviceKind) -> impl Iterator<Item = &DeviceInfo> {
        self.devices.iter().filter(move |d| d.kind == kind)
    }
}

/// Picks the Blender executable: `explicit`, else `$BLENDER`, else `blender` on `PATH`.
pub fn find_blender(explicit: Option<&Path>) -> Result<PathBuf, ProbeError> {
    if let Some(p) = explicit {
        return resolve(p).ok_or_else(|| ProbeError::ExplicitMissing(p.to_path_buf()));
    }
    if let Some(env) = std::env::var_os("BLENDER").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(env);
        return resolve(&p).ok_or(ProbeError::EnvMissing(p));
    }
    let exe = if cfg!(windows) {
        "blender.exe"
    } else {
        "blender"
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(exe);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let mac = Path::new("/Applications/Blender.app/Contents/MacOS/Blender");
    if cfg!(target_os = "macos") && is_executable(mac) {
        return Ok(mac.to_path_buf());
    }
    Err(ProbeError::NotFound)
}

/// An existing executable file at `p`; a bare name (`blender-4.2`) is looked up on `PATH`.
fn resolve(p: &Path) -> Option<PathBuf> {
    if is_executable(p) {
        return Some(p.to_path_buf());
    }
    if p.components().count() == 1 {
        let path = std::env::var_os("PATH")?;
        return std::env::split_paths(&path)
            .map(|d| d.join(p))
            .find(|c| is_executable(c));
    }
    None
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Sets the environment that keeps Blender away from the user's own config and temp dirs.
pub(crate) fn private_env(cmd: &mut Command, dir: &Path) {
    cmd.env("BLENDER_USER_CONFIG", dir.join("config"))
        .env("BLENDER_USER_SCRIPTS", dir.join("scripts"))
        .env("BLENDER_USER_DATAFILES", dir.join("datafiles"))
        .env("TMPDIR", dir.join("tmp"))
        .env("TMP", dir.join("tmp"))
        .env("TEMP", dir.join("tmp"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONNOUSERSITE", "1");
}

/// Runs Blender with the embedded probe script and returns what it reported. The script
/// and Blender's scratch files live in a fresh directory under `scratch` (the daemon's
/// private `<data dir>/tmp`) with an unpredictable name, made by this process alone: no
/// other local user can put a script where Blender will run it.
pub async fn probe(
    blender: &Path,
    scratch: &Path,
    sandbox: &Sandbox,
) -> Result<BlenderInfo, ProbeError> {
    std::fs::create_dir_all(scratch)?;
    let dir = tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(scratch)?;
    std::fs::create_dir_all(dir.path().join("tmp"))?;
    let result = match run_probe(blender, dir.path(), sandbox).await {
        // A launcher script or a Python venv whose target lies outside what the sandbox
        // shows fails there alone: say so, and what to do, rather than "no result". Only
        // when even `--version` fails in the sandbox and works outside it: a Blender that
        // starts in the sandbox and fails later fails for another reason.
        Err(ProbeError::NoResult { path, status, tail })
            if sandbox.is_on()
                && !prints_version(
                    sandbox.command(blender, &probe_view(dir.path())),
                    dir.path(),
                )
                .await
                && prints_version(Command::new(blender), dir.path()).await =>
        {
            Err(ProbeError::HiddenBySandbox { path, status, tail })
        }
        other => other,
    };
    if let Err(e) = dir.close() {
        tracing::debug!("cannot remove the probe dir: {e}");
    }
    let mut info = result?;
    if info
        .devices
        .iter()
        .any(|d| matches!(d.kind, DeviceKind::Cuda | DeviceKind::Optix))
    {
        attach_nvidia_memory(&mut info.devices).await;
    }
    Ok(info)
}

/// Fills `memory_mib` of CUDA/OptiX devices from `nvidia-smi`, matched by PCI address;
/// leaves them `None` when `nvidia-smi` is missing or says nothing usable.
async fn attach_nvidia_memory(devices: &mut [DeviceInfo]) {
    let run = Command::new("nvidia-smi")
        .args([
            "--query-gpu=pci.bus_id,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => out,
        other => {
            tracing::debug!("nvidia-smi gave no memory sizes: {other:?}");
            return;
        }
    };
    let table = parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout));
    for d in devices {
        if let Some(pci) = pci_location(&d.id) {
            d.memory_mib = table.iter().find(|(p, _)| *p == pci).map(|(_, m)| *m);
        }
    }
}

/// Parses `pci.bus_id, memory.total` lines (`00000000:01:00.0, 24564`) into
/// (`0000:01:00`, MiB) pairs, the PCI form Cycles puts in its device ids.
pub fn parse_nvidia_smi(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .filter_map(|l| {
            let (bus, mem) = l.split_once(',')?;
            let mem = mem.trim().parse().ok()?;
            let (domain, rest) = bus.trim().split_once(':')?;
            let domain = domain.get(domain.len().checked_sub(4)?..)?;
            let rest = rest.split('.').next()?;
            Some((format!("{domain}:{rest}").to_ascii_lowercase(), mem))
        })
        .collect()
}

/// The `dddd:bb:dd` PCI location at the end of a Cycles GPU id
/// (`CUDA_NVIDIA GeForce RTX 4090_0000:01:00`, optionally followed by `_OptiX`).
fn pci_location(id: &str) -> Option<String> {
    let id = id.strip_suffix("_OptiX").unwrap_or(id);
    let loc = id.rsplit('_').next()?;
    let parts: Vec<&str> = loc.split(':').collect();
    let ok = parts.len() == 3
        && [4, 2, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| loc.to_ascii_lowercase())
}

async fn run_probe(
    blender: &Path,
    dir: &Path,
    sandbox: &Sandbox,
) -> Result<BlenderInfo, ProbeError> {
    let script = dir.join("probe.py");
    std::fs::write(&script, PROBE_PY)?;
    // In the same sandbox as the renders, so that the devices found are those they see.
    let mut cmd = sandbox.command(blender, &probe_view(dir));
    cmd.args(["-b", "--factory-startup", "-noaudio", "--python-exit-code"])
        .arg(PYTHON_EXIT_CODE.to_string())
        .arg("--python")
        .arg(&script)
        .stderr(Stdio::piped());
    probe_command(&mut cmd, dir);
    let child = cmd.spawn().map_err(|source| ProbeError::Spawn {
        path: blender.to_path_buf(),
        source,
    })?;
    let out = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| ProbeError::Timeout(blender.to_path_buf(), PROBE_TIMEOUT))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse_probe_output(&stdout, blender) {
        Err(ProbeError::NoResult { path, tail, .. }) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail = if stderr.trim().is_empty() {
                tail
            } else {
                last_lines(&stderr, 3)
            };
            Err(ProbeError::NoResult {
                path,
                status: out.status.to_string(),
                tail,
            })
        }
        other => other,
    }
}

/// A probe's Blender: no stdin, stdout read, its own scratch `dir`, and it dies with the
/// daemon.
fn probe_command(cmd: &mut Command, dir: &Path) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    private_env(cmd, dir);
    super::process::die_with_parent(cmd);
}

/// What the probe's Blender sees of the machine: its own scratch `dir`, writable.
fn probe_view(dir: &Path) -> View {
    View {
        read: Vec::new(),
        write: vec![dir.to_path_buf()],
    }
}

/// Whether `cmd`, a Blender with the probe's environment (scratch `dir`), prints its
/// version with `--version` (which loads no file and runs no script of anyone's).
async fn prints_version(mut cmd: Command, dir: &Path) -> bool {
    cmd.arg("--version").stderr(Stdio::null());
    probe_command(&mut cmd, dir);
    match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(out)) => {
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Blender")
        }
        _ => false,
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[derive(Deserialize)]
struct RawProbe {
    version: String,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    has_oidn: bool,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct RawDevice {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    id: String,
    #[serde(default)]
    memory_mib: Option<u64>,
}

/// Parses the output of `probe.py` (the last `@@MESHD@@` line); `path` is recorded as is.
pub fn parse_probe_output(out: &str, path: &Path) -> Result<BlenderInfo, ProbeError> {
    let Some(json) = out
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(MARKER))
    else {
        return Err(ProbeError::NoResult {
            path: path.to_path_buf(),
            status: "no marker line".into(),
            tail: last_lines(out, 3),
        });
    };
    let raw: RawProbe =
        serde_json::from_str(json).map_err(|e| ProbeError::BadJson(e.to_string()))?;
    for e in &raw.errors {
        tracing::warn!(blender = %path.display(), "probe: {e}");
    }
    let mut devices: Vec<DeviceInfo> = Vec::new();
    for d in raw.devices {
        let Some(kind) = DeviceKind::from_blender_name(&d.kind) else {
            tracing::debug!(
                "probe: ignoring device {} of unknown type {}",
                d.name,
                d.kind
            );
            continue;
        };
        if devices.iter().any(|x| x.kind == kind && x.id == d.id) {
            continue;
        }
        devices.push(DeviceInfo {
            kind,
            name: d.name,
            id: d.id,
            memory_mib: d.memory_mib,
        });
    }
    if !devices.iter().any(|d| d.kind == DeviceKind::Cpu) {
        devices.push(DeviceInfo {
            kind: DeviceKind::Cpu,
            name: "CPU".into(),
            id: "CPU".into(),
            memory_mib: None,
        });
    }
    Ok(BlenderInfo {
        path: path.to_path_buf(),
        version: raw.version,
        devices,
        has_oidn: raw.has_oidn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_ONLY: &str = "Blender 3.4.1\n\
@@MESHD@@ {\"version\": \"3.4.1\", \"version_tuple\": [3, 4, 1], \"devices\": [{\"type\": \"CPU\", \"name\": \"AMD EPYC\", \"id\": \"CPU\"}], \"backends\": [\"CUDA\", \"HIP\"], \"has_oidn\": false, \"errors\": []}\n\
\n\
Blender quit\n";

    const OPTIX_CUDA: &str = "Blender 4.2.3 LTS (hash 0e5ab4e1a0b4 built 2024-10-15 00:43:09)\n\
Read prefs: \"/var/lib/meshd/blender/config/4.2/config/userpref.blend\"\n\
@@MESHD@@ {\"version\": \"4.2.3 LTS\", \"version_tuple\": [4, 2, 3], \"devices\": [\
{\"type\": \"OPTIX\", \"name\": \"NVIDIA GeForce RTX 4090\", \"id\": \"CUDA_NVIDIA GeForce RTX 4090_0000:01:00_OptiX\"}, \
{\"type\": \"OPTIX\", \"name\": \"NVIDIA GeForce RTX 3090\", \"id\": \"CUDA_NVIDIA GeForce RTX 3090_0000:02:00_OptiX\"}, \
{\"type\": \"CPU\", \"name\": \"AMD Ryzen 9 7950X 16-Core Processor\", \"id\": \"CPU\"}, \
{\"type\": \"CUDA\", \"name\": \"NVIDIA GeForce RTX 4090\", \"id\": \"CUDA_NVIDIA GeForce RTX 4090_0000:01:00\"}, \
{\"type\": \"CUDA\", \"name\": \"NVIDIA GeForce RTX 3090\", \"id\": \"CUDA_NVIDIA GeForce RTX 3090_0000:02:00\"}], \
\"backends\": [\"OPTIX\", \"CUDA\", \"HIP\", \"ONEAPI\"], \"has_oidn\": true, \"errors\": []}\n\
\n\
Blender quit\n";

    const HIP: &str = "Blender 4.1.1 (hash e1743a0317bc built 2024-04-15 23:47:45)\n\
@@MESHD@@ {\"version\": \"4.1.1\", \"version_tuple\": [4, 1, 1], \"devices\": [\
{\"type\": \"CPU\", \"name\": \"AMD Ryzen 7 5800X 8-Core Processor\", \"id\": \"CPU\"}, \
{\"type\": \"HIP\", \"name\": \"AMD Radeon RX 7900 XTX\", \"id\": \"HIP_AMD Radeon RX 7900 XTX_0000:03:00\"}], \
\"backends\": [\"CUDA\", \"HIP\", \"ONEAPI\"], \"has_oidn\": true, \"errors\": []}\n\
Blender quit\n";

    #[test]
    fn cpu_only() {
        let info = parse_probe_output(CPU_ONLY, Path::new("/usr/bin/blender")).unwrap();
        assert_eq!(info.version, "3.4.1");
        assert!(!info.has_oidn);
        assert_eq!(info.best_device(), DeviceKind::Cpu);
        assert_eq!(info.devices.len(), 1);
        assert_eq!(info.devices[0].name, "AMD EPYC");
        assert_eq!(info.path, Path::new("/usr/bin/blender"));
    }

    #[test]
    fn multi_gpu_optix_and_cuda() {
        let info = parse_probe_output(OPTIX_CUDA, Path::new("/opt/blender/blender")).unwrap();
        assert_eq!(info.version, "4.2.3 LTS");
        assert!(info.has_oidn);
        assert_eq!(info.best_device(), DeviceKind::Optix);
        assert_eq!(info.devices_of(DeviceKind::Optix).count(), 2);
        assert_eq!(info.devices_of(DeviceKind::Cuda).count(), 2);
        assert_eq!(info.devices_of(DeviceKind::Cpu).count(), 1);
        let first = info.devices_of(DeviceKind::Cuda).next().unwrap();
        assert_eq!(first.id, "CUDA_NVIDIA GeForce RTX 4090_0000:01:00");
        assert_eq!(first.memory_mib, None);
    }

    #[test]
    fn hip_machine() {
        let info = parse_probe_output(HIP, Path::new("blender")).unwrap();
        assert_eq!(info.best_device(), DeviceKind::Hip);
        assert_eq!(info.devices.len(), 2);
    }

    #[test]
    fn cpu_is_always_listed_and_unknown_types_dropped() {
        let out = "@@MESHD@@ {\"version\": \"9.0.0\", \"devices\": [\
            {\"type\": \"VULKAN\", \"name\": \"x\", \"id\": \"v\"}, \
            {\"type\": \"METAL\", \"name\": \"Apple M3 Max (GPU - 40 cores)\", \"id\": \"METAL_Apple M3 Max\"}, \
            {\"type\": \"METAL\", \"name\": \"Apple M3 Max (GPU - 40 cores)\", \"id\": \"METAL_Apple M3 Max\"}]}";
        let info = parse_probe_output(out, Path::new("b")).unwrap();
        let kinds: Vec<_> = info.devices.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [DeviceKind::Metal, DeviceKind::Cpu]);
        assert_eq!(info.best_device(), DeviceKind::Metal);
    }

    #[test]
    fn nvidia_smi_memory_matches_cycles_ids() {
        let smi = "00000000:01:00.0, 24564\n00000000:02:00.0, 24576\n00000000:C1:00.0, 81559\n";
        let table = parse_nvidia_smi(smi);
        assert_eq!(table[0], ("0000:01:00".to_string(), 24564));
        assert_eq!(table[2], ("0000:c1:00".to_string(), 81559));
        assert_eq!(
            pci_location("CUDA_NVIDIA GeForce RTX 4090_0000:01:00_OptiX").as_deref(),
            Some("0000:01:00")
        );
        assert_eq!(
            pci_location("CUDA_NVIDIA H100 80GB HBM3_0000:C1:00").as_deref(),
            Some("0000:c1:00")
        );
        assert_eq!(pci_location("CPU"), None);
        assert!(parse_nvidia_smi("NVIDIA-SMI has failed\n").is_empty());
    }

    #[test]
    fn no_marker_or_bad_json() {
        let e = parse_probe_output("Blender 3.4.1\nSegmentation fault\n", Path::new("b"));
        assert!(matches!(e, Err(ProbeError::NoResult { .. })), "{e:?}");
        let e = parse_probe_output("@@MESHD@@ {\"version\": 3", Path::new("b"));
        assert!(matches!(e, Err(ProbeError::BadJson(_))), "{e:?}");
    }

    #[test]
    fn find_blender_explicit_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("no-blender");
        assert!(matches!(
            find_blender(Some(&missing)),
            Err(ProbeError::ExplicitMissing(_))
        ));
        // A directory is not an executable.
        assert!(find_blender(Some(d.path())).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let exe = d.path().join("blender");
            std::fs::write(&exe, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(find_blender(Some(&exe)).unwrap(), exe);
        }
    }

    #[tokio::test]
    async fn probe_real_blender() {
        let blender = find_blender(None).expect(
            "these tests need a real Blender: install it (`apt install blender`) or set BLENDER",
        );
        let scratch = tempfile::tempdir().unwrap();
        let info = probe(&blender, scratch.path(), &Sandbox::Off)
            .await
            .unwrap();
        assert!(!info.version.is_empty());
        assert!(info.devices.iter().any(|d| d.kind == DeviceKind::Cpu));
        let _ = info.best_device();
    }
}
