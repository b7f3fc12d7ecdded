//! `meshd logs JOB FRAME`: Blender's log of a frame, fetched over the mesh from the peer
//! that rendered it; clear errors for a frame nobody rendered and for bad input.

mod common;

use std::time::Duration;

use common::*;

/// A submitter that renders nothing and one renderer, joined.
fn submitter_and_renderer(r: &std::path::Path) -> (Daemon, Daemon) {
    let submitter = Daemon::start(r, "submitter", None, &["--no-render"]);
    let renderer = Daemon::start(r, "renderer", Some(&submitter.ticket()), &[]);
    wait_until(Duration::from_secs(60), "the renderer to be seen", || {
        submitter.renderers() == 1
    });
    (submitter, renderer)
}

#[test]
fn a_frames_blender_log_comes_from_its_renderer() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let scene = make_scene(r, "shot.blend", 2, 64, 48, 1);
    let (submitter, renderer) = submitter_and_renderer(r);
    let id = submit(&submitter, &scene, "1-2", &r.join("out"), &[]);
    wait_until(Duration::from_secs(120), "both frames written", || {
        submitter.job(&id)["frames_written"] == 2
    });

    let log = submitter.cli_json(&["logs", &id, "2", "--json"]);
    assert_eq!(log["peer"], renderer.peer_id().as_str(), "{log}");
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    // Blender's own progress lines for that frame, and none of the other frame's.
    assert!(lines.iter().any(|l| l.contains("Fra:2")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("Fra:1 ")), "{lines:?}");
    let text = submitter.cli(&["logs", &id, "2"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("# frame 2 of job"));

    // A frame of a job nobody can render has no log yet.
    let waiting = submit(&submitter, &scene, "1", &r.join("out2"), &["--gpu-only"]);
    let none = submitter.cli(&["logs", &waiting, "1"]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("not been rendered") && err.lines().count() == 1,
        "{err}"
    );
    let bad = submitter.cli(&["logs", "nosuchjob", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no job matches"));
}

/// The log of a frame being rendered now: the renderer's lines so far, marked live.
#[test]
fn the_log_of_a_frame_being_rendered_shows_its_lines_so_far() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Slow enough to be caught mid-frame: many samples at a small size.
    let scene = make_scene(r, "slow.blend", 1, 160, 120, 4000);
    let (submitter, renderer) = submitter_and_renderer(r);
    let id = submit(&submitter, &scene, "1", &r.join("out"), &[]);
    wait_until(Duration::from_secs(120), "the frame to be sampling", || {
        submitter.job(&id)["frames"][0]["samples_done"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    let log = submitter.cli_json(&["logs", &id, "1", "--json"]);
    assert_eq!(log["peer"], renderer.peer_id().as_str(), "{log}");
    assert_eq!(log["live"], true, "{log}");
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Fra:1") && l.contains("Sample")),
        "{lines:?}"
    );
    let text = submitter.cli(&["logs", &id, "1"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("being rendered now by"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // `status --frames none` lists the job without its frames (a huge job's would cost).
    let listed = |extra: &[&str]| {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        submitter.cli_json(&args)["jobs"][0]["frames"]
            .as_array()
            .map_or(0, |f| f.len())
    };
    assert_eq!((listed(&[]), listed(&["--frames", "none"])), (1, 0));
    assert!(submitter.cli(&["cancel", &id]).status.success());
}
