//! Start and stop: SIGTERM shuts a daemon down cleanly and its data dir can be reused.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sigterm_shuts_down_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(root.path(), "d", None, &["--no-render"]);
    let pid = d.pid().unwrap();
    let id_before = d.peer_id();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(
        Duration::from_secs(15),
        "the daemon to exit after SIGTERM",
        || !alive(pid),
    );
    let code = d.wait_exit();
    assert_eq!(code, Some(0), "clean exit status");
    assert!(
        !d.dir.join("api.json").exists(),
        "the API endpoint file is removed"
    );
    let out = d.cli(&["status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no meshd daemon is running"));

    // Same data dir again: same identity, the database opens.
    d.restart(root.path(), &["--no-render"]);
    assert_eq!(d.peer_id(), id_before);
}

#[test]
fn second_daemon_on_one_data_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "d", None, &["--no-render"]);
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&d.dir)
        .args([
            "join",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    // The first daemon is unharmed.
    assert!(d.cli(&["status"]).status.success());
}
