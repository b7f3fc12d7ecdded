//! Scheduling at the tail of a job: an idle fast peer backs up a slow peer's last frame;
//! the first result wins and the slow render stops. Renderers are simulated
//! (`--simulate-render`) so that their speeds are known; daemons and transfers are real.

mod common;

use std::time::Duration;

use common::*;

/// Messages `d` published on gossip `topic` since it started.
fn published(d: &Daemon, topic: &str) -> u64 {
    d.cli_json(&["peers", "--json"])["gossip"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .map_or(0, |t| t["published_msgs"].as_u64().unwrap())
}

/// A submitter `a` that does not render, and `b` rendering each frame in `secs` seconds,
/// joined and seen by `a` as a renderer.
fn submitter_and_renderer(root: &std::path::Path, secs: &str) -> (Daemon, Daemon) {
    let a = Daemon::start(root, "a", None, &["--no-render"]);
    let b = Daemon::start(root, "b", Some(&a.ticket()), &["--simulate-render", secs]);
    wait_until(Duration::from_secs(30), "b can render", || {
        a.renderers() == 1
    });
    (a, b)
}

/// What `a`'s `meshd peers` lists `peer` rendering (`<job>:<frame>`, maybe with samples).
fn listed_renders(a: &Daemon, peer: &str) -> Vec<String> {
    a.cli_json(&["peers", "--json"])["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == peer)
        .map(|p| {
            let list = p["rendering"].as_array().unwrap();
            list.iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_idle_fast_peer_backs_up_a_straggler_and_the_slow_render_stops() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "tail.blend", 10, 32, 18, 1);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let slow = Daemon::start(
        root.path(),
        "slow",
        Some(&a.ticket()),
        &["--simulate-render", "20"],
    );
    let fast = Daemon::start(
        root.path(),
        "fast",
        Some(&a.ticket()),
        &["--simulate-render", "0.3"],
    );
    wait_until(Duration::from_secs(30), "both can render", || {
        a.renderers() == 2
    });
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-10", &out, &[]);
    let slow_id = slow.peer_id();
    // The slow peer, with no result yet, takes a frame like everyone.
    let mut straggler = None;
    wait_until(
        Duration::from_secs(30),
        "the slow peer to render a frame",
        || {
            straggler = a.job(&id)["frames"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["state"] == "rendering" && f["peer"] == slow_id.as_str())
                .and_then(|f| f["frame"].as_u64());
            straggler.is_some()
        },
    );
    let straggler = straggler.unwrap();
    // Well before the slow render's 20 s are up, every frame is written.
    wait_until(Duration::from_secs(15), "every frame written", || {
        a.job(&id)["frames_written"] == 10
    });
    assert_frames(&out, &(1..=10).collect::<Vec<_>>(), (32, 18));
    // The job is archived once written: its summary counts no duplicate result.
    let job = a.job(&id);
    assert_eq!(job["duplicates"], 0, "{job}");
    let backed_up = fast
        .plain_log()
        .lines()
        .filter(|l| l.contains("backing up a straggler"))
        .any(|l| l.contains(&format!("frame={straggler} ")));
    assert!(
        backed_up,
        "fast did not back up frame {straggler}:\n{}",
        fast.log()
    );
    wait_until(Duration::from_secs(10), "the slow render to stop", || {
        slow.log().contains("stopping this frame")
    });
    // The slow peer did not fail: its render was overtaken, and it rendered nothing.
    let log = slow.plain_log();
    assert!(!log.contains("frame failed"), "{log}");
    assert!(!log.contains("frame done job="), "{log}");
}

#[test]
fn peers_does_not_list_a_render_whose_frame_is_done_since_the_renderers_heartbeat() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "hb.blend", 6, 32, 18, 1);
    let (a, b) = submitter_and_renderer(root.path(), "2");
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-6", &out, &[]);
    let short = id[..12].to_string();
    let b_id = b.peer_id();
    let rendering = || listed_renders(&a, &b_id);
    // b heartbeats every 5 s (a quarter of the default lease) and renders a frame in 2 s.
    let mut frame = None;
    wait_until(
        Duration::from_secs(30),
        "a heartbeat of b listing a render",
        || {
            frame = rendering().iter().find_map(|r| {
                let rest = r.strip_prefix(&format!("{short}:"))?;
                rest.split(' ').next()?.parse::<u64>().ok()
            });
            frame.is_some()
        },
    );
    let frame = frame.unwrap();
    wait_until(Duration::from_secs(10), "that frame done", || {
        a.job(&id)["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["frame"] == frame && f["state"] == "done")
    });
    // b's next heartbeat is 3 s away or more: the last one still lists the frame, which
    // has a result now.
    let label = format!("{short}:{frame}");
    let now = rendering();
    assert!(
        !now.iter()
            .any(|r| *r == label || r.starts_with(&format!("{label} "))),
        "frame {frame} is done but peers lists it as rendering: {now:?}"
    );
    wait_until(Duration::from_secs(60), "every frame written", || {
        a.job(&id)["frames_written"] == 6
    });
}

/// A renderer goes straight on to its next frame while the last one is stored; that claim
/// travels with the stored frame's result, in one gossip message, not two.
#[test]
fn a_renderer_sends_its_next_claim_with_each_result() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "pairs.blend", 8, 32, 18, 1);
    let (a, b) = submitter_and_renderer(root.path(), "0.3");
    let before = published(&b, "claims");
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-8", &out, &[]);
    wait_until(Duration::from_secs(60), "every frame written", || {
        a.job(&id)["frames_written"] == 8
    });
    assert_frames(&out, &(1..=8).collect::<Vec<_>>(), (32, 18));
    // The first claim alone, then each result with the next claim, the last result alone:
    // 9 messages for 8 frames (16 with a message each).
    let sent = published(&b, "claims") - before;
    assert!(sent <= 10, "{sent} claims-topic messages for 8 frames");
}

