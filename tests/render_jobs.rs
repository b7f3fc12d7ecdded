//! Job settings, live progress and failure reporting, seen through the CLI of a real daemon.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn overrides_apply_and_progress_is_live() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "prog.blend", 2, 320, 180, 4);
    let d = Daemon::start(root.path(), "d", None, &[]);
    let out = root.path().join("out");
    // 50% of 320x180 at 256 samples: slow enough to watch the samples climb.
    let id = submit(
        &d,
        &scene,
        "1-2",
        &out,
        &["--resolution", "50", "--samples", "256"],
    );
    let mut seen = None;
    wait_until(
        Duration::from_secs(120),
        "a frame in flight with sample progress",
        || {
            let job = d.job(&id);
            seen = job["frames"].as_array().and_then(|fs| {
                fs.iter()
                    .find(|f| {
                        f["state"] == "rendering" && f["samples_done"].as_u64().unwrap_or(0) > 0
                    })
                    .cloned()
            });
            seen.is_some()
        },
    );
    let f = seen.unwrap();
    assert_eq!(
        f["samples_total"], 256,
        "the samples override reached Blender: {f}"
    );
    // The peers view shows it too (a frame may just have started: wait for its samples).
    let mut me = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(120),
        "peers shows sample progress",
        || {
            me = d.cli_json(&["peers", "--json"])["peers"][0].clone();
            me["rendering"][0]
                .as_str()
                .is_some_and(|r| r.contains("samples"))
        },
    );
    assert!(
        me["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|dev| dev["kind"] == "Cpu"),
        "{me}"
    );

    wait_until(Duration::from_secs(300), "both frames written", || {
        d.job(&id)["frames_written"] == 2
    });
    assert_frames(&out, &[1, 2], (160, 90));
}

#[test]
fn failing_job_ends_failed_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "broken.blend", 4, 64, 48, 1);
    let d = Daemon::start(root.path(), "d", None, &[]);
    let out = root.path().join("out");
    // `--wait` must end, non-zero, with the reason — not hang.
    let run = Command::new(BIN)
        .arg("--data-dir")
        .arg(&d.dir)
        .args([
            "submit",
            scene.to_str().unwrap(),
            "1-4",
            "--camera",
            "NoSuchCamera",
            // Without the dependency walk submit cannot see that the camera is not there
            // (with it, submit refuses: tests/bad_input.rs); the renderers find out.
            "--no-deps",
            "--wait",
        ])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a failed job exits non-zero");
    assert!(
        err.contains("NoSuchCamera"),
        "the reason names the camera: {err}"
    );

    let status = d.status();
    let job = &status["jobs"][0];
    assert_eq!(job["state"], "failed");
    assert!(
        job["failure"].as_str().unwrap().contains("NoSuchCamera"),
        "{job}"
    );
    let failures: usize = job["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["failures"].as_array().unwrap().len())
        .sum();
    assert_eq!(failures, 3, "a peer stops after failing 3 frames of a job");
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "no output"
    );
}

