//! Faults: a renderer killed mid-job, a daemon restarted with its data dir.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn killed_renderer_mid_job_still_yields_every_frame_once() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "kill.blend", 12, 160, 90, 32);
    let lease = ["--lease-secs", "3"];
    // The submitter does not render, so the killed peer surely holds frames mid-job.
    let a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--lease-secs", "3", "--no-render"],
    );
    let ticket = a.ticket();
    let mut b = Daemon::start(root.path(), "b", Some(&ticket), &lease);
    let c = Daemon::start(root.path(), "c", Some(&ticket), &lease);
    wait_until(
        Duration::from_secs(60),
        "two renderers visible to the submitter",
        || a.renderers() == 2,
    );
    let b_id = b.peer_id();

    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-12", &out, &[]);
    // Kill b while it holds a claim.
    let mut held = None;
    wait_until(
        Duration::from_secs(120),
        "b to be rendering a frame",
        || {
            let job = a.job(&id);
            held = job["frames"].as_array().and_then(|fs| {
                fs.iter()
                    .find(|f| f["state"] == "rendering" && f["peer"] == b_id.as_str())
                    .map(|f| f["frame"].as_u64().unwrap())
            });
            held.is_some()
        },
    );
    // The claim is announced just before Blender (and its sandbox) starts.
    let mut blenders = Vec::new();
    wait_until(Duration::from_secs(30), "b's Blender to run", || {
        blenders = descendants(b.pid().unwrap());
        blenders.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "blender")
        })
    });
    b.kill();
    let held = held.unwrap();
    wait_until(Duration::from_secs(10), "b's Blender to die with b", || {
        blenders.iter().all(|p| !alive(*p))
    });

    wait_until(
        Duration::from_secs(300),
        "every frame written despite the dead peer",
        || a.job(&id)["frames_written"] == 12,
    );
    let frames: Vec<u32> = (1..=12).collect();
    assert_frames(&out, &frames, (160, 90));
    let job = a.job(&id);
    assert_eq!(job["state"], "done");
    let f = job["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frame"] == held)
        .unwrap()
        .clone();
    assert_eq!(f["state"], "done");
    assert_ne!(
        f["peer"],
        b_id.as_str(),
        "the frame b held was rendered by another peer"
    );
    drop(c);
}

#[test]
fn restarted_daemon_carries_on_and_finished_job_stays_finished() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "restart.blend", 8, 120, 68, 16);
    let mut a = Daemon::start(root.path(), "a", None, &[]);
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-8", &out, &[]);
    wait_until(Duration::from_secs(120), "a few frames done", || {
        a.job(&id)["frames_done"].as_u64().unwrap_or(0) >= 2
    });
    // kill -9 mid-job, then start again on the same data dir. A kill in the middle of
    // copying a frame leaves its part file: the restarted daemon clears it.
    std::fs::write(
        out.join(".frame_0002.png.2d38ee466ed30581.part"),
        b"half a frame",
    )
    .unwrap();
    a.restart(root.path(), &[]);
    assert_eq!(
        a.job(&id)["frames_total"],
        8,
        "the job survived the restart"
    );
    wait_until(
        Duration::from_secs(180),
        "the restarted daemon to finish the job",
        || a.job(&id)["frames_written"] == 8,
    );
    assert_frames(&out, &(1..=8).collect::<Vec<_>>(), (120, 68));

    // A finished job stays finished across another restart, and nothing is rendered again.
    let before = a.job(&id);
    a.restart(root.path(), &[]);
    let after = a.job(&id);
    assert_eq!(after["state"], "done");
    assert_eq!(after["frames_done"], 8);
    assert_eq!(after["frames_written"], 8);
    assert_eq!(before["frames"], after["frames"]);
}

