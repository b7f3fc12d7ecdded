//! Results survive their renderer: finished frames are copied to other peers as soon as
//! they are done, and a result nobody can serve any more is declared lost by the submitter
//! and rendered again. Real Blender, real daemons on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;

const BIG: Duration = Duration::from_secs(240);

/// Submits frames 1-3 from `a`, and once the renderer `b` holds the project, kills `a`;
/// returns when `b` has rendered every frame. Returns the job id.
fn hand_out_and_go_away(
    a: &mut Daemon,
    b: &Daemon,
    scene: &std::path::Path,
    out: &std::path::Path,
) -> String {
    wait_until(BIG, "b can render", || a.renderers() == 1);
    let id = submit(a, scene, "1-3", out, &[]);
    wait_until(BIG, "b holds the project", || {
        b.job(&id)["project"]["state"] == "ready"
    });
    a.kill();
    wait_until(BIG, "b to render every frame", || {
        b.job(&id)["frames_done"] == 3
    });
    id
}

/// The submitter goes away after handing out its job; the renderer finishes every frame and
/// dies too. A new peer gathers the frames with `meshd fetch`, and the submitter comes back
/// and still gets every frame: both from the replica.
#[test]
fn frames_survive_their_renderer_dying_before_the_submitter_has_them() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "scene.blend", 3, 64, 48, 1);
    let mut a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let c = Daemon::start(root.path(), "c", Some(&a.ticket()), &["--no-render"]);
    let mut b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    let out = root.path().join("out");
    let id = hand_out_and_go_away(&mut a, &b, &scene, &out);
    wait_until(BIG, "c to hold a copy of every frame", || {
        c.log().matches("holding a copy of the frame").count() >= 3
    });
    b.kill();

    // A peer that never saw the job gathers its frames with `meshd fetch`.
    let e = Daemon::start(root.path(), "e", Some(&c.ticket()), &["--no-render"]);
    wait_until(BIG, "e knows the job", || {
        e.job(&id) != serde_json::Value::Null
    });
    let gathered = root.path().join("gathered");
    let r = e.cli(&[
        "fetch",
        &id[..12],
        "--out",
        gathered.to_str().unwrap(),
        "--no-wait",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    wait_until(BIG, "e to gather every frame", || {
        e.job(&id)["frames_written"] == 3
    });
    assert_frames(&gathered, &[1, 2, 3], (64, 48));
    let bad = e.cli(&["fetch", "no-such-job", "--out", gathered.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no job matches"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    a.restart(root.path(), &["--no-render"]);
    wait_until(BIG, "a to write every frame", || {
        a.job(&id)["frames_written"] == 3
    });
    assert_frames(&out, &[1, 2, 3], (64, 48));
    assert!(!a.log().contains("rendered again"), "nothing was lost");
    // What came back through the replica is Blender's own render of the scene.
    let reference = root.path().join("reference");
    reference_render(&scene, &reference, 1, 3);
    for dir in [&out, &gathered] {
        assert_like_blender(dir, &reference, 1..=3);
    }
}

/// Without replicas, the frames die with their renderer: the submitter declares them lost
/// once the renderer's lease is over, and a new renderer renders them again.
#[test]
fn a_result_nobody_can_serve_is_declared_lost_and_rendered_again() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "scene.blend", 3, 64, 48, 1);
    let lease = ["--no-render", "--lease-secs", "3"];
    let mut a = Daemon::start(root.path(), "a", None, &lease);
    let c = Daemon::start(
        root.path(),
        "c",
        Some(&a.ticket()),
        &["--no-render", "--replicas", "0", "--lease-secs", "3"],
    );
    let mut b = Daemon::start(
        root.path(),
        "b",
        Some(&a.ticket()),
        &["--replicas", "0", "--lease-secs", "3"],
    );
    let out = root.path().join("out");
    let id = hand_out_and_go_away(&mut a, &b, &scene, &out);
    b.kill();

    a.restart(root.path(), &lease);
    let d = Daemon::start(
        root.path(),
        "d",
        Some(&c.ticket()),
        &["--replicas", "0", "--lease-secs", "3"],
    );
    wait_until(BIG, "a to write every frame", || {
        a.job(&id)["frames_written"] == 3
    });
    assert_frames(&out, &[1, 2, 3], (64, 48));
    // Frames a wrote before it went away were not lost; all the others were.
    let lost = a.log().matches("rendered again").count();
    assert_eq!(
        d.log().matches("frame done").count(),
        lost,
        "d rendered exactly the lost frames"
    );
    assert_eq!(a.job(&id)["state"], "done");
}