/// A `blender` in `dir` that runs the case arm `arm` on its arguments, then the real one.
fn blender_wrapper(dir: &std::path::Path, name: &str, arm: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$*\" in {arm} esac\nexec {} \"$@\"\n",
            blender().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn frames_a_peer_fails_are_rendered_by_another_and_it_stops_claiming() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "retry.blend", 8, 64, 48, 2);
    let broken = blender_wrapper(
        root.path(),
        "broken-blender",
        "*meshd_driver*) echo 'Error: simulated GPU failure'; exit 3;;",
    );

    let bad = Daemon::start(
        root.path(),
        "bad",
        None,
        &["--blender", broken.to_str().unwrap()],
    );
    let good = Daemon::start(root.path(), "good", Some(&bad.ticket()), &[]);
    wait_until(Duration::from_secs(60), "both peers able to render", || {
        bad.renderers() == 2
    });
    let bad_id = bad.peer_id();
    let good_id = good.peer_id();

    let out = root.path().join("out");
    let id = submit(&bad, &scene, "1-8", &out, &[]);
    wait_until(Duration::from_secs(180), "every frame written", || {
        bad.job(&id)["frames_written"] == 8
    });
    assert_frames(&out, &(1..=8).collect::<Vec<_>>(), (64, 48));

    let job = bad.job(&id);
    assert_eq!(job["state"], "done");
    let frames = job["frames"].as_array().unwrap();
    assert!(
        frames.iter().all(|f| f["peer"] == good_id.as_str()),
        "only the good peer produced frames"
    );
    let failed: Vec<_> = frames
        .iter()
        .filter(|f| !f["failures"].as_array().unwrap().is_empty())
        .collect();
    assert!(!failed.is_empty(), "the bad peer did try, and failed");
    assert!(
        failed.len() <= 3,
        "the bad peer stopped after 3 failed frames: {}",
        failed.len()
    );
    for f in &failed {
        let reasons = f["failures"].as_array().unwrap();
        assert!(
            reasons
                .iter()
                .all(|r| r.as_str().unwrap().contains("simulated GPU failure")),
            "{f}"
        );
    }
    assert!(frames.iter().all(|f| f["peer"] != bad_id.as_str()));
}

#[test]
fn scripts_in_the_blend_run_only_when_job_and_peer_allow_them() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let base = make_scene(r, "base.blend", 1, 32, 24, 1);
    let scene = r.join("autorun.blend");
    with_python(&base, &scene, AUTORUN_MARKER);
    let cases = [
        ("job-only", true, false),
        ("peer-only", false, true),
        ("both", true, true),
    ];
    for (name, job_allows, peer_allows) in cases {
        let extra: &[&str] = if peer_allows {
            &["--allow-scripts"]
        } else {
            &[]
        };
        let d = Daemon::start(r, name, None, extra);
        let out = r.join(format!("{name}-out"));
        let flags: &[&str] = if job_allows {
            &["--allow-scripts"]
        } else {
            &[]
        };
        let id = submit(&d, &scene, "1", &out, flags);
        wait_until(Duration::from_secs(120), "the frame to be written", || {
            d.job(&id)["frames_written"] == 1
        });
        // The script writes into Blender's temp dir (the only place it may write when
        // Blender is sandboxed), in the daemon's work dir.
        let ran = find_file(&d.dir.join("work"), "autorun.ran").is_some();
        assert_eq!(ran, job_allows && peer_allows, "{name}: script ran = {ran}");
    }
}

#[test]
fn a_frame_past_the_timeout_fails_instead_of_hanging() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "slow.blend", 3, 320, 180, 4);
    let d = Daemon::start(root.path(), "d", None, &["--frame-timeout", "1"]);
    let out = root.path().join("out");
    // Far more than a second per frame on any CPU.
    let id = submit(
        &d,
        &scene,
        "1-3",
        &out,
        &["--samples", "4096", "--resolution", "200"],
    );
    wait_until(
        Duration::from_secs(180),
        "the job to fail on its timeouts",
        || d.job(&id)["state"] == "failed",
    );
    let job = d.job(&id);
    let failure = job["failure"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        failure.contains("1s") || failure.contains("time"),
        "the reason names the timeout: {job}"
    );
    // `meshd retry`: the frames without a result again, as a new job writing to the same
    // dir. The peer gave up after 3 failed attempts, so a frame may never have been tried:
    // nobody renders it in the failed job either, so it goes too (it was left out, and lost).
    let failed_before = job["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["state"] == "failed")
        .count();
    assert!(failed_before >= 1, "{job}");
    let again = d.cli_json(&["retry", &id, "--json"]);
    assert_eq!(again["name"], "slow retry", "{again}");
    let retry = d.job(again["id"].as_str().unwrap());
    assert_eq!(retry["frames_total"], 3, "{failed_before} failed: {retry}");
    assert_eq!(retry["out_dir"], job["out_dir"]);
    // The failed job is cancelled: a renderer joining later renders none of it twice.
    assert_eq!(d.job(&id)["state"], "cancelled");
    let none = d.cli(&["retry", again["id"].as_str().unwrap()]);
    assert!(
        !none.status.success(),
        "a job without failed frames has nothing to retry"
    );
}

