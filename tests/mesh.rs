//! Three daemons as separate processes on 127.0.0.1 render a generated scene with real Blender.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn three_daemons_render_a_job_together() {
    let root = tempfile::tempdir().unwrap();
    // Frames slow enough (~0.3-1 s each) that all three peers get a share.
    let scene = make_scene(root.path(), "shot.blend", 12, 160, 90, 16);
    let a = Daemon::start(root.path(), "a", None, &["--lease-secs", "5"]);
    let ticket = a.ticket();
    let b = Daemon::start(root.path(), "b", Some(&ticket), &["--lease-secs", "5"]);
    let c = Daemon::start(root.path(), "c", Some(&ticket), &["--lease-secs", "5"]);
    wait_until(
        Duration::from_secs(60),
        "all three peers to see three renderers",
        || [&a, &b, &c].iter().all(|d| d.renderers() == 3),
    );

    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-12", &out, &[]);
    wait_until(
        Duration::from_secs(300),
        "every frame written to the output dir",
        || a.job(&id)["frames_written"] == 12,
    );

    let frames: Vec<u32> = (1..=12).collect();
    assert_frames(&out, &frames, (160, 90));

    // `meshd status --json` has the documented shape on every peer, and all agree.
    let job = a.job(&id);
    assert_eq!(job["state"], "done");
    assert_eq!(job["frames_total"], 12);
    assert_eq!(job["frames_done"], 12);
    assert_eq!(job["name"], "shot");
    let list = job["frames"].as_array().unwrap();
    assert_eq!(list.len(), 12);
    let mut renderers = std::collections::HashSet::new();
    for f in list {
        assert_eq!(f["state"], "done");
        renderers.insert(f["peer"].as_str().unwrap().to_string());
    }
    assert!(
        renderers.len() >= 2,
        "frames spread over at least two peers: {renderers:?}"
    );
    for d in [&b, &c] {
        wait_until(
            Duration::from_secs(30),
            "the other peers to agree the job is done",
            || d.job(&id)["frames_done"] == 12,
        );
    }

    // `meshd peers --json`: ids and frames_rendered add up to the job.
    let peers = a.cli_json(&["peers", "--json"]);
    let peers = peers["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    let total: u64 = peers
        .iter()
        .map(|p| p["frames_rendered"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 12);
    assert!(
        peers
            .iter()
            .all(|p| p["id"].as_str().is_some_and(|s| s.starts_with("12D3")))
    );
    assert!(peers.iter().all(|p| p["blender"].as_str().is_some()));

    // Human-readable status names the job; `status JOB` lists frames.
    let human = a.cli(&["status", &id[..8]]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("shot") && text.contains("12/12") && text.contains("frame"),
        "{text}"
    );
}

#[test]
fn a_late_peer_catches_up_by_sync() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "late.blend", 3, 64, 48, 4);
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-3", &out, &[]);
    // A renderer that joins afterwards never saw the job's gossip: sync brings it, and it
    // renders the whole job.
    let b = Daemon::start(root.path(), "b", Some(&a.ticket()), &[]);
    wait_until(
        Duration::from_secs(120),
        "the late peer to learn the job and render it",
        || a.job(&id)["frames_written"] == 3,
    );
    assert_frames(&out, &[1, 2, 3], (64, 48));
    // Once written, the job is archived on both: a peer joining now is not sent it.
    wait_until(Duration::from_secs(20), "b to archive the job", || {
        b.job(&id)["archived"] == true
    });
    let c = Daemon::start(root.path(), "c", Some(&a.ticket()), &["--no-render"]);
    wait_until(Duration::from_secs(30), "c to connect", || {
        c.connected_peers().len() >= 2
    });
    assert!(
        c.job(&id).is_null(),
        "an archived job was sent to a new peer"
    );
}

#[test]
fn peers_find_each_other_and_any_peer_can_submit() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "any.blend", 4, 64, 48, 4);
    let mut a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let ticket = a.ticket();
    let b = Daemon::start(root.path(), "b", Some(&ticket), &["--no-render"]);
    let c = Daemon::start(root.path(), "c", Some(&ticket), &[]);
    // b and c only know a's address; heartbeats tell them about each other.
    let c_id = c.peer_id();
    wait_until(
        Duration::from_secs(60),
        "b and c to connect to each other",
        || b.connected_peers().contains(&c_id),
    );
    // Without the founder, a joiner submits and another joiner renders from its scene.
    a.kill();
    let out = root.path().join("out");
    let id = submit(&b, &scene, "1-4", &out, &[]);
    wait_until(Duration::from_secs(120), "every frame written on b", || {
        b.job(&id)["frames_written"] == 4
    });
    assert_frames(&out, &[1, 2, 3, 4], (64, 48));
}

#[test]
fn a_joiner_learns_the_whole_mesh_from_the_peer_it_joined_through() {
    let root = tempfile::tempdir().unwrap();
    // Heartbeats every 5 s at most (a quarter of the lease, clamped): the joiner hears of b
    // from a's sync answer (peer exchange) long before a relays b's next heartbeat.
    let slow = ["--no-render", "--lease-secs", "600"];
    let a = Daemon::start(root.path(), "a", None, &slow);
    let ticket = a.ticket();
    let b = Daemon::start(root.path(), "b", Some(&ticket), &slow);
    let b_id = b.peer_id();
    wait_until(Duration::from_secs(30), "a to connect to b", || {
        a.connected_peers().contains(&b_id)
    });
    // c's id sorts below b's: b, the higher id, does not dial c when c's first heartbeat
    // reaches it (only the lower id dials), so c reaches b before b's next heartbeat only by
    // dialling it itself, from what a's sync answer says.
    let b_key: libp2p::PeerId = b_id.parse().unwrap();
    let key = (0..1_000_000)
        .map(|_| libp2p::identity::Keypair::generate_ed25519())
        .find(|k| k.public().to_peer_id() < b_key)
        .unwrap();
    let c_dir = root.path().join("c");
    std::fs::create_dir_all(&c_dir).unwrap();
    std::fs::write(
        c_dir.join("identity.key"),
        key.to_protobuf_encoding().unwrap(),
    )
    .unwrap();
    let c = Daemon::start(root.path(), "c", Some(&ticket), &["--no-render"]);
    wait_until(Duration::from_secs(30), "c to connect to b", || {
        c.connected_peers().contains(&b_id)
    });
    assert!(
        c.log()
            .contains("peer exchange: dialling peers learned in sync"),
        "c dialled b because a's sync answer named it:\n{}",
        c.log()
    );
}
