//! Partitions: the mesh is cut in two while a job renders; both sides go on rendering; the
//! link heals; every frame reaches the output exactly once and every peer converges on the
//! same frame states. Network namespaces this test creates (root); real Blender.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const FRAMES: u64 = 40;
const BIG: Duration = Duration::from_secs(300);

fn done(d: &Daemon, id: &str) -> u64 {
    d.job(id)["frames_done"].as_u64().unwrap_or(0)
}

/// Each frame's (state, renderer) as `d` sees it.
fn frames(d: &Daemon, id: &str) -> Vec<(Value, Value)> {
    d.job(id)["frames"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| (f["state"].clone(), f["peer"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn both_sides_of_a_partition_render_and_converge_after_it_heals() {
    let Some(lan) = TestLan::new() else { return };
    let root = tempfile::tempdir().unwrap();
    // 64 samples: slow enough frames that the job cannot finish before the cut.
    let scene = make_scene(root.path(), "split.blend", FRAMES as u32, 96, 54, 64);
    let opts = ["--lease-secs", "3", "--no-mdns"];
    let a = Daemon::start_in_netns(
        root.path(),
        "a",
        &lan.ns[0],
        None,
        &["--lease-secs", "3", "--no-mdns", "--no-render"],
    );
    let ticket = a.ticket();
    let r1 = Daemon::start_in_netns(root.path(), "r1", &lan.ns[0], Some(&ticket), &opts);
    let r2 = Daemon::start_in_netns(root.path(), "r2", &lan.ns[1], Some(&ticket), &opts);
    let r3 = Daemon::start_in_netns(root.path(), "r3", &lan.ns[1], Some(&ticket), &opts);
    wait_until(BIG, "three renderers", || a.renderers() == 3);

    let out = root.path().join("out");
    let id = submit(&a, &scene, &format!("1-{FRAMES}"), &out, &[]);
    wait_until(
        BIG,
        "the far side to hold the project and a frame done",
        || {
            r2.job(&id)["project"]["state"] == "ready"
                && r3.job(&id)["project"]["state"] == "ready"
                && done(&a, &id) >= 1
        },
    );

    lan.cut();
    let (near, far) = (done(&a, &id), done(&r2, &id));
    assert!(
        near < FRAMES - 6,
        "{near} of {FRAMES} frames were done before the cut: the test needs slower frames"
    );
    wait_until(BIG, "both sides to render while cut off", || {
        done(&a, &id) >= near + 3 && done(&r2, &id) >= far + 3
    });
    assert!(
        done(&a, &id) < FRAMES || done(&r2, &id) < FRAMES,
        "the job finished before the partition mattered"
    );

    lan.heal();
    wait_until(BIG, "every frame written", || {
        a.job(&id)["frames_written"] == FRAMES
    });
    let frames_list: Vec<u32> = (1..=FRAMES as u32).collect();
    assert_frames(&out, &frames_list, (96, 54));
    wait_until(BIG, "every peer to converge", || {
        let want = frames(&a, &id);
        [&r1, &r2, &r3].iter().all(|d| frames(d, &id) == want)
    });
    assert_eq!(a.job(&id)["state"], "done");
}