#[test]
fn job_survives_the_submitter_going_away() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "away.blend", 8, 120, 68, 16);
    let mut a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let ticket = a.ticket();
    let b = Daemon::start(root.path(), "b", Some(&ticket), &[]);
    let _c = Daemon::start(root.path(), "c", Some(&ticket), &[]);
    wait_until(
        Duration::from_secs(60),
        "two renderers visible to the submitter",
        || a.renderers() == 2,
    );

    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-8", &out, &[]);
    wait_until(
        Duration::from_secs(120),
        "both renderers to have started on the job",
        || {
            let job = a.job(&id);
            let workers: std::collections::HashSet<_> = job["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["state"] == "rendering" || f["state"] == "done")
                .filter_map(|f| f["peer"].as_str().map(String::from))
                .collect();
            workers.len() == 2
        },
    );
    // The submitter goes away; the renderers already hold the scene and finish without it.
    a.kill();
    wait_until(
        Duration::from_secs(180),
        "the renderers to finish without the submitter",
        || b.job(&id)["frames_done"] == 8,
    );
    // Back again: it catches up by sync and fetches every frame from the renderers.
    a.restart(root.path(), &["--no-render"]);
    wait_until(
        Duration::from_secs(60),
        "the submitter to collect every frame",
        || a.job(&id)["frames_written"] == 8,
    );
    assert_frames(&out, &(1..=8).collect::<Vec<_>>(), (120, 68));
}

/// A project fetch task that panics does not leave its job stuck "fetching": the fetch is
/// tried again and every frame arrives.
#[cfg(feature = "test-faults")]
#[test]
fn a_crashed_project_fetch_is_retried() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "panic.blend", 2, 64, 48, 1);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let b = Daemon::start_env(
        root.path(),
        "b",
        Some(&a.ticket()),
        &[],
        &[("MESHD_FAULT_PANIC_SCENE_FETCH", "1")],
    );
    wait_until(Duration::from_secs(60), "b can render", || {
        a.renderers() == 1
    });
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-2", &out, &[]);
    wait_until(Duration::from_secs(120), "every frame written", || {
        a.job(&id)["frames_written"] == 2
    });
    assert!(
        b.log().contains("MESHD_FAULT_PANIC_SCENE_FETCH"),
        "the fault fired"
    );
    assert_frames(&out, &[1, 2], (64, 48));
}

/// A renderer killed after a frame is rendered and stored but before it is flushed and
/// announced: nobody ever hears of that result, the frame is rendered again elsewhere, and
/// the restarted renderer does not bring the half-stored result back.
#[cfg(feature = "test-faults")]
#[test]
fn a_renderer_killed_mid_flush_leaves_no_result_behind() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "flush.blend", 6, 96, 54, 4);
    let lease = ["--lease-secs", "3"];
    let a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--lease-secs", "3", "--no-render"],
    );
    let ticket = a.ticket();
    let mut b = Daemon::start_env(
        root.path(),
        "b",
        Some(&ticket),
        &lease,
        &[("MESHD_FAULT_PAUSE_BEFORE_FLUSH_MS", "60000")],
    );
    wait_until(Duration::from_secs(60), "b renders", || a.renderers() == 1);
    let b_id = b.peer_id();
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-6", &out, &[]);

    // b renders a frame, stores it and stops before the flush: kill it there.
    let mut frame = None;
    wait_until(
        Duration::from_secs(120),
        "b to pause before a flush",
        || {
            frame = b
                .plain_log()
                .split("MESHD_FAULT_PAUSE_BEFORE_FLUSH frame ")
                .nth(1)
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.trim().parse::<u64>().ok());
            frame.is_some()
        },
    );
    let frame = frame.unwrap();
    b.kill();
    // c joins only now, so the frame b held can only be rendered again.
    let c = Daemon::start(root.path(), "c", Some(&ticket), &lease);
    let c_id = c.peer_id();

    // Nobody hears of b's result; the frame is rendered again by c.
    let done_by = |job: &serde_json::Value| {
        job["frames"].as_array().and_then(|fs| {
            fs.iter()
                .find(|f| f["frame"] == frame && f["state"] == "done")
                .map(|f| f["peer"].as_str().unwrap_or_default().to_string())
        })
    };
    let mut renderer = None;
    wait_until(Duration::from_secs(120), "the frame rendered again", || {
        renderer = done_by(&a.job(&id));
        renderer.is_some()
    });
    assert_eq!(
        renderer.as_deref(),
        Some(c_id.as_str()),
        "frame {frame}: the only result is c's (b, killed mid-flush, announced nothing)"
    );

    // b comes back with its data dir (the stored, unflushed frame in it) and renders on.
    b.restart(root.path(), &lease);
    assert_eq!(b.peer_id(), b_id);
    wait_until(Duration::from_secs(300), "every frame written", || {
        a.job(&id)["frames_written"] == 6
    });
    assert_frames(&out, &(1..=6).collect::<Vec<_>>(), (96, 54));
    let job = a.job(&id);
    assert_eq!(job["state"], "done");
    assert_eq!(
        job["duplicates"], 0,
        "no second result for any frame: b did not bring back what it never flushed"
    );
    assert_eq!(done_by(&job).as_deref(), Some(c_id.as_str()));
}

