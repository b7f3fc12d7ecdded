//! CLI conventions: shell completions, man pages from the clap definitions, `meshd join`
//! defaults from `$XDG_CONFIG_HOME/meshd/config.toml`, with flags winning over the file, and
//! a quiet end when the output's reader leaves early.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn meshd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = meshd(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["rotate-key", "submit", "no-sandbox", "trust-submitter"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let bad = meshd(&["completions", "tcsh"]);
    assert!(!bad.status.success());

    let out = meshd(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH meshd"),
        "{page}"
    );
    assert!(page.contains("rotate\\-key") || page.contains("rotate-key"));
    let dir = tempfile::tempdir().unwrap();
    let out = meshd(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    for page in ["meshd.1", "meshd-join.1", "meshd-submit.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
}

#[test]
fn join_takes_defaults_from_the_config_file_and_flags_win() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("config");
    std::fs::create_dir_all(config.join("meshd")).unwrap();
    let file = config.join("meshd/config.toml");
    let xdg = config.to_str().unwrap();

    // The file says: do not render. The daemon follows it.
    std::fs::write(&file, "[join]\nno-render = true\nreplicas = 1\n").unwrap();
    let a = Daemon::start_env(root.path(), "a", None, &[], &[("XDG_CONFIG_HOME", xdg)]);
    wait_until(Duration::from_secs(20), "a's peer list", || {
        a.cli_json(&["peers", "--json"])["peers"][0]["can_render"] == false
    });

    // A value the file gets wrong is not used when the command line gives the flag.
    std::fs::write(&file, "[join]\nframes-per-worker = 0\n").unwrap();
    let b = Daemon::start_env(
        root.path(),
        "b",
        None,
        &["--frames-per-worker", "5", "--no-render"],
        &[("XDG_CONFIG_HOME", xdg)],
    );
    assert!(b.log().contains("is up"), "{}", b.log());
    // Without the flag, the file's bad value is refused, naming the file.
    let data = root.path().join("c");
    let out = Command::new(BIN)
        .env("XDG_CONFIG_HOME", xdg)
        .arg("--data-dir")
        .arg(&data)
        .args(["join", "--api", "127.0.0.1:0", "--no-mdns"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--frames-per-worker") && err.contains("config.toml"),
        "{err}"
    );

    // A key that is no flag: one line, exit 2, nothing started.
    std::fs::write(&file, "[join]\nreplica = 2\n").unwrap();
    let out = Command::new(BIN)
        .env("XDG_CONFIG_HOME", xdg)
        .arg("--data-dir")
        .arg(&data)
        .args(["join", "--api", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key `replica`") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!data.join("mesh.key").exists(), "nothing started");
}

/// `meshd status --json | head -1` and the like: when the reader leaves before the output
/// is written, the command ends quietly with status 141 (what a shell reports for a tool
/// killed by SIGPIPE), not with a panic and its backtrace or an error about a broken pipe.
#[test]
fn a_reader_that_leaves_early_ends_the_command_quietly() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "d", None, &["--no-render"]);
    for args in [
        &["status", "--json"][..],
        &["peers", "--json"],
        &["man"],
        &["completions", "bash"],
    ] {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&d.dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} printed: {err}");
    }
}
