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

#[test]
fn a_flood_of_half_open_connections_from_one_address_is_bounded() {
    use std::io::Read;
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start(root.path(), "a", None, &["--no-render"]);
    let ticket = Ticket::decode(&a.ticket()).unwrap();
    let port = ticket
        .addrs
        .iter()
        .find_map(|m| {
            let m: libp2p::Multiaddr = m.parse().ok()?;
            m.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
        })
        .unwrap();
    // Connections that never start the handshake: what anyone who reaches the port can do.
    let flood: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for s in &flood {
        s.set_nonblocking(true).unwrap();
    }
    // Closed by the daemon: end of stream or reset (an admitted one sends its handshake
    // bytes, then has nothing more to read).
    let closed = |s: &std::net::TcpStream| {
        let mut buf = [0u8; 64];
        match (&*s).read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    wait_until(
        Duration::from_secs(10),
        "the connections past the per-address bound to be closed",
        || flood.iter().filter(|s| closed(s)).count() >= 100 - 64,
    );
    let refused = flood.iter().filter(|s| closed(s)).count();
    assert!(
        refused <= 100 - 64 + 4,
        "only those past the bound: {refused}"
    );
    drop(flood);
    // The daemon still takes members.
    let member = Daemon::start(root.path(), "member", Some(&a.ticket()), &["--no-render"]);
    wait_until(Duration::from_secs(30), "the member to connect", || {
        !member.connected_peers().is_empty()
    });
}

/// A .blend may name any file as a texture. One that names the submitting daemon's keys,
/// directly or through a symbolic link in the project folder, would have them sent to every
/// renderer (rented machines included): submit refuses it, one line, and nothing is stored.
#[test]
fn a_scene_that_names_the_daemons_keys_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let d = Daemon::start(r, "d", None, &["--no-render"]);
    let project = r.join("project");
    std::fs::create_dir(&project).unwrap();
    let base = make_scene(&project, "base.blend", 1, 32, 24, 1);
    let key = std::fs::canonicalize(d.dir.join("identity.key")).unwrap();
    std::os::unix::fs::symlink(&key, project.join("wood.png")).unwrap();
    let out = r.join("out");
    for (scene, path) in [
        ("direct.blend", key.to_str().unwrap()),
        ("linked.blend", "//wood.png"),
    ] {
        let scene = project.join(scene);
        edit_scene(
            &base,
            &scene,
            &format!(
                "img = bpy.data.images.new('Leak', 4, 4)\n\
                 img.source = 'FILE'\n\
                 img.filepath = {path:?}\n\
                 img.use_fake_user = True"
            ),
        );
        let o = d.cli(&[
            "submit",
            scene.to_str().unwrap(),
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{scene:?} was submitted: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("Image \"Leak\"") && err.contains("data dir") && err.contains("keys"),
            "{err}"
        );
    }
    assert_eq!(d.status()["jobs"].as_array().map(Vec::len), Some(0));
    assert!(!out.exists(), "nothing written");
    // The scene without the image goes through: the refusal is about the file.
    submit(&d, &base, "1", &out, &[]);
}
