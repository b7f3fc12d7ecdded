//! The mesh key: a daemon with another key cannot connect.

mod common;

use std::time::Duration;

use common::*;
use meshd::net::{MeshKey, Ticket};

#[test]
fn daemon_with_another_key_cannot_connect() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let good = Ticket::decode(&a.ticket()).unwrap();

    // Same addresses, another key: what an outsider who guessed the address would have.
    let forged = Ticket {
        key: MeshKey::generate(),
        ..good.clone()
    }
    .encode();
    let outsider = Daemon::start(root.path(), "outsider", Some(&forged), &["--no-render"]);
    wait_until(
        Duration::from_secs(30),
        "the outsider's dial to fail",
        || outsider.log().contains("outgoing connection failed"),
    );

    // A daemon with the right key connects; that shows the address was reachable all along.
    let member = Daemon::start(root.path(), "member", Some(&a.ticket()), &["--no-render"]);
    wait_until(Duration::from_secs(30), "the member to connect", || {
        !member.connected_peers().is_empty()
    });

    let outsider_id = outsider.peer_id();
    assert!(
        outsider.connected_peers().is_empty(),
        "outsider connected to nobody"
    );
    assert!(
        !a.connected_peers().contains(&outsider_id),
        "a never accepted the outsider"
    );
    assert_eq!(a.connected_peers(), vec![member.peer_id()]);
}
