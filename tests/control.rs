//! Job control: pause, resume, priority and cancel spread from the submitter to the mesh;
//! the Blenders of a paused or cancelled job stop within 2 s. Real Blender and daemons.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BIG: Duration = Duration::from_secs(240);

/// Seconds until the renderer runs no Blender any more.
fn blenders_gone_within(pid: u32, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if child_pids(pid).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn pause_resume_priority_and_cancel_reach_the_renderer() {
    let root = tempfile::tempdir().unwrap();
    // Slow frames (seconds each), so a render is surely in flight when we act.
    let scene = make_scene(root.path(), "ctl.blend", 30, 160, 90, 256);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    wait_until(BIG, "b can render", || a.renderers() == 1);
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-30", &out, &[]);
    let rendering = || b.job(&id)["frames_in_flight"].as_u64().unwrap_or(0) > 0;
    wait_until(BIG, "b to render a frame", rendering);
    let pid = b.pid().unwrap();

    // Only the submitter controls its job.
    let refused = b.cli(&["pause", &id[..12]]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another machine"));

    let r = a.cli_json(&["pause", &id[..12], "--json"]);
    assert_eq!(r["run"], "paused");
    assert!(
        blenders_gone_within(pid, Duration::from_secs(2)),
        "b's Blender still runs 2 s after the pause"
    );
    wait_until(Duration::from_secs(10), "b to see the job paused", || {
        b.job(&id)["state"] == "paused"
    });
    let done_paused = b.job(&id)["frames_done"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.job(&id)["frames_done"].as_u64().unwrap(), done_paused);
    assert!(!rendering(), "nothing renders while paused");

    let r = a.cli_json(&["priority", &id[..12], "7", "--json"]);
    assert_eq!(r["priority"], 7);
    wait_until(Duration::from_secs(10), "b to see the new priority", || {
        b.job(&id)["priority"] == 7
    });

    a.cli_json(&["resume", &id[..12], "--json"]);
    wait_until(BIG, "b to render again after the resume", || {
        b.job(&id)["frames_done"].as_u64().unwrap_or(0) > done_paused
    });
    wait_until(BIG, "b to be in a frame", rendering);

    let r = a.cli_json(&["cancel", &id[..12], "--json"]);
    assert_eq!(r["run"], "cancelled");
    assert!(
        blenders_gone_within(pid, Duration::from_secs(2)),
        "b's Blender still runs 2 s after the cancel"
    );
    wait_until(
        Duration::from_secs(10),
        "both to see the job cancelled",
        || a.job(&id)["state"] == "cancelled" && b.job(&id)["state"] == "cancelled",
    );
    let again = a.cli(&["resume", &id[..12]]);
    assert!(!again.status.success(), "a cancelled job stays cancelled");
    // The stopped renders did not count as failures.
    let job = a.job(&id);
    assert!(
        job["frames"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["failures"].as_array().unwrap().is_empty()),
        "{job}"
    );
}
