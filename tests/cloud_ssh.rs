//! A rented machine stood in for by a real sshd on 127.0.0.1: meshd logs in with a key it
//! made, uploads itself, hands over the mesh ticket over SSH, starts `meshd join`; the node
//! joins the mesh and renders real frames of a job.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use meshd::cloud::ssh::{Bootstrap, Remote, SshKey, bootstrap, stop};

/// An sshd of the test's own (host key, port, authorized keys), killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sshd(dir: &Path, authorized: &str) -> Option<Sshd> {
    let bin = Path::new("/usr/sbin/sshd");
    // sshd runs as root (privilege separation needs it); CI runs as root.
    if !bin.exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs /usr/sbin/sshd and root");
        return None;
    }
    std::fs::create_dir_all("/run/sshd").ok()?;
    let host_key = dir.join("host_key");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .ok()?
        .success();
    assert!(ok, "ssh-keygen for the host key");
    let keys = dir.join("authorized_keys");
    std::fs::write(&keys, format!("{authorized}\n")).unwrap();
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n",
            host_key.display(),
            keys.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "sshd to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Some(Sshd { child, port })
}

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
        peers: Vec::new(),
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
