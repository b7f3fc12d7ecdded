//! Real projects: dependencies are found at submit, travel by chunks, are laid out on the
//! renderer and checked after load. Real Blender, real daemons on 127.0.0.1. The fault
//! switches (`MESHD_FAULT_*`) exist only in builds with the `test-faults` feature.
#![cfg(feature = "test-faults")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const BIG: Duration = Duration::from_secs(300);

fn project_of(d: &Daemon, job: &str) -> Value {
    d.job(job)["project"].clone()
}

fn submit_full(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut a = vec!["submit"];
    a.extend_from_slice(args);
    d.cli(&a)
}

/// A noise TIFF of `w`×`h` (uncompressed RGB, so an edit changes only its own bytes).
fn noise_tiff(path: &Path, w: u32, h: u32, seed: u32) {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *c = x as u8;
        }
        image::Rgb(px)
    });
    img.save_with_format(path, image::ImageFormat::Tiff)
        .unwrap();
}

/// The demo scene with a big texture (`//big.tif`, relative) on its first mesh.
fn scene_with_big_texture(dir: &Path, w: u32, h: u32) -> std::path::PathBuf {
    let scene = make_scene(dir, "big.blend", 2, 64, 48, 1);
    noise_tiff(&dir.join("big.tif"), w, h, 7);
    let expr = format!(
        r#"
import bpy
img = bpy.data.images.load({tif:?})
img.filepath = "//big.tif"
mat = bpy.data.materials.new("Big")
mat.use_nodes = True
tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
tex.image = img
bsdf = mat.node_tree.nodes["Principled BSDF"]
mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
for o in bpy.context.scene.objects:
    if o.type == "MESH":
        o.data.materials.clear()
        o.data.materials.append(mat)
        break
bpy.ops.wm.save_mainfile()
"#,
        tif = dir.join("big.tif").to_str().unwrap()
    );
    let st = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio"])
        .arg(&scene)
        .args(["--python-exit-code", "1", "--python-expr", &expr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "adding the texture failed");
    scene
}

/// Submits frames 1-3 of `shot`, in the project folder `proj`, from a submitter that does
/// not render: it must find `files` files and none missing. Then renames the folder, so
/// that no path of it resolves, lets a new peer render the job, and checks every frame
/// against Blender's own render of the original. Returns the submitter, the renderer and
/// the submit answer.
fn renders_like_blender_after_the_folder_moves(
    root: &Path,
    proj: &Path,
    shot: &Path,
    files: u64,
) -> (Daemon, Daemon, Value) {
    let reference = root.join("reference");
    reference_render(shot, &reference, 1, 3);

    let a = Daemon::start(root, "a", None, &["--no-render"]);
    let out = root.join("out");
    let resp = a.cli_json(&[
        "submit",
        shot.to_str().unwrap(),
        "1-3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(resp["missing"], Value::Array(vec![]), "{resp}");
    assert_eq!(resp["files"], files, "{resp}");
    let id = resp["id"].as_str().unwrap().to_string();

    // The artist's folder is renamed before any renderer exists: no path of it resolves.
    std::fs::rename(proj, root.join("proj-renamed")).unwrap();

    let b = Daemon::start(root, "b", Some(&a.ticket()), &[]);
    wait_until(BIG, "all frames written or the job failed", || {
        let job = a.job(&id);
        job["frames_written"] == 3 || job["state"] == "failed"
    });
    let job = a.job(&id);
    assert_eq!(job["frames_written"], 3, "{}", job["failure"]);
    assert_eq!(project_of(&b, &id)["files"], files);
    assert_like_blender(&out, &reference, 1..=3);
    assert!(!b.log().contains("missing dependency"));
    (a, b, resp)
}

#[test]
fn project_renders_identically_on_a_peer_that_never_saw_its_paths() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    make_project(&proj, 3, 96, 64, 4);
    // shot, library, its texture, the floor (absolute path), two UDIM tiles, three frames.
    let (a, b, resp) = renders_like_blender_after_the_folder_moves(
        root.path(),
        &proj,
        &proj.join("shots/shot.blend"),
        9,
    );
    assert_eq!(resp["root"], proj.to_str().unwrap(), "{resp}");
    let id = resp["id"].as_str().unwrap();
    assert_eq!(a.job(id)["blender_version"], resp["blender"]);
    let p = project_of(&b, id);
    assert_eq!(p["state"], "ready", "{p}");
    assert!(p["bytes_fetched"].as_u64().unwrap() > 0, "{p}");
}

#[test]
fn a_renderer_given_a_relative_data_dir_renders_a_project_like_blender() {
    // `meshd --data-dir b join` run in the user's folder: Blender runs in the job's work
    // dir, where a path relative to that folder means nothing. Every frame failed in the
    // driver script before.
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    make_project(&proj, 2, 64, 48, 1);
    let shot = proj.join("shots/shot.blend");
    let reference = root.path().join("reference");
    reference_render(&shot, &reference, 1, 2);

    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let b = Daemon::start_relative(root.path(), "b", Some(&a.ticket()), &[]);
    // Unconfined, Blender runs in the daemon's own dir, where the relative path holds.
    assert!(
        b.plain_log().contains("bubblewrap sandbox"),
        "this test needs bubblewrap (scripts/install-deps.sh installs it)"
    );
    let out = root.path().join("out");
    let resp = a.cli_json(&[
        "submit",
        shot.to_str().unwrap(),
        "1-2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let id = resp["id"].as_str().unwrap().to_string();
    wait_until(BIG, "both frames written or the job failed", || {
        let job = a.job(&id);
        job["frames_written"] == 2 || job["state"] == "failed"
    });
    let job = a.job(&id);
    assert_eq!(job["frames_written"], 2, "{}", job["failure"]);
    assert_like_blender(&out, &reference, 1..=2);
    assert!(!b.log().contains("missing dependency"));
}

#[test]
fn missing_dependency_is_named_and_strict_refuses() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    make_project(&proj, 2, 64, 48, 1);
    std::fs::remove_file(proj.join("textures/floor.png")).unwrap();
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let scene = proj.join("shots/shot.blend");
    let scene = scene.to_str().unwrap();

    let strict = submit_full(&a, &[scene, "1-2", "--strict", "--json"]);
    assert_eq!(strict.status.code(), Some(3), "--strict exits 3");
    let body: Value = serde_json::from_slice(&strict.stdout).expect("JSON refusal");
    let missing = body["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{body}");
    assert!(
        missing[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("textures/floor.png")
    );
    assert!(
        missing[0]["owner"].as_str().unwrap().contains("Image"),
        "{body}"
    );
    assert!(String::from_utf8_lossy(&strict.stderr).contains("nothing was submitted"));
    assert_eq!(
        a.status()["jobs"],
        Value::Array(vec![]),
        "nothing announced"
    );
    let blobs = std::fs::read_dir(a.dir.join("blobs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count();
    assert_eq!(blobs, 0, "nothing stored");

    // Without --strict: warned, named, and submitted.
    let warned = submit_full(&a, &[scene, "1-2", "--out", "/tmp/meshd-unused-out"]);
    assert!(warned.status.success());
    let err = String::from_utf8_lossy(&warned.stderr);
    assert!(
        err.contains("floor.png") && err.contains("needed by Image"),
        "{err}"
    );
    assert_eq!(a.status()["jobs"].as_array().unwrap().len(), 1);
}

#[test]
fn dependency_deleted_from_the_renderers_copy_fails_the_frame_with_its_name() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    make_project(&proj, 2, 64, 48, 1);
    // A short lease: each renderer is gone before the next job, and must not count as live.
    let a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--no-render", "--lease-secs", "2"],
    );
    // One of each kind: a UDIM tile, a sequence frame, the library, the library's own texture
    // (relative inside the library), and the texture named by an absolute path.
    let victims = [
        "textures/udim/tile.1002.png",
        "textures/seq/seq_0002.png",
        "lib/prop.blend",
        "lib/textures/prop.png",
        "textures/floor.png",
    ];
    for (i, victim) in victims.iter().enumerate() {
        let b = Daemon::start_env(
            root.path(),
            &format!("b{i}"),
            Some(&a.ticket()),
            &["--lease-secs", "2"],
            &[("MESHD_FAULT_DELETE_DEP", victim)],
        );
        let out = root.path().join(format!("out{i}"));
        let name = format!("v{i}");
        let id = submit(
            &a,
            &proj.join("shots/shot.blend"),
            "1-2",
            &out,
            &["--name", &name],
        );
        wait_until(Duration::from_secs(120), "the job to fail", || {
            a.job(&id)["state"] == "failed"
        });
        let failure = a.job(&id)["failure"].as_str().unwrap().to_string();
        assert!(
            failure.contains(&format!("missing dependency {victim}")),
            "{victim}: {failure}"
        );
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
            "{victim}: no frame delivered"
        );
        drop(b);
    }
}

#[test]
fn corrupt_chunks_are_detected_and_fetched_from_another_peer() {
    let root = tempfile::tempdir().unwrap();
    let scene = scene_with_big_texture(root.path(), 1024, 1024);
    // `a` submits and renders the project once, so it holds all of it, and then renders
    // no more...
    let mut a = Daemon::start(root.path(), "a", None, &[]);
    let first = submit(
        &a,
        &scene,
        "1",
        &root.path().join("out1"),
        &["--name", "v1"],
    );
    wait_until(BIG, "the first job written", || {
        a.job(&first)["frames_written"] == 1
    });
    a.restart(root.path(), &["--no-render"]);
    // ...then `liar` submits it again, flipping a byte of every chunk it serves: b, the one
    // renderer, asks the job's seed first and must turn to `a`.
    let liar = Daemon::start_env(
        root.path(),
        "liar",
        Some(&a.ticket()),
        &["--no-render"],
        &[("MESHD_FAULT_CORRUPT_CHUNKS", "1")],
    );
    let b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    let liar_id = liar.peer_id();
    wait_until(BIG, "b connected to the liar and to a", || {
        let peers = b.connected_peers();
        peers.contains(&liar_id) && peers.contains(&a.peer_id())
    });
    let out = root.path().join("out");
    let id = submit(&liar, &scene, "1-2", &out, &["--name", "v2"]);
    wait_until(BIG, "b to hold the project", || {
        project_of(&b, &id)["state"] == "ready"
    });
    assert!(
        b.log()
            .lines()
            .any(|l| l.contains("corrupt chunk") && l.contains(&liar_id)),
        "b noticed the corrupt chunks and named the liar"
    );
    wait_until(BIG, "both frames written", || {
        liar.job(&id)["frames_written"] == 2
    });
    assert_frames(&out, &[1, 2], (64, 48));
}

#[test]
fn resubmit_after_an_edit_fetches_only_the_changed_chunks() {
    let root = tempfile::tempdir().unwrap();
    let scene = scene_with_big_texture(root.path(), 2048, 2048);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    wait_until(BIG, "b can render", || a.renderers() == 1);
    let out = root.path().join("out");
    let first = submit(&a, &scene, "1", &out, &["--name", "v1"]);
    wait_until(BIG, "b holds v1", || {
        project_of(&b, &first)["state"] == "ready"
    });
    let p1 = project_of(&b, &first);
    let total = p1["bytes"].as_u64().unwrap();
    assert!(
        p1["bytes_fetched"].as_u64().unwrap() >= total - 4096,
        "{p1}"
    );

    // Edit 1% of the texture in place.
    let tif = root.path().join("big.tif");
    let mut bytes = std::fs::read(&tif).unwrap();
    let mid = bytes.len() / 2;
    let span = bytes.len() / 100;
    for b in &mut bytes[mid..mid + span] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&tif, &bytes).unwrap();

    let second = submit(&a, &scene, "1", &out, &["--name", "v2"]);
    wait_until(BIG, "b holds v2", || {
        project_of(&b, &second)["state"] == "ready"
    });
    let p2 = project_of(&b, &second);
    let fetched = p2["bytes_fetched"].as_u64().unwrap();
    let reused = p2["bytes_reused"].as_u64().unwrap();
    assert!(
        fetched * 100 <= total * 30,
        "after a 1% edit only the changed chunks move: {fetched} of {total} bytes"
    );
    assert!(fetched + reused >= total, "{p2}");
}

/// Bytes of whole blob files and loose chunks in a daemon's store.
fn store_bytes(data_dir: &Path) -> u64 {
    let sum = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    sum(&data_dir.join("blobs")) + sum(&data_dir.join("blobs/chunks"))
}

#[test]
fn an_old_version_is_compacted_on_disk_and_comes_back_without_fetching() {
    let root = tempfile::tempdir().unwrap();
    let scene = scene_with_big_texture(root.path(), 2048, 2048);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let b = Daemon::start(root.path(), "b", Some(&a.ticket()), &["--cache-size", "1T"]);
    wait_until(BIG, "b can render", || a.renderers() == 1);
    let tif = root.path().join("big.tif");
    let original = std::fs::read(&tif).unwrap();
    let (out1, out2, out3) = (
        root.path().join("out1"),
        root.path().join("out2"),
        root.path().join("out3"),
    );
    let first = submit(&a, &scene, "1", &out1, &["--name", "v1"]);
    wait_until(BIG, "v1 written", || a.job(&first)["frames_written"] == 1);
    let total = project_of(&b, &first)["bytes"].as_u64().unwrap();

    let mut edited = original.clone();
    let (mid, span) = (edited.len() / 2, edited.len() / 100);
    for x in &mut edited[mid..mid + span] {
        *x = x.wrapping_add(1);
    }
    std::fs::write(&tif, &edited).unwrap();
    let second = submit(&a, &scene, "1", &out2, &["--name", "v2"]);
    wait_until(BIG, "v2 written", || a.job(&second)["frames_written"] == 1);

    // Both jobs are over: a collection (every 10 s with --cache-size) compacts one version.
    let mut held = 0;
    wait_until(
        Duration::from_secs(60),
        "b to store both versions in ~1x",
        || {
            held = store_bytes(&b.dir);
            held * 10 < total * 13
        },
    );
    assert!(
        std::fs::read_dir(b.dir.join("blobs/chunks"))
            .unwrap()
            .count()
            > 0,
        "nothing was compacted, yet the store holds {held} bytes for two versions of {total}"
    );

    // Back to the first version: rebuilt from local chunks, nothing fetched.
    std::fs::write(&tif, &original).unwrap();
    let third = submit(&a, &scene, "1", &out3, &["--name", "v1-again"]);
    wait_until(BIG, "v1-again written", || {
        a.job(&third)["frames_written"] == 1
    });
    let p3 = project_of(&b, &third);
    assert!(
        p3["bytes_fetched"].as_u64().unwrap() * 100 <= total,
        "an old version on disk was fetched again: {p3}"
    );
    let diff = image_diff(&out1.join("frame_0001.png"), &out3.join("frame_0001.png"));
    assert!(
        diff < 0.5,
        "the rebuilt version renders differently (mean diff {diff:.2})"
    );
}

#[test]
fn a_fetch_killed_midway_resumes_after_restart_with_the_chunks_it_has() {
    let root = tempfile::tempdir().unwrap();
    let scene = scene_with_big_texture(root.path(), 4096, 2048);
    // The seed serves slowly, so the fetch can be caught in the middle.
    let a = Daemon::start_env(
        root.path(),
        "a",
        None,
        &["--no-render"],
        &[("MESHD_FAULT_SLOW_CHUNKS_MS", "150")],
    );
    let mut b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    wait_until(BIG, "b can render", || a.renderers() == 1);
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1", &out, &[]);
    let mut before = 0;
    wait_until(BIG, "b to be a quarter through the project", || {
        let p = project_of(&b, &id);
        before = p["bytes_fetched"].as_u64().unwrap_or(0);
        p["state"] == "fetching" && before > 6 << 20
    });
    b.kill();
    b.restart(root.path(), &[]);
    wait_until(BIG, "b holds the project after its restart", || {
        project_of(&b, &id)["state"] == "ready"
    });
    let p = project_of(&b, &id);
    let total = p["bytes"].as_u64().unwrap();
    let fetched = p["bytes_fetched"].as_u64().unwrap();
    let reused = p["bytes_reused"].as_u64().unwrap();
    // Chunks in flight at the kill (8 at most, 1 MiB at most) may be fetched again.
    assert!(
        fetched + before <= total + (8 << 20),
        "resumed: {before} bytes before the kill, {fetched} after, of {total}"
    );
    assert!(
        reused + (8 << 20) >= before,
        "the chunks fetched before the kill were reused: {p}"
    );
    wait_until(BIG, "the frame written", || {
        a.job(&id)["frames_written"] == 1
    });
}

#[test]
fn blender_version_is_recorded_and_required() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "v.blend", 2, 64, 48, 1);
    let a = Daemon::start(root.path(), "a", None, &[]);
    let out = root.path().join("out");

    let bad = submit_full(
        &a,
        &[scene.to_str().unwrap(), "1", "--blender-version", "4"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MAJOR.MINOR"));

    let id = submit(&a, &scene, "1-2", &out, &["--blender-version", "9.9"]);
    let job = a.job(&id);
    assert_eq!(job["require_blender"], "9.9");
    let mut mine = String::new();
    wait_until(BIG, "the daemon's Blender probed", || {
        let me = a.cli_json(&["peers", "--json"])["peers"][0]["blender"].clone();
        mine = me.as_str().unwrap_or_default().to_string();
        !mine.is_empty()
    });
    assert_eq!(job["blender_version"], mine.as_str(), "{job}");
    // Another job that this peer can render finishes while the 9.9 job is never taken.
    let ok = submit(
        &a,
        &scene,
        "1",
        &root.path().join("out2"),
        &["--name", "ok"],
    );
    wait_until(BIG, "the other job done", || {
        a.job(&ok)["frames_written"] == 1
    });
    let job = a.job(&id);
    assert_eq!(job["frames_done"], 0, "{job}");
    assert_eq!(job["frames_in_flight"], 0, "{job}");
    assert_eq!(job["project"]["state"], "none", "not even fetched");
}

/// Writes `from` to `to` as Blender 9.99 would have saved it: the header names the version
/// (`BLENDER-v304` up to 4.x, `BLENDER17-01v0500` from 5.0).
fn as_if_saved_by_9_99(from: &Path, to: &Path) {
    let mut bytes = std::fs::read(from).unwrap();
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        bytes = zstd::decode_all(&bytes[..]).unwrap(); // 5.0 compresses by default
    }
    if bytes[7].is_ascii_digit() {
        bytes[13..17].copy_from_slice(b"0999");
    } else {
        bytes[9..12].copy_from_slice(b"999");
    }
    std::fs::write(to, &bytes).unwrap();
}

/// Blender reads files of its own and older versions; a newer file loads silently without
/// what it does not know, or crashes. So a scene saved by a Blender newer than the
/// submitting machine's is refused at submit; sent without the walk (`--no-deps`) it waits
/// for a renderer with that Blender or newer, and one with an older Blender never takes it.
#[test]
fn a_scene_saved_by_a_newer_blender_is_not_rendered_by_an_older_one() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "v.blend", 2, 64, 48, 1);
    let newer = root.path().join("newer.blend");
    as_if_saved_by_9_99(&scene, &newer);
    // A shot linking objects from a library that Blender 9.99 saved.
    let lib = make_scene(root.path(), "lib.blend", 2, 64, 48, 1);
    let shot = root.path().join("shot.blend");
    edit_scene(
        &scene,
        &shot,
        &format!(
            "with bpy.data.libraries.load({lib:?}, link=True) as (src, dst):\n    \
             dst.objects = [n for n in src.objects if n != 'Camera']\n\
             for o in dst.objects:\n    bpy.context.scene.collection.objects.link(o)\n"
        ),
    );
    as_if_saved_by_9_99(&lib, &lib);

    let a = Daemon::start(root.path(), "a", None, &[]);
    let out = root.path().join("out");
    let refused = submit_full(
        &a,
        &[shot.to_str().unwrap(), "1", "--out", out.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("lib.blend was saved by Blender 9.99"), "{err}");
    let run = submit_full(
        &a,
        &[
            newer.to_str().unwrap(),
            "1-2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("newer.blend was saved by Blender 9.99, newer than this machine's Blender"),
        "{err}"
    );

    let id = submit(&a, &newer, "1-2", &out, &["--no-deps"]);
    assert_eq!(a.job(&id)["require_blender"], "9.99+");
    wait_until(BIG, "the job says which Blender it waits for", || {
        a.job(&id)["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("it needs Blender 9.99 or newer"))
    });
    // The original file renders on this machine's own Blender series, meanwhile.
    let ok = submit(
        &a,
        &scene,
        "1",
        &root.path().join("out2"),
        &["--name", "ok"],
    );
    let job = a.job(&ok);
    let mine = job["blender_version"].as_str().unwrap();
    let series: Vec<&str> = mine.split('.').take(2).collect();
    assert_eq!(job["require_blender"], series.join("."));
    wait_until(BIG, "the other job done", || {
        a.job(&ok)["frames_written"] == 1
    });
    let job = a.job(&id);
    assert_eq!(job["frames_done"], 0, "{job}");
    assert_eq!(job["frames_in_flight"], 0, "{job}");
}

#[test]
fn no_deps_sends_only_the_blend_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    make_project(&proj, 2, 64, 48, 1);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let scene = proj.join("shots/shot.blend");
    let out = root.path().join("out");
    let out = out.to_str().unwrap();
    let run = submit_full(
        &a,
        &[scene.to_str().unwrap(), "1", "--no-deps", "--out", out],
    );
    assert!(run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("--no-deps: only the .blend is sent"), "{err}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("1 file"));

    // A daemon without Blender cannot look for dependencies: it says so and offers --no-deps.
    let c = Daemon::start(
        root.path(),
        "c",
        None,
        &["--no-render", "--blender", "/nonexistent/blender"],
    );
    let run = submit_full(&c, &[scene.to_str().unwrap(), "1", "--out", out]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("no Blender") && err.contains("--no-deps"),
        "{err}"
    );
    assert_eq!(c.status()["jobs"], Value::Array(vec![]));
    let run = submit_full(
        &c,
        &[scene.to_str().unwrap(), "1", "--no-deps", "--out", out],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Builds `dir/shots/shot.blend`: four spheres with materials linked (not appended) from
/// Blender's own `sample_materials.blend` (the Material Library VX add-on's, copied to
/// `dir/lib/`) and a world lit by Blender's own `forest.exr` studio light (copied to
/// `dir/hdri/`), both by relative paths; Cycles, 96×64, 8 samples, 3 frames of camera
/// motion. The library and the image are files nobody here made: Debian's `blender`
/// package ships them.
fn scene_with_blenders_own_library(dir: &Path) -> std::path::PathBuf {
    const SCRIPT: &str = r#"
import bpy, os, shutil, sys
proj = sys.argv[sys.argv.index("--") + 1]
scripts = bpy.utils.system_resource("SCRIPTS")
lib_src = os.path.join(scripts, "addons", "materials_library_vx", "sample_materials.blend")
hdri_src = os.path.join(bpy.utils.system_resource("DATAFILES"), "studiolights", "world", "forest.exr")
for p in (lib_src, hdri_src):
    if not os.path.isfile(p):
        raise SystemExit("this Blender does not ship %s (Debian's blender 3.4 does)" % p)
for sub in ("shots", "lib", "hdri"):
    os.makedirs(os.path.join(proj, sub), exist_ok=True)
lib = os.path.join(proj, "lib", "sample_materials.blend")
hdri = os.path.join(proj, "hdri", "forest.exr")
shutil.copyfile(lib_src, lib)
shutil.copyfile(hdri_src, hdri)
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.context.preferences.filepaths.save_version = 0
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(proj, "shots", "shot.blend"))
names = ["Car Paint", "Polished Walnut", "Brushed Metal", "Chocolate Swirl"]
with bpy.data.libraries.load(lib, link=True, relative=True) as (src, dst):
    dst.materials = [n for n in names if n in src.materials]
if len(dst.materials) != len(names):
    raise SystemExit("the library lacks some of %s" % names)
scene = bpy.context.scene
for i, m in enumerate(dst.materials):
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.9, location=(2.0 * i - 3.0, 0, 0))
    bpy.context.object.data.materials.append(m)
    bpy.ops.object.shade_smooth()
world = bpy.data.worlds.new("World")
scene.world = world
world.use_nodes = True
env = world.node_tree.nodes.new("ShaderNodeTexEnvironment")
env.image = bpy.data.images.load(hdri)
env.image.filepath = bpy.path.relpath(hdri)
world.node_tree.links.new(env.outputs["Color"], world.node_tree.nodes["Background"].inputs["Color"])
bpy.ops.object.camera_add(location=(0, -9, 1.5), rotation=(1.45, 0, 0))
cam = bpy.context.object
scene.camera = cam
cam.keyframe_insert("location", frame=1)
cam.location.x = 1.0
cam.keyframe_insert("location", frame=3)
scene.render.engine = "CYCLES"
scene.cycles.samples = 8
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 96, 64
scene.render.resolution_percentage = 100
scene.frame_start, scene.frame_end = 1, 3
bpy.ops.wm.save_mainfile()
"#;
    let out = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio"])
        .args(["--python-exit-code", "1", "--python-expr", SCRIPT, "--"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "making the scene failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("shots/shot.blend")
}

#[test]
fn blenders_own_material_library_and_hdri_render_identically_on_a_peer() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    let shot = scene_with_blenders_own_library(&proj);
    // The shot, the linked library and the HDRI.
    renders_like_blender_after_the_folder_moves(root.path(), &proj, &shot, 3);
}

/// Turns the demo scene into a sequencer edit without a camera: a colour strip on frames
/// 1-4 and, over it on frames 2-3, a still found by a relative path (`//plate/frame_0001.png`).
const SEQUENCER_EDIT: &str = r#"
s = bpy.context.scene
bpy.data.objects.remove(bpy.data.objects["Camera"])
ed = s.sequence_editor_create()
strips = ed.strips if hasattr(ed, "strips") else ed.sequences
try:  # 5.0: a length instead of the end
    bg = strips.new_effect("bg", "COLOR", 1, frame_start=1, length=4)
except TypeError:
    bg = strips.new_effect("bg", "COLOR", 1, frame_start=1, frame_end=5)
bg.color = (0.2, 0.4, 0.8)
im = strips.new_image("plate", "//plate/frame_0001.png", 2, 2)
im.frame_final_duration = 2
im.blend_type = "ALPHA_OVER"
im.transform.scale_x = im.transform.scale_y = 0.5
s.render.use_sequencer = True
"#;

/// An edit in the sequencer needs no camera: Blender renders its strips. A peer must too,
/// identically (meshd's driver refused every such frame: "scene has no camera").
#[test]
fn a_sequencer_edit_without_a_camera_renders_identically_on_a_peer() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let base = make_scene(&proj, "base.blend", 3, 64, 48, 1);
    reference_render(&base, &proj.join("plate"), 1, 1);
    let edit = proj.join("edit.blend");
    edit_scene(&base, &edit, SEQUENCER_EDIT);
    // The edit and its still.
    renders_like_blender_after_the_folder_moves(root.path(), &proj, &edit, 2);
}
