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

/// A job whose frames are all written is archived on every peer: its frame states leave
/// memory and sync (a peer joining later never hears of it), it survives restarts as a
/// summary, `meshd fetch` brings it back to write its frames elsewhere, and `meshd rm`
/// forgets it for good (a running job must be cancelled first).
#[test]
fn finished_jobs_are_archived_everywhere_and_rm_forgets_one() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "arch.blend", 4, 64, 36, 1);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let mut b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    wait_until(BIG, "b can render", || a.renderers() == 1);
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-4", &out, &[]);
    // A long job that is still running: rm refuses it.
    let slow = make_scene(root.path(), "slow.blend", 30, 160, 90, 256);
    let running = submit(
        &a,
        &slow,
        "1-30",
        &root.path().join("slow"),
        &["--priority", "-1"],
    );
    wait_until(BIG, "the job to be archived on both", || {
        a.job(&id)["archived"] == true && b.job(&id)["archived"] == true
    });
    let job = a.job(&id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["frames_written"], 4, "{job}");
    // Asked for by itself, an archived job lists its frames from disk; in the full list
    // it is a summary.
    let frames = job["frames"].as_array().unwrap();
    assert!(
        frames.len() == 4 && frames.iter().all(|f| f["state"] == "done"),
        "{job}"
    );
    let all = a.status();
    let listed = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str());
    assert!(listed.unwrap()["frames"].as_array().unwrap().is_empty());
    assert_frames(&out, &[1, 2, 3, 4], (64, 36));
    let refused = a.cli(&["rm", &running[..12]]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cancel"));
    let again = a.cli(&["pause", &id[..12]]);
    assert!(!again.status.success(), "an archived job takes no control");

    // A peer joining now is not sent the archived job.
    let c = Daemon::start(root.path(), "c", Some(&a.ticket()), &["--no-render"]);
    wait_until(BIG, "c to learn the running job", || {
        c.job(&running)["id"] == running.as_str()
    });
    assert!(c.job(&id).is_null(), "sync resent an archived job");

    // Archived state survives a restart, as a summary.
    b.restart(root.path(), &[]);
    wait_until(BIG, "b back", || b.status()["jobs"].is_array());
    assert_eq!(b.job(&id)["archived"], true);

    // `meshd fetch` of the archived job on b writes its frames there.
    let fetched = root.path().join("fetched");
    let r = b.cli_json(&[
        "fetch",
        &id[..12],
        "--out",
        fetched.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["frames_total"], 4, "{r}");
    wait_until(BIG, "b to write the archived job's frames", || {
        b.job(&id)["frames_written"] == 4
    });
    assert_frames(&fetched, &[1, 2, 3, 4], (64, 36));
    wait_until(Duration::from_secs(20), "b to archive it again", || {
        b.job(&id)["archived"] == true
    });

    // `meshd rm` forgets it on a for good: not even sync from b brings it back.
    let r = a.cli_json(&["rm", &id[..12], "--json"]);
    assert_eq!(r["id"], id.as_str());
    assert!(a.job(&id).is_null());
    let a_missing = a.cli(&["rm", &id[..12]]);
    assert!(!a_missing.status.success());
    a.cli_json(&["cancel", &running[..12], "--json"]);
    wait_until(
        Duration::from_secs(20),
        "the cancelled job to be archived on b",
        || b.job(&running)["archived"] == true,
    );
    let mut a = a;
    a.restart(root.path(), &["--no-render"]);
    // Once a hears of a job b submits after the restart, the two have synced.
    let tiny = make_scene(root.path(), "tiny.blend", 1, 32, 18, 1);
    let later = submit(&b, &tiny, "1", &root.path().join("later"), &[]);
    wait_until(BIG, "a to hear of b's new job", || {
        a.job(&later)["id"] == later.as_str()
    });
    assert!(a.job(&id).is_null(), "a removed job came back");
    assert_eq!(a.job(&running)["state"], "cancelled");
}

/// A submitter that never comes back never archives its job for the mesh: the others
/// archive it themselves once it is over and the submitter has been gone long enough.
#[test]
fn a_finished_job_whose_submitter_is_gone_is_archived_by_the_others() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "orphan.blend", 4, 64, 36, 2);
    let mut a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--no-render", "--lease-secs", "3"],
    );
    let ticket = a.ticket();
    let opts = ["--lease-secs", "3", "--archive-orphans-after", "3"];
    let r1 = Daemon::start(root.path(), "r1", Some(&ticket), &opts);
    let r2 = Daemon::start(root.path(), "r2", Some(&ticket), &opts);
    wait_until(Duration::from_secs(60), "two renderers", || {
        a.renderers() == 2
    });
    let id = submit(&a, &scene, "1-4", &root.path().join("out"), &[]);
    wait_until(
        Duration::from_secs(120),
        "both renderers to hold the project",
        || r1.job(&id)["project"]["state"] == "ready" && r2.job(&id)["project"]["state"] == "ready",
    );
    a.kill();
    for r in [&r1, &r2] {
        wait_until(
            Duration::from_secs(120),
            &format!("{} to archive the orphaned job", r.name),
            || r.job(&id)["archived"] == true,
        );
        let job = r.job(&id);
        assert_eq!(job["frames_done"], 4, "{job}");
        assert!(
            r.plain_log()
                .contains("its submitter has been gone too long"),
            "{}",
            r.name
        );
    }
    // The submitter comes back after all: it still gets every frame from them.
    a.restart(root.path(), &["--no-render", "--lease-secs", "3"]);
    wait_until(
        Duration::from_secs(120),
        "the returning submitter to write every frame",
        || a.job(&id)["frames_written"] == 4,
    );
    assert_frames(&root.path().join("out"), &[1, 2, 3, 4], (64, 36));
}
