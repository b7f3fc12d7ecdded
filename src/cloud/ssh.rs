//! Bootstrapping a rented machine over SSH with the system's OpenSSH client: a key meshd
//! generates, the meshd binary uploaded, Blender checked, the mesh ticket handed over SSH
//! (never through the provider's API or environment, never on a command line), and
//! `meshd join` started on the node port.
//!
//! Every command runs as `ssh -i KEY -p PORT -o BatchMode=yes ... USER@HOST 'sh -c ...'`,
//! with a known-hosts file of meshd's own (`accept-new`: the first key a host shows is
//! pinned). Files travel on the command's stdin, so no SFTP/SCP subsystem is needed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::ledger::job::BlenderReq;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A key pair meshd uses to log in to the machines it rents.
#[derive(Clone, Debug)]
pub struct SshKey {
    pub private: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA… meshd`.
    pub public: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot run {0}: {1} (install OpenSSH: apt-get install openssh-client)")]
    Spawn(&'static str, std::io::Error),
    #[error("{what} failed on {host}: {detail}")]
    Remote {
        what: String,
        host: String,
        detail: String,
    },
    #[error("{0}")]
    Local(String),
}

impl SshKey {
    /// The key at `dir/id_ed25519`, made with `ssh-keygen` if it is not there.
    pub async fn load_or_create(dir: &Path) -> Result<Self, SshError> {
        let private = dir.join("id_ed25519");
        if !private.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| SshError::Local(format!("cannot create {}: {e}", dir.display())))?;
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "meshd", "-f"])
                .arg(&private)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| SshError::Spawn("ssh-keygen", e))?;
            if !out.status.success() {
                return Err(SshError::Local(format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .map_err(|e| SshError::Local(format!("cannot read the public key: {e}")))?
            .trim()
            .to_string();
        Ok(SshKey { private, public })
    }
}

/// One machine reachable over SSH.
#[derive(Clone, Debug)]
pub struct Remote {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub key: SshKey,
    /// meshd's own known-hosts file.
    pub known_hosts: PathBuf,
}

impl Remote {
    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key.private)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR"])
            // A machine that stops answering ends the command within a minute.
            .args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
            ])
            .arg(format!("{}@{}", self.user, self.host))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `script` (a POSIX shell script) with `input` on its stdin; its stdout.
    pub async fn run(&self, what: &str, script: &str, input: &[u8]) -> Result<String, SshError> {
        let mut child = self
            .command(script)
            .spawn()
            .map_err(|e| SshError::Spawn("ssh", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A broken pipe means the script did not read its input: its status says why.
            let _ = stdin.write_all(input).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| SshError::Spawn("ssh", e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(SshError::Remote {
                what: what.to_string(),
                host: format!("{}:{}", self.host, self.port),
                detail: super::clean(err.trim().lines().last().unwrap_or("exit status non-zero")),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// What to start on a rented machine.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// This meshd binary (the node runs the same version).
    pub binary: PathBuf,
    /// `meshd invite`'s ticket: it holds the mesh key.
    pub ticket: String,
    /// Where the node keeps meshd, its data dir and logs (`~/.meshd` on a rented machine).
    pub remote_dir: String,
    /// The address the node's daemon listens on: `0.0.0.0` on a rented machine (the
    /// provider maps the port from outside), `127.0.0.1` in tests.
    pub listen_ip: String,
    /// The port the node's daemon listens on (the one the provider maps).
    pub node_port: u16,
    /// A Blender release (`.tar.xz`) to install when the machine has none that fits.
    pub blender_url: Option<String>,
    /// The job's Blender requirement ("4.2+", "4.2"): an image's Blender that does not fit
    /// it is passed over for the one from `blender_url`.
    pub blender_req: Option<String>,
}

/// A script that prints the machine's own Blender (the image's, or one installed earlier
/// into `dir/blender`) as `path=PATH` and the first line of its `--version` as `version=`;
/// nothing if there is none.
fn find_blender(dir: &str) -> String {
    format!(
        "B=$(command -v blender || ls -d /opt/blender*/blender /usr/local/blender*/blender {dir}/blender/blender 2>/dev/null | head -n 1)\n\
         if [ -n \"$B\" ]; then echo \"path=$B\"; echo \"version=$(\"$B\" --version 2>/dev/null | head -n 1)\"; fi\n"
    )
}

/// The Blender [`find_blender`] printed, if it fits the job's requirement `req` (any
/// Blender does without one). `blender --version` starts with "Blender 4.2.3".
fn fitting_blender(found: &str, req: Option<BlenderReq>) -> Option<String> {
    let field = |key: &str| {
        found
            .lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_string))
    };
    let path = field("path=").filter(|p| !p.is_empty())?;
    let version = field("version=").unwrap_or_default();
    let version = version.strip_prefix("Blender ").unwrap_or("");
    req.is_none_or(|r| r.admits(version)).then_some(path)
}

/// A script that installs the Blender release at `url` into `dir/blender` (with the
/// libraries it needs, where apt-get is there) and prints its path; nothing if it fails.
fn install_blender(dir: &str, url: &str) -> String {
    format!(
        "need=''; command -v curl >/dev/null || need='curl ca-certificates'; command -v xz >/dev/null || need=\"$need xz-utils\"\n\
         if command -v apt-get >/dev/null; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need \
         libxi6 libxxf86vm1 libxfixes3 libxrender1 libgl1 libxkbcommon0 libsm6 libx11-6) > {dir}/install.log 2>&1; fi\n\
         rm -rf {dir}/blender.part && mkdir -p {dir}/blender.part\n\
         if curl -fsSL --connect-timeout 30 --speed-time 60 --speed-limit 10000 {url} | tar -xJ --strip-components=1 -C {dir}/blender.part >> {dir}/install.log 2>&1 \
         && rm -rf {dir}/blender && mv {dir}/blender.part {dir}/blender; then echo {dir}/blender/blender; fi\n",
        url = quote(url)
    )
}

/// Single-quotes `s` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Starts meshd on `remote`: uploads the binary, checks Blender, writes the ticket (mode
/// 0600, from stdin), starts `meshd join` in the background and waits (bounded) until its
/// API answers. Returns the node's peer id.
pub async fn bootstrap(remote: &Remote, b: &Bootstrap) -> Result<String, SshError> {
    // The node's directory as an absolute path: a relative one (the default `.meshd`) is
    // relative to the login's home, and `meshd join` runs after a `cd` into it.
    let made = remote
        .run(
            "preparing the machine",
            &format!(
                "umask 077 && mkdir -p {d} && cd {d} && pwd",
                d = quote(&b.remote_dir)
            ),
            b"",
        )
        .await?;
    let here = made.lines().last().unwrap_or("").trim();
    if !here.starts_with('/') {
        return Err(SshError::Remote {
            what: "preparing the machine".into(),
            host: format!("{}:{}", remote.host, remote.port),
            detail: format!(
                "{} does not resolve to a directory ({here:?})",
                b.remote_dir
            ),
        });
    }
    let dir = quote(here);
    let binary = std::fs::read(&b.binary)
        .map_err(|e| SshError::Local(format!("cannot read {}: {e}", b.binary.display())))?;
    remote
        .run(
            "uploading meshd",
            &format!("cat > {dir}/meshd.part && chmod 700 {dir}/meshd.part && mv {dir}/meshd.part {dir}/meshd"),
            &binary,
        )
        .await?;
    let runs = remote
        .run(
            "checking the uploaded meshd",
            &format!("{dir}/meshd --version"),
            b"",
        )
        .await;
    if let Err(e) = runs {
        return Err(SshError::Remote {
            what: "running the uploaded meshd".into(),
            host: format!("{}:{}", remote.host, remote.port),
            detail: format!(
                "{e}; the image's C library may be older than this build's: rent an image based \
                 on Ubuntu 24.04 or Debian 12, or set MESHD_CLOUD_NODE_BINARY to a static build"
            ),
        });
    }
    let found = remote
        .run("looking for Blender", &find_blender(&dir), b"")
        .await?;
    let req = b.blender_req.as_deref().and_then(BlenderReq::parse);
    let blender = match (fitting_blender(&found, req), &b.blender_url) {
        (Some(path), _) => path,
        (None, Some(url)) => {
            let installed = remote
                .run("installing Blender", &install_blender(&dir, url), b"")
                .await?;
            installed.lines().last().unwrap_or("").trim().to_string()
        }
        (None, None) => String::new(),
    };
    if blender.is_empty() {
        return Err(SshError::Remote {
            what: "looking for Blender".into(),
            host: format!("{}:{}", remote.host, remote.port),
            detail: "no Blender on the machine and none could be installed (see install.log in the node's directory): rent with an image that has one (--image)".into(),
        });
    }
    remote
        .run(
            "handing over the mesh ticket",
            &format!("umask 077 && cat > {dir}/ticket"),
            b.ticket.as_bytes(),
        )
        .await?;
    let start = format!(
        "cd {dir} && (BLENDER={blender} nohup ./meshd --data-dir {dir}/data join --ticket-file {dir}/ticket \
         --listen /ip4/{ip}/tcp/{port} --api 127.0.0.1:0 --no-mdns > {dir}/join.log 2>&1 & echo $! > {dir}/meshd.pid)",
        blender = quote(&blender),
        ip = quote(&b.listen_ip),
        port = b.node_port,
    );
    remote.run("starting meshd", &start, b"").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = remote
            .run(
                "asking the node who it is",
                &format!("{dir}/meshd --data-dir {dir}/data peers --json"),
                b"",
            )
            .await;
        if let Ok(json) = answer
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&json)
            && let Some(id) = v["peers"]
                .as_array()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p["is_self"] == true || p["self"] == true)
                })
                .and_then(|p| p["id"].as_str())
        {
            return Ok(id.to_string());
        }
        if Instant::now() > deadline {
            let log = remote
                .run(
                    "reading the node's log",
                    &format!("tail -n 3 {dir}/join.log"),
                    b"",
                )
                .await
                .unwrap_or_default();
            return Err(SshError::Remote {
                what: "starting meshd".into(),
                host: format!("{}:{}", remote.host, remote.port),
                detail: format!(
                    "its API never answered; its log ends: {}",
                    super::clean(log.trim())
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops the node's daemon (SIGTERM, from its pid file).
pub async fn stop(remote: &Remote, remote_dir: &str) -> Result<(), SshError> {
    let dir = quote(remote_dir);
    remote
        .run(
            "stopping meshd",
            &format!("test -f {dir}/meshd.pid && kill $(cat {dir}/meshd.pid) 2>/dev/null; true"),
            b"",
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `find_blender` finds on a machine whose only Blender says `version`, given
    /// `req` and no URL to install one from.
    fn found(version: &str, req: Option<&str>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("blender");
        std::fs::write(&fake, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let script = find_blender(dir.path().to_str().unwrap());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        match fitting_blender(&printed, req.and_then(BlenderReq::parse)) {
            Some(p) if p == fake.to_str().unwrap() => "image".into(),
            Some(p) => p,
            None => String::new(),
        }
    }

    #[test]
    fn an_image_blender_is_used_only_if_it_fits_the_job() {
        assert_eq!(found("Blender 3.4.1", None), "image");
        assert_eq!(found("Blender 4.2.3", Some("4.2+")), "image");
        assert_eq!(found("Blender 4.5.1 LTS", Some("4.2+")), "image");
        assert_eq!(found("Blender 5.0.1", Some("4.2+")), "image");
        assert_eq!(found("Blender 3.6.0", Some("4.2+")), "");
        assert_eq!(found("Blender 4.1.1", Some("4.2+")), "");
        assert_eq!(found("Blender 4.2.3", Some("4.2")), "image");
        assert_eq!(found("Blender 4.5.0", Some("4.2")), "");
        assert_eq!(found("not blender at all", Some("4.2+")), "");
    }
}
