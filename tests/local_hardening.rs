//! What another user of the same machine can and cannot do to a daemon: its data dir is
//! private, Blender's probe script is never in a shared temp dir, the ticket (the mesh key)
//! is not printed on every start, and names with terminal escapes are refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

#[test]
fn the_data_dir_is_private_and_the_probe_stays_out_of_the_shared_temp_dir() {
    let root = tempfile::tempdir().unwrap();
    // A data dir made world-readable (an old version, a umask of 022).
    let dir = root.path().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The shared temp dir, where another user could plant a script under a name the daemon
    // would use. It does not exist: anything the daemon puts there would create it.
    let shared = root.path().join("shared-tmp");
    let tmpdir = shared.display().to_string();
    let a = Daemon::start_env(root.path(), "a", None, &[], &[("TMPDIR", &tmpdir)]);
    wait_until(Duration::from_secs(60), "Blender probed", || {
        a.log().contains("Blender found")
    });
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    assert!(a.log().contains("was open to other users"), "it says so");
    assert!(
        !shared.exists(),
        "the probe (or anything else) used the shared temp dir"
    );
}

#[test]
fn the_ticket_is_printed_when_a_mesh_is_founded_and_not_on_every_start() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let ticket = a.ticket();
    assert!(a.log().contains(&ticket), "founding prints the ticket");
    a.kill();
    let log = root.path().join("a.log");
    std::fs::write(&log, "").unwrap();
    a.restart(root.path(), &["--no-render"]);
    wait_until(
        Duration::from_secs(10),
        "the restart to say it is up",
        || a.log().contains("is up again"),
    );
    assert!(!a.log().contains(&ticket), "{}", a.log());
    let b = Daemon::start(root.path(), "b", Some(&ticket), &["--no-render"]);
    assert!(
        !b.log().contains(&ticket),
        "joining does not print it either"
    );
    assert_eq!(b.ticket().len(), ticket.len(), "meshd invite still does");
}

#[test]
fn a_job_name_with_terminal_escapes_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let scene = make_scene(root.path(), "s.blend", 1, 32, 18, 1);
    let out = a.cli(&[
        "submit",
        scene.to_str().unwrap(),
        "1",
        "--name",
        "shot\u{1b}[2J\u{1b}[31mFAKE",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("control characters"), "{err}");
    assert!(
        a.cli_json(&["status", "--json"])["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
