//! mDNS: two daemons of one mesh find each other on a LAN with no address given.
//! The LAN is two network namespaces this test creates (root needed), so no multicast ever
//! leaves the machine.

mod common;

use std::time::Duration;

use common::*;
use meshd::net::Ticket;

#[test]
fn daemons_on_a_lan_find_each_other_by_mdns() {
    let Some(lan) = TestLan::new() else { return };
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start_in_netns(root.path(), "a", &lan.ns[0], None, &["--no-render"]);
    // b gets the mesh key but only an address where nobody listens: mDNS must do the rest.
    let mut ticket = Ticket::decode(&a.ticket()).unwrap();
    ticket.addrs = vec!["/ip4/10.201.0.99/tcp/9".into()];
    let b = Daemon::start_in_netns(
        root.path(),
        "b",
        &lan.ns[1],
        Some(&ticket.encode()),
        &["--no-render"],
    );
    let a_id = a.peer_id();
    wait_until(
        Duration::from_secs(60),
        "b to find and connect to a by mDNS",
        || b.connected_peers().contains(&a_id),
    );
    assert!(a.connected_peers().contains(&b.peer_id()));
    drop((a, b));
}
