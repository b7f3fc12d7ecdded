//! Quotas per submitter: a peer works on at most `--quota-jobs` running jobs of one
//! submitter (the oldest first) and fetches no project over `--quota-project-bytes`.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_submitters_jobs_past_the_quota_wait_their_turn() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let _b = Daemon::start(root.path(), "b", Some(&a.ticket()), &["--quota-jobs", "1"]);
    wait_until(Duration::from_secs(60), "b to render", || {
        a.renderers() == 1
    });
    let scene = make_scene(root.path(), "q.blend", 8, 64, 36, 16);
    let first = submit(
        &a,
        &scene,
        "1-8",
        &root.path().join("out1"),
        &["--name", "first"],
    );
    // Higher priority: without the quota b would render it first.
    let second = submit(
        &a,
        &scene,
        "1-2",
        &root.path().join("out2"),
        &["--name", "second", "--priority", "10"],
    );
    // While the first has frames left, b does not touch the second.
    wait_until(Duration::from_secs(180), "the first job done", || {
        let status = a.cli_json(&["status", "--json"]);
        let jobs = status["jobs"].as_array().cloned().unwrap_or_default();
        let done = |id: &str| {
            jobs.iter()
                .find(|j| j["id"] == id)
                .map_or(0, |j| j["frames_done"].as_u64().unwrap_or(0))
        };
        let (d1, d2) = (done(&first), done(&second));
        assert!(
            d1 == 8 || d2 == 0,
            "second job rendered before the first was over"
        );
        d1 == 8
    });
    wait_until(Duration::from_secs(120), "the second job done", || {
        a.job(&second)["frames_written"] == 2
    });
}

#[test]
fn a_project_over_the_byte_quota_is_not_fetched() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let b = Daemon::start(
        root.path(),
        "b",
        Some(&a.ticket()),
        &["--quota-project-bytes", "1K"],
    );
    wait_until(Duration::from_secs(60), "b to render", || {
        a.renderers() == 1
    });
    let scene = make_scene(root.path(), "big.blend", 2, 64, 36, 4);
    let id = submit(&a, &scene, "1-2", &root.path().join("out"), &[]);
    wait_until(Duration::from_secs(60), "b to refuse the project", || {
        let p = &b.job(&id)["project"];
        p["state"] == "retrying"
            && p["error"]
                .as_str()
                .is_some_and(|e| e.contains("--quota-project-bytes"))
    });
    assert_eq!(a.job(&id)["frames_done"], 0);
}
