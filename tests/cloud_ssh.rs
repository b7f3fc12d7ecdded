//! A rented machine stood in for by a real sshd on 127.0.0.1: meshd logs in with a key it
//! made, uploads itself, hands over the mesh ticket over SSH, starts `meshd join`; the node
//! joins the mesh and renders real frames of a job.

mod common;
mod sshd;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use meshd::cloud::ssh::{Bootstrap, Remote, SshKey, bootstrap, stop};
use sshd::{free_port, sshd};

#[test]
fn a_machine_reached_over_ssh_joins_the_mesh_and_renders() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = rt
        .block_on(SshKey::load_or_create(&root.path().join("keys")))
        .unwrap();
    assert!(key.public.starts_with("ssh-ed25519 "), "{}", key.public);
    let Some(sshd) = sshd(root.path(), &key.public) else {
        return;
    };

    let a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--no-render", "--lease-secs", "5"],
    );
    let remote = Remote {
        user: "root".into(),
        host: "127.0.0.1".into(),
        port: sshd.port,
        key: key.clone(),
        known_hosts: root.path().join("keys").join("known_hosts"),
    };
    let node_dir: PathBuf = root.path().join("rented");
    let spec = Bootstrap {
        binary: PathBuf::from(BIN),
        ticket: a.ticket(),
        remote_dir: node_dir.display().to_string(),
        listen_ip: "127.0.0.1".into(),
        node_port: free_port(),
        blender_url: None,
        blender_req: None,
    };
    // Whatever happens below, the node's daemon is stopped at the end.
    struct StopNode<'a>(&'a tokio::runtime::Runtime, &'a Remote, String);
    impl Drop for StopNode<'_> {
        fn drop(&mut self) {
            let _ = self.0.block_on(stop(self.1, &self.2));
        }
    }
    let _stop = StopNode(&rt, &remote, spec.remote_dir.clone());
    let node_id = rt.block_on(bootstrap(&remote, &spec)).unwrap();

    // The ticket went over SSH into a private file, not onto a command line.
    let ticket_file = node_dir.join("ticket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ticket_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "ticket file mode {mode:o}");
    let pid: u32 = std::fs::read_to_string(node_dir.join("meshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !cmdline.contains(&spec.ticket),
        "the ticket is not in the node's command line"
    );

    wait_until(
        Duration::from_secs(60),
        "the node to join as a renderer",
        || a.renderers() == 1,
    );
    let peers = a.cli_json(&["peers", "--json"]);
    assert!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == node_id.as_str()),
        "{peers}"
    );
    let scene = make_scene(root.path(), "rented.blend", 3, 64, 36, 4);
    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-3", &out, &[]);
    wait_until(Duration::from_secs(180), "every frame written", || {
        a.job(&id)["frames_written"] == 3
    });
    assert_frames(&out, &[1, 2, 3], (64, 36));
    let job = a.job(&id);
    assert!(
        job["frames"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["peer"] == node_id.as_str()),
        "the rented node rendered them: {job}"
    );
}