/// Others learn what a renderer renders from its claims: it sends no heartbeat merely
/// because a frame started or ended, and `meshd peers` elsewhere lists a render as soon as
/// its claim is known there, not at the renderer's next heartbeat (every 5 s here).
#[test]
fn a_render_is_known_from_its_claim_and_costs_no_heartbeat() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "claims.blend", 6, 32, 18, 1);
    let (a, b) = submitter_and_renderer(root.path(), "2");
    let b_id = b.peer_id();
    let before = published(&b, "peers");
    let started = std::time::Instant::now();
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-6", &out, &[]);
    let short = id[..12].to_string();
    // The frames a shows b holding (claimed, no result yet).
    let held = || -> Vec<u64> {
        a.job(&id)["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["state"] == "rendering" && f["peer"] == b_id.as_str())
            .filter_map(|f| f["frame"].as_u64())
            .collect()
    };
    // The frames a's `meshd peers` lists b rendering.
    let listed = || -> Vec<u64> {
        listed_renders(&a, &b_id)
            .iter()
            .filter_map(|r| {
                let rest = r.strip_prefix(&format!("{short}:"))?;
                rest.split(' ').next()?.parse().ok()
            })
            .collect()
    };
    // Each time a knows a claim of b's, a lists a render of b's that a knows a claim of
    // (b may have moved on to its next frame in between: 2 s renders).
    let mut checked = Vec::new();
    while checked.len() < 3 && started.elapsed() < Duration::from_secs(60) {
        let first = held();
        let Some(&frame) = first.first() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let now = listed();
        let then = held();
        assert!(
            now.iter().any(|f| first.contains(f) || then.contains(f)),
            "a knows b's claims of {first:?} and then {then:?}, but lists b rendering {now:?}"
        );
        checked.push(frame);
        wait_until(Duration::from_secs(20), "b's next frame", || {
            !held().contains(&frame)
        });
    }
    assert_eq!(checked.len(), 3, "b's renders seen only as {checked:?}");
    wait_until(Duration::from_secs(60), "every frame written", || {
        a.job(&id)["frames_written"] == 6
    });
    // One heartbeat every 5 s, and one or two more at most (the job's project, a probe):
    // not one per frame started or ended.
    let sent = published(&b, "peers") - before;
    let allowed = started.elapsed().as_secs() / 5 + 3;
    assert!(
        sent <= allowed,
        "{sent} heartbeats in {:?} for 6 frames (at most {allowed})",
        started.elapsed()
    );
}
