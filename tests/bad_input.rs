//! Bad input gets a one-line error, a non-zero exit, and changes nothing.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn meshd(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails with exactly one line on stderr that contains `needle`.
fn assert_one_line_error(data_dir: &Path, args: &[&str], needle: &str) {
    let (ok, err) = meshd(data_dir, args);
    assert!(!ok, "{args:?} should fail");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line expected, got:\n{err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: '{needle}' not in: {err}"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let good = make_scene(r, "good.blend", 2, 32, 24, 1);
    std::fs::write(r.join("empty.blend"), b"").unwrap();
    std::fs::write(r.join("text.blend"), b"this is not a blend file").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"not blender at all, just gzip").unwrap();
    std::fs::write(r.join("fake.blend"), gz.finish().unwrap()).unwrap();
    std::fs::create_dir(r.join("dir.blend")).unwrap();
    // Blender would refuse to render it: no camera, and no sequencer edit to show instead.
    let nocam = r.join("nocam.blend");
    edit_scene(
        &good,
        &nocam,
        "bpy.data.objects.remove(bpy.data.objects['Camera'])",
    );
    // Cameras, but none set as the scene's: `blender -b -a` says "Cannot render, no camera".
    let unset = r.join("unset.blend");
    edit_scene(&good, &unset, "bpy.context.scene.camera = None");
    let p = |n: &str| r.join(n).to_str().unwrap().to_string();
    let g = good.to_str().unwrap();

    // No daemon yet: everything that needs one says how to start it.
    let nodaemon = r.join("nodaemon");
    assert_one_line_error(
        &nodaemon,
        &["submit", g, "1-2"],
        "no meshd daemon is running",
    );
    assert_one_line_error(&nodaemon, &["status"], "meshd join");
    assert_one_line_error(&nodaemon, &["peers", "--json"], "meshd join");
    assert_one_line_error(&nodaemon, &["invite"], "meshd join");

    // An invalid ticket is refused before anything is created.
    let fresh = r.join("fresh");
    assert_one_line_error(
        &fresh,
        &["join", "not-a-ticket", "--api", "127.0.0.1:0"],
        "ticket",
    );
    assert_one_line_error(
        &fresh,
        &["join", "meshd1zzzz", "--api", "127.0.0.1:0"],
        "ticket",
    );
    assert_one_line_error(&fresh, &["join", "--api", "0.0.0.0:0"], "loopback");
    assert!(!fresh.exists(), "a refused join leaves no data dir behind");

    let d = Daemon::start(r, "d", None, &["--no-render"]);
    let dd = d.dir.clone();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![p("missing.blend"), "1".into()], "missing.blend"),
        (vec![p("dir.blend"), "1".into()], "directory"),
        (vec![p("empty.blend"), "1".into()], "empty"),
        (vec![p("text.blend"), "1".into()], "not a .blend"),
        (vec![p("fake.blend"), "1".into()], "not a .blend"),
        (vec![g.into(), "".into()], "frame"),
        (vec![g.into(), "10-1".into()], "10-1"),
        (vec![g.into(), "-5".into()], "negative"),
        (vec![g.into(), "1-99999999".into()], "1048574"),
        (vec![g.into(), "0-2000000".into()], "1048574"),
        (
            vec![g.into(), "1-1000000".into()],
            "more than a job may hold",
        ),
        (vec![g.into(), "a-b".into()], "number"),
        (vec![g.into(), "1-10x0".into()], "step"),
        (vec![g.into(), "1,,3".into()], "empty"),
        (
            vec![p("nocam.blend"), "1".into()],
            "scene 'Scene' has no camera, so Blender cannot render it",
        ),
        (
            vec![p("unset.blend"), "1".into()],
            r#"name one with --camera ("Camera")"#,
        ),
        (
            vec![g.into(), "1".into(), "--camera".into(), "Top".into()],
            r#"camera "Top" is not in scene "Scene"; give --camera one of "Camera""#,
        ),
        (
            vec![g.into(), "1".into(), "--scene".into(), "Final".into()],
            r#"scene "Final" is not in the .blend; give --scene one of "Scene""#,
        ),
        (
            vec![
                g.into(),
                "1".into(),
                "--format".into(),
                "jpeg".into(),
                "--color-depth".into(),
                "16".into(),
            ],
            "8",
        ),
        (
            vec![
                g.into(),
                "1".into(),
                "--format".into(),
                "exr".into(),
                "--color-depth".into(),
                "8".into(),
            ],
            "16 or 32",
        ),
    ];
    for (args, needle) in &cases {
        let mut full = vec!["submit"];
        full.extend(args.iter().map(String::as_str));
        assert_one_line_error(&dd, &full, needle);
    }
    assert_one_line_error(&dd, &["status", "nosuchjob"], "no job matches");

    // Nothing changed: no job was created, nothing written.
    let status = d.status();
    assert_eq!(
        status["jobs"].as_array().unwrap().len(),
        0,
        "bad input created no job"
    );
    assert!(
        !Path::new("meshd-out").exists()
            || std::fs::read_dir("meshd-out").unwrap().next().is_none()
    );

    // And the daemon still takes good input.
    let out = r.join("out");
    let id = submit(&d, &good, "1-2", &out, &[]);
    assert_eq!(d.job(&id)["frames_total"], 2);
}
