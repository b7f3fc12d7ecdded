//! The blob store stays within `--cache-size`, and `meshd gc` frees what jobs that are over
//! left behind, never what a running job or an undelivered frame needs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const BIG: Duration = Duration::from_secs(300);

fn blob_bytes(d: &Daemon) -> u64 {
    std::fs::read_dir(d.dir.join("blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// A scene with a 3 MiB incompressible file next to it that the scene uses (a sound).
fn scene_with_payload(dir: &Path, name: &str, samples: u32, frames: u32) -> std::path::PathBuf {
    let scene = make_scene(dir, name, frames, 64, 48, samples);
    let payload = dir.join(format!("{name}.payload.wav"));
    // A different payload per scene (identical files are stored once and shared).
    let mut x = 0x9e3779b9u32
        ^ name
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31) ^ b as u32);
    let bytes: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(&payload, bytes).unwrap();
    let expr = format!(
        "import bpy\ns = bpy.data.sounds.load({:?})\ns.use_fake_user = True\nbpy.ops.wm.save_mainfile()",
        payload.to_str().unwrap()
    );
    let st = std::process::Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio"])
        .arg(&scene)
        .args(["--python-exit-code", "1", "--python-expr", &expr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    scene
}

#[test]
fn gc_frees_jobs_that_are_over_and_never_a_running_one() {
    let root = tempfile::tempdir().unwrap();
    let first = scene_with_payload(root.path(), "first.blend", 1, 2);
    let second = scene_with_payload(root.path(), "second.blend", 400, 4);
    let a = Daemon::start(root.path(), "a", None, &[]);
    let out1 = root.path().join("out1");
    let j1 = submit(&a, &first, "1-2", &out1, &[]);
    wait_until(BIG, "job 1 written", || a.job(&j1)["frames_written"] == 2);
    let held = blob_bytes(&a);
    assert!(held > 3 << 20, "the payload is stored: {held}");

    let out2 = root.path().join("out2");
    let j2 = submit(&a, &second, "1-4", &out2, &[]);
    let mut freed_first = false;
    wait_until(BIG, "job 2 written while gc runs again and again", || {
        let r = a.cli_json(&["gc", "--json"]);
        if r["bytes_freed"].as_u64().unwrap() >= 3 << 20 {
            freed_first = true;
        }
        a.job(&j2)["frames_written"] == 4
    });
    assert!(freed_first, "job 1's files were freed while job 2 ran");
    assert_frames(&out2, &[1, 2, 3, 4], (64, 48));
    assert_frames(&out1, &[1, 2], (64, 48));

    let r = a.cli(&["gc"]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && text.starts_with("freed "), "{text}");
    assert!(blob_bytes(&a) < 1 << 20, "everything of finished jobs went");
    assert_eq!(
        std::fs::read_dir(a.dir.join("work")).unwrap().count(),
        0,
        "work dirs of finished jobs went"
    );
}

#[test]
fn cache_size_bounds_the_store_once_jobs_are_over() {
    let root = tempfile::tempdir().unwrap();
    let scene = scene_with_payload(root.path(), "s.blend", 1, 2);
    let a = Daemon::start(root.path(), "a", None, &["--cache-size", "1M"]);
    let out = root.path().join("out");
    let resp = a.cli_json(&[
        "submit",
        scene.to_str().unwrap(),
        "1-2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(resp["bytes"].as_u64().unwrap() > 3 << 20, "{resp}");
    let id = resp["id"].as_str().unwrap();
    wait_until(BIG, "frames written", || a.job(id)["frames_written"] == 2);
    wait_until(Duration::from_secs(60), "a collection under 1 MiB", || {
        blob_bytes(&a) <= 1 << 20 && a.log().contains("cache collected")
    });
    assert_frames(&out, &[1, 2], (64, 48));
}
