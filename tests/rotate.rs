//! `meshd rotate-key`: a new mesh key handed to the peers over their connections; excluded
//! peers and old tickets can no longer connect, peers that took the key come back with it
//! after a restart, and a peer that was away comes back with a new ticket.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(40);

fn connected(d: &Daemon, peer: &str) -> bool {
    d.connected_peers().iter().any(|p| p == peer)
}

fn dial_failures(d: &Daemon) -> usize {
    d.log().matches("outgoing connection failed").count()
}

#[test]
fn a_rotated_key_locks_out_excluded_peers_and_old_tickets() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let quiet = ["--no-render"];
    let a = Daemon::start(r, "a", None, &quiet);
    let old = a.ticket();
    let mesh_id = a.cli_json(&["invite", "--json"])["mesh_id"].clone();
    let mut b = Daemon::start(r, "b", Some(&old), &quiet);
    let mut c = Daemon::start(r, "c", Some(&old), &quiet);
    let mut away = Daemon::start(r, "away", Some(&old), &quiet);
    let (b_id, c_id, away_id) = (b.peer_id(), c.peer_id(), away.peer_id());
    wait_until(WAIT, "everyone to connect to a", || {
        let peers = a.connected_peers();
        [&b_id, &c_id, &away_id].iter().all(|p| peers.contains(p))
    });
    away.kill();

    let rotated = a.cli_json(&["rotate-key", "--exclude", &c_id, "--json"]);
    assert_eq!(
        rotated["mesh_id"], mesh_id,
        "the mesh keeps its id: {rotated}"
    );
    assert!(
        rotated["switched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == b_id.as_str()),
        "b took the key: {rotated}"
    );
    assert_eq!(rotated["excluded"][0], c_id.as_str());
    let new = rotated["ticket"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(a.ticket(), new, "invite hands out the new key");

    // The excluded peer is cut off at once, by the rotator and by the peer that took the key.
    wait_until(WAIT, "c to be disconnected", || {
        !connected(&a, &c_id) && !connected(&b, &c_id)
    });
    assert!(
        connected(&a, &b_id),
        "b's connection, made with the old key, stays up"
    );

    // Restarted with the key it has, c cannot come back: its dials fail.
    let before = dial_failures(&c);
    c.restart(r, &quiet);
    wait_until(WAIT, "c's dials to fail", || dial_failures(&c) > before);
    assert!(!connected(&a, &c_id) && !connected(&b, &c_id));

    // A new machine with the old ticket cannot join.
    let late = Daemon::start(r, "late", Some(&old), &quiet);
    wait_until(WAIT, "the old ticket's dial to fail", || {
        dial_failures(&late) > 0
    });
    assert!(late.connected_peers().is_empty());

    // b stored the new key: restarted, even with the old ticket (a stale ticket file, say),
    // it keeps the new key and connects again.
    b.kill();
    let b = Daemon::start(r, "b", Some(&old), &quiet);
    wait_until(WAIT, "b to reconnect with the stored key", || {
        connected(&a, &b_id)
    });
    assert!(b.log().contains("retired"), "{}", b.log());

    // The peer that was away comes back with a new ticket: same mesh, newer key.
    drop(away);
    let away = Daemon::start(r, "away", Some(&new), &quiet);
    wait_until(WAIT, "the peer that was away to reconnect", || {
        connected(&a, &away_id)
    });
    assert!(
        away.log().contains("newer key of this mesh"),
        "{}",
        away.log()
    );

    // A ticket of another mesh is still refused for that data dir.
    let other = Daemon::start(r, "other", None, &quiet);
    let refused = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&away.dir)
        .args(["join", &other.ticket(), "--api", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("belongs to another mesh"), "{err}");

    // Bad input: one clear line, nothing rotated.
    let bad = a.cli(&["rotate-key", "--exclude", "nonsense"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not a peer id"), "{err}");
    assert_eq!(a.ticket(), new);
}
