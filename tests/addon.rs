//! The Blender add-on, as a user gets it: the zip from scripts/package-addon.sh installed
//! and enabled in a background Blender, its submit operator run on an open file against a
//! real daemon, and the frames rendered with the panel's overrides. Without a daemon the
//! operator refuses with a clear report.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `script` in a background Blender with `scene` open and a private user dir (the
/// add-on is installed there, not in the user's own config). Returns its output.
fn blender_with(root: &Path, scene: &Path, script: &str) -> (bool, String) {
    let file = root.join("addon-test.py");
    std::fs::write(&file, script).unwrap();
    let user = root.join("blender-user");
    let out = Command::new(blender())
        .args(["-b", "--factory-startup", "-noaudio"])
        .arg(scene)
        .args(["--python-exit-code", "3", "--python"])
        .arg(&file)
        .env("BLENDER_USER_SCRIPTS", user.join("scripts"))
        .env("BLENDER_USER_CONFIG", user.join("config"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the add-on's submit operator in a background Blender with `scene` open, against the
/// daemon whose data dir is `data`, output to `out`, after `panel` (Python lines setting the
/// panel's properties on `s`). Asserts it succeeded; returns the job id and Blender's
/// output (which also prints `BLENDER <version>`).
fn submit_with_add_on(
    r: &Path,
    zip: &Path,
    scene: &Path,
    data: &Path,
    out: &Path,
    panel: &str,
) -> (String, String) {
    let script = format!(
        "{install}\
         prefs = bpy.context.preferences.addons['meshd_blender'].preferences\n\
         prefs.data_dir = {data:?}\n\
         s = bpy.context.scene.meshd\n\
         s.out_dir = {out:?}\n\
         {panel}\
         result = bpy.ops.meshd.submit()\n\
         bpy.ops.meshd.refresh()\n\
         print('JOB', s.job_id, s.job_status)\n\
         print('BLENDER', bpy.app.version_string)\n\
         sys.exit(0 if result == {{'FINISHED'}} else 1)\n",
        install = install(zip),
    );
    let (ok, log) = blender_with(r, scene, &script);
    assert!(ok, "the submit operator failed:\n{log}");
    let id = log
        .lines()
        .find_map(|l| l.strip_prefix("JOB "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id printed:\n{log}"))
        .to_string();
    (id, log)
}

fn install(zip: &Path) -> String {
    format!(
        "import bpy, sys\n\
         bpy.ops.preferences.addon_install(filepath={zip:?})\n\
         bpy.ops.preferences.addon_enable(module='meshd_blender')\n",
        zip = zip.to_str().unwrap()
    )
}

/// The add-on's zip, as scripts/package-addon.sh makes it, in `root`.
fn package(root: &Path) -> std::path::PathBuf {
    let zip = root.join("meshd-blender-addon.zip");
    let st = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/package-addon.sh"
    ))
    .arg(&zip)
    .output()
    .unwrap();
    assert!(st.status.success() && zip.is_file(), "{st:?}");
    zip
}

#[test]
fn the_add_on_submits_the_open_file_to_the_local_daemon() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let zip = package(r);
    let scene = make_scene(r, "shot.blend", 4, 64, 48, 1);
    let d = Daemon::start(r, "d", None, &[]);
    let out = r.join("frames");

    let (id, _) = submit_with_add_on(
        r,
        &zip,
        &scene,
        &d.dir,
        &out,
        "s.use_scene_range = False\n\
         s.frame_start, s.frame_end = 2, 3\n\
         s.resolution_pct = 50\n",
    );
    wait_until(
        Duration::from_secs(120),
        "the add-on's job to be written",
        || d.job(&id)["frames_written"] == 2,
    );
    let job = d.job(&id);
    assert_eq!(job["name"], "shot");
    assert_eq!(job["frames_total"], 2);
    // Frames 2 and 3 at 50%: the panel's range and resolution were applied.
    assert_frames(&out, &[2, 3], (32, 24));

    // No daemon behind the data dir: the operator says so and submits nothing.
    let empty = r.join("no-daemon");
    let script = format!(
        "{install}\
         bpy.context.preferences.addons['meshd_blender'].preferences.data_dir = {empty:?}\n\
         try:\n\
         \x20   bpy.ops.meshd.submit()\n\
         except RuntimeError as e:\n\
         \x20   print('REFUSED', e)\n\
         \x20   sys.exit(0)\n\
         sys.exit(1)\n",
        install = install(&zip),
        empty = empty.to_str().unwrap(),
    );
    let (ok, log) = blender_with(r, &scene, &script);
    assert!(ok, "{log}");
    assert!(log.contains("no meshd daemon is running"), "{log}");
}

/// The add-on lists the open file's dependencies in the artist's own Blender, with meshd's
/// walker, and sends the list with the job: a submitting daemon with no Blender (or an older
/// one than the artist's) still sends the whole project, and a peer that never saw its
/// paths renders it as Blender does.
#[test]
fn the_add_on_lists_the_project_itself_so_the_daemon_needs_no_blender() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let zip = package(r);
    let proj = r.join("proj");
    make_project(&proj, 2, 64, 48, 1);
    let scene = proj.join("shots/shot.blend");
    let reference = r.join("reference");
    reference_render(&scene, &reference, 1, 2);
    let sub = Daemon::start_env(
        r,
        "sub",
        None,
        &["--no-render"],
        &[("BLENDER", "/nonexistent/blender")],
    );
    // Without the add-on's list this daemon could send only the .blend.
    let o = sub.cli(&[
        "submit",
        scene.to_str().unwrap(),
        "1",
        "--out",
        "/nonexistent/out",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no Blender"), "{err}");

    let out = r.join("frames");
    let (id, log) = submit_with_add_on(r, &zip, &scene, &sub.dir, &out, "");
    // The job records the Blender that listed its files: the artist's.
    let artists = log
        .lines()
        .find_map(|l| l.strip_prefix("BLENDER "))
        .unwrap_or_else(|| panic!("no version printed:\n{log}"));
    assert_eq!(sub.job(&id)["blender_version"], artists);

    // The project moves away; a renderer that never saw its paths joins.
    std::fs::rename(&proj, r.join("proj-moved")).unwrap();
    let renderer = Daemon::start(r, "renderer", Some(&sub.ticket()), &[]);
    wait_until(Duration::from_secs(180), "both frames written", || {
        sub.job(&id)["frames_written"] == 2
    });
    assert_like_blender(&out, &reference, 1..=2);
    assert!(!renderer.log().contains("missing dependency"));
}
