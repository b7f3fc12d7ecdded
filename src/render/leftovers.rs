//! Sandboxes left behind by a daemon that was killed.
//!
//! A sandboxed Blender dies with its daemon: the daemon's child, the outer `bwrap`, has the
//! kernel kill it when the daemon dies, and bubblewrap's `--die-with-parent` does the same
//! for the sandbox's own init. bubblewrap 0.8 sets the latter only after it has cloned that
//! init, so a daemon killed in that window leaves the init behind, reparented to the
//! system's, blocked in its set-up for ever (seen once in the test suite). Nothing the
//! killed daemon did can undo that, so its next start does: every `bwrap` whose arguments
//! name this data dir belongs to an earlier run of this daemon (the data dir is locked, so
//! no other daemon uses it), and is killed before any new sandbox starts.

use std::path::{Path, PathBuf};

/// Kills the bubblewrap processes whose arguments name `data_dir` (as given, absolute, or
/// with its symlinks resolved); returns how many were killed. Only processes this user may
/// signal are touched.
#[cfg(target_os = "linux")]
pub fn kill_leftover_sandboxes(data_dir: &Path) -> usize {
    let dirs = spellings(data_dir);
    let me = std::process::id();
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !is_sandbox_of(&cmdline, &dirs) {
            continue;
        }
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: kill has no memory effects; the pid names a bwrap of this data dir.
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            tracing::info!(
                pid,
                "killed a sandbox left by an earlier run of this daemon"
            );
            killed += 1;
        }
    }
    killed
}

#[cfg(not(target_os = "linux"))]
pub fn kill_leftover_sandboxes(_data_dir: &Path) -> usize {
    0
}

/// The ways a sandbox's arguments may spell `dir`.
fn spellings(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(abs) = std::path::absolute(dir) {
        out.push(abs);
    }
    if let Ok(real) = std::fs::canonicalize(dir) {
        out.push(real);
    }
    out.retain(|p| p.is_absolute());
    out.dedup();
    out
}

/// Whether `cmdline` (a `/proc/PID/cmdline`: arguments ending in NUL) runs `bwrap` with an
/// argument that is one of `dirs` or lies inside one.
fn is_sandbox_of(cmdline: &[u8], dirs: &[PathBuf]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)));
    let is_bwrap = args
        .next()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "bwrap");
    // `Path::starts_with` compares whole components: `/data/a` is not inside `/data/ab`.
    is_bwrap && args.any(|a| dirs.iter().any(|d| a.starts_with(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn a_bwrap_naming_the_data_dir_or_a_path_inside_it_is_a_leftover() {
        let dirs = [PathBuf::from("/var/meshd/a")];
        for args in [
            &["/usr/bin/bwrap", "--tmpfs", "/var/meshd/a", "--", "blender"][..],
            &[
                "bwrap",
                "--bind",
                "/var/meshd/a/work/j/w",
                "/var/meshd/a/work/j/w",
            ],
        ] {
            assert!(is_sandbox_of(&cmdline(args), &dirs), "{args:?}");
        }
    }

    #[test]
    fn other_processes_and_other_data_dirs_are_not() {
        let dirs = [PathBuf::from("/var/meshd/a")];
        for args in [
            // The daemon itself, or anything that is not bubblewrap.
            &["/usr/bin/meshd", "join", "--data-dir", "/var/meshd/a"][..],
            &["blender", "-b", "/var/meshd/a/work/j/scene.blend"],
            // A sibling data dir whose name starts with this one's.
            &["bwrap", "--tmpfs", "/var/meshd/ab", "--", "blender"],
            &["bwrap", "--tmpfs", "/var/meshd", "--", "blender"],
            &[],
        ] {
            assert!(!is_sandbox_of(&cmdline(args), &dirs), "{args:?}");
        }
    }

    #[test]
    fn a_data_dir_spelled_with_dot_dots_is_matched_by_its_resolved_spelling() {
        let d = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(real.join("x")).unwrap();
        let spelled = spellings(&real.join("x/.."));
        assert!(spelled.iter().all(|p| p.is_absolute()));
        assert!(spelled.contains(&real), "{spelled:?}");
    }
}