/// A job that no live peer can render (it wants a GPU; the only renderer has a CPU) says so
/// in `status` instead of sitting "running" without a word; it neither fails nor renders.
#[test]
fn a_job_no_live_peer_fits_says_why_it_waits() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "gpu.blend", 2, 64, 48, 1);
    let d = Daemon::start(root.path(), "d", None, &[]);
    wait_until(Duration::from_secs(60), "d can render", || {
        d.renderers() == 1
    });
    let out = root.path().join("out");
    let id = submit(&d, &scene, "1-2", &out, &["--gpu-only"]);
    wait_until(
        Duration::from_secs(30),
        "the job to say why it waits",
        || {
            d.job(&id)["waiting"].as_str().is_some_and(|w| {
                w.contains("no live peer can render this job") && w.contains("GPU")
            })
        },
    );
    let job = d.job(&id);
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["frames_done"], 0, "{job}");
    let human = d.cli(&["status", &id[..12]]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("waiting for one to join"));
}

/// While the only peer that could still render a job is starting (probing its Blender), the
/// job is not reported failed: `--wait` would give up on a job that goes on.
#[test]
fn a_job_is_not_failed_while_a_renderer_is_still_probing() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "probing.blend", 4, 64, 48, 1);
    let broken = blender_wrapper(
        root.path(),
        "broken-blender",
        "*meshd_driver*) echo 'Error: simulated GPU failure'; exit 3;;",
    );
    let slow = blender_wrapper(root.path(), "slow-probe-blender", "*probe*) sleep 12;;");
    let bad = Daemon::start(
        root.path(),
        "bad",
        None,
        &["--blender", broken.to_str().unwrap()],
    );
    wait_until(Duration::from_secs(60), "bad can render", || {
        bad.renderers() == 1
    });
    let good = Daemon::start(
        root.path(),
        "good",
        Some(&bad.ticket()),
        &["--blender", slow.to_str().unwrap()],
    );
    let good_id = good.peer_id();
    wait_until(Duration::from_secs(30), "bad to hear good", || {
        bad.cli_json(&["peers", "--json"])["peers"]
            .as_array()
            .is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["id"] == good_id.as_str() && p["last_seen_secs"].is_number())
            })
    });
    let out = root.path().join("out");
    let id = submit(&bad, &scene, "1-4", &out, &[]);
    wait_until(Duration::from_secs(180), "every frame written", || {
        let job = bad.job(&id);
        assert_ne!(
            job["state"], "failed",
            "reported failed while good was probing: {job}"
        );
        job["frames_written"] == 4
    });
    let job = bad.job(&id);
    assert!(
        job["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| !f["failures"].as_array().unwrap().is_empty()),
        "bad tried and failed first: {job}"
    );
}

/// `--simulate-render` (a benchmarking aid): no Blender runs, frames take the given time and
/// are small PNGs that differ per frame, delivered like real ones.
#[test]
fn a_simulated_renderer_delivers_distinct_small_frames() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "sim.blend", 4, 64, 48, 1);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let s = Daemon::start(
        root.path(),
        "s",
        Some(&a.ticket()),
        &["--simulate-render", "0.05"],
    );
    wait_until(Duration::from_secs(30), "s can render", || {
        a.renderers() == 1
    });
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-4", &out, &[]);
    wait_until(Duration::from_secs(60), "every frame written", || {
        a.job(&id)["frames_written"] == 4
    });
    // At the job's size: the submitter checks every frame's size.
    assert_frames(&out, &[1, 2, 3, 4], (64, 48));
    let a1 = std::fs::read(out.join("frame_0001.png")).unwrap();
    assert_ne!(a1, std::fs::read(out.join("frame_0002.png")).unwrap());
    assert!(!s.log().contains("started Blender"), "no Blender ran");
}