/// A renderer that announces results whose bytes are no image: the submitter writes none
/// of them, declares them lost (so the frames are rendered again) and disconnects the
/// renderer, which signed them; nothing is reported done over garbage.
#[test]
fn results_that_are_no_image_are_never_written() {
    lying_renderer_is_refused("1", "is not a PNG file");
}

/// The same for a renderer whose frames are valid images of another size than the job's
/// (as the submitting machine's Blender computed it).
#[test]
fn results_of_the_wrong_size_are_never_written() {
    lying_renderer_is_refused("resize", "8x8");
}

fn lying_renderer_is_refused(how: &str, why: &str) {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "liar.blend", 2, 64, 36, 1);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let liar = Daemon::start_env(
        root.path(),
        "liar",
        Some(&a.ticket()),
        &[],
        &[("MESHD_FAULT_GARBAGE_OUTPUT", how)],
    );
    wait_until(Duration::from_secs(60), "the liar to render", || {
        a.renderers() == 1
    });
    let liar_id = liar.peer_id();
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-2", &out, &[]);
    wait_until(
        Duration::from_secs(180),
        "the liar to be disconnected",
        || {
            a.log()
                .lines()
                .any(|l| l.contains("misbehaved") && l.contains(&liar_id))
                && !a.connected_peers().contains(&liar_id)
        },
    );
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "nothing written: {written:?}");
    let job = a.job(&id);
    assert_ne!(job["state"], "done", "{job}");
    assert_eq!(job["frames_written"], 0, "{job}");
    assert!(a.log().contains(why), "the submitter says why ({why})");
}

/// `bwrap` processes (Linux /proc) with `arg` among their arguments.
fn bwraps_naming(arg: &std::path::Path) -> Vec<u32> {
    let arg = arg.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let bwrap = args.next().is_some_and(|a| a.ends_with(b"bwrap"));
        if bwrap && args.any(|a| a == arg) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// A sandbox like the one bubblewrap 0.8 can leave behind when its daemon is killed: a
/// `bwrap` hiding `dir`, orphaned (its starting shell has exited), running until killed.
/// Kills what is left of it when dropped.
struct Stray(std::path::PathBuf);

impl Stray {
    fn plant(dir: &std::path::Path) -> Stray {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                r#"bwrap --die-with-parent --unshare-pid --ro-bind / / --tmpfs "$1" -- sleep 600 \
                   </dev/null >/dev/null 2>&1 &"#,
            )
            .arg("sh")
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        let stray = Stray(dir.to_path_buf());
        // bwrap is up before the process it starts inside: wait for that one too.
        wait_until(
            Duration::from_secs(10),
            "the planted sandbox to run a process",
            || {
                bwraps_naming(dir)
                    .iter()
                    .any(|p| !descendants(*p).is_empty())
            },
        );
        stray
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        for pid in bwraps_naming(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn a_restarted_daemon_kills_sandboxes_its_killed_run_left_behind() {
    if std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: bubblewrap is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a");
    let left = Stray::plant(&dir);
    // A sibling data dir whose name starts with this one's: another daemon's business.
    let other = Stray::plant(&root.path().join("ab"));
    let before = bwraps_naming(&dir);
    let inside: Vec<u32> = before.iter().flat_map(|p| descendants(*p)).collect();
    assert!(!inside.is_empty(), "the planted sandbox runs a process");

    let _a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    wait_until(
        Duration::from_secs(10),
        "the daemon to kill the sandbox left in its data dir",
        || before.iter().chain(&inside).all(|p| !alive(*p)),
    );
    assert!(
        !bwraps_naming(&root.path().join("ab")).is_empty(),
        "another data dir's sandbox is left alone"
    );
    drop((left, other));
}
