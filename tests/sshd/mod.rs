//! A real sshd of a test's own on 127.0.0.1, standing in for a rented machine.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::wait_until;

/// An sshd of the test's own (host key, port, authorized keys), killed when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The file sshd reads authorized keys from.
    pub authorized_keys: std::path::PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sshd(dir: &Path, authorized: &str) -> Option<Sshd> {
    sshd_with(dir, authorized, "")
}

/// Like [`sshd`], with extra `sshd_config` lines (e.g. `SetEnv PATH=...`).
pub fn sshd_with(dir: &Path, authorized: &str, extra_config: &str) -> Option<Sshd> {
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
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n{extra_config}\n",
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
    Some(Sshd {
        child,
        port,
        authorized_keys: keys,
    })
}
