//! Renting machines for the mesh, end to end: the daemon rents from a fake Vast or Clore
//! (tests/fake_cloud, after ../shared/reference/cloud-apis.md) whose machines are a real
//! sshd on 127.0.0.1; meshd logs in with the key it registered, starts a node that joins
//! and renders, and gives every machine back: when its job ends, on request, when the
//! budget runs out, when it never starts, when SSH fails, on Ctrl-C, when the daemon stops,
//! and after a kill -9 mid-rent once the daemon is back. Every test ends with nothing
//! rented at the fake.

mod common;
mod fake_cloud;
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fake_cloud::{Machine, clore_server, vast_offer};
use serde_json::Value;

const VAST_KEY: &str = "vast-secret-key-123";
const CLORE_KEY: &str = "clore-secret-key-456";

/// Kills every node a test's machines run (their pid files under `dir`), as destroying the
/// container would; also run when the test ends, pass or fail.
fn kill_nodes(dir: &Path, only: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Ok(pid) = std::fs::read_to_string(e.path().join("meshd.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

struct NodesDown(PathBuf);

impl Drop for NodesDown {
    fn drop(&mut self) {
        kill_nodes(&self.0, None);
    }
}

/// A machine for the fakes: keys go to the sshd's file; destroying instance N of
/// `provider` kills the node in `<nodes>/<provider>-N`.
fn machine(sshd: &sshd::Sshd, nodes: &Path, provider: &'static str) -> Machine {
    let nodes = nodes.to_path_buf();
    Machine {
        authorized_keys: sshd.authorized_keys.clone(),
        teardown: Arc::new(move |id| kill_nodes(&nodes, Some(&format!("{provider}-{id}")))),
    }
}

/// `dir` relative to this user's home, where a command over SSH starts, as the default
/// remote dir (`.meshd`) is: a bootstrap that took it as absolute would look for the node's
/// files in the wrong place.
fn from_home(dir: &Path) -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    let home = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "this user has a passwd entry");
        std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned()
    };
    // One `..` per directory below `/` (`/root`: one).
    let up = Path::new(&home).components().count() - 1;
    format!(
        "{}{}",
        "../".repeat(up),
        dir.strip_prefix("/").unwrap().display()
    )
}

/// The environment of a daemon that rents from the fakes, with its own config home.
fn cloud_env(
    root: &Path,
    vast: Option<&str>,
    clore: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let home = root.join("config-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env = vec![
        ("XDG_CONFIG_HOME".to_string(), home.display().to_string()),
        (
            "MESHD_CLOUD_REMOTE_DIR".into(),
            from_home(&root.join("nodes")),
        ),
        ("MESHD_CLOUD_LISTEN_IP".into(), "127.0.0.1".into()),
        ("MESHD_CLOUD_POLL_SECS".into(), "1".into()),
        // A rent that goes wrong fails within a minute, so no test waits for ever.
        ("MESHD_CLOUD_START_TIMEOUT_SECS".into(), "60".into()),
    ];
    if let Some(url) = vast {
        env.push(("MESHD_VAST_URL".into(), url.into()));
        env.push(("MESHD_VAST_API_KEY".into(), VAST_KEY.into()));
    }
    if let Some(url) = clore {
        env.push(("MESHD_CLORE_URL".into(), url.into()));
        env.push(("MESHD_CLORE_API_KEY".into(), CLORE_KEY.into()));
    }
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn start(root: &Path, name: &str, extra: &[&str], env: &[(String, String)]) -> Daemon {
    Daemon::start_env(root, name, None, extra, &as_strs(env))
}

/// `meshd cloud rent --provider PROVIDER [--node-port PORT] ARGS...` on `d`, to its end.
fn rent(d: &Daemon, provider: &str, port: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut all = vec!["cloud", "rent", "--provider", provider];
    if let Some(p) = port {
        all.extend(["--node-port", p]);
    }
    all.extend_from_slice(args);
    d.cli(&all)
}

fn rentals(d: &Daemon) -> Vec<Value> {
    d.cli_json(&["cloud", "list", "--json"])["rentals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the first rental's record is finished; why it was released.
fn released_note(d: &Daemon) -> String {
    wait_until(Duration::from_secs(30), "the record finished", || {
        rentals(d)[0]["phase"] == "released"
    });
    rentals(d)[0]["note"].as_str().unwrap_or("").to_string()
}

fn as_strs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn vast_live(fake: &fake_cloud::FakeVast) -> Vec<u64> {
    fake.state.lock().unwrap().live_ids()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Everything a rent needs: a fake Vast whose one offer is a real sshd, and a daemon that
/// only submits (so the rented node renders everything).
struct VastRig {
    // Fields drop in this order: the nodes are killed while their pid files still exist
    // (after `root` they are gone, and a failed test left its node daemon running).
    _nodes: NodesDown,
    root: tempfile::TempDir,
    fake: fake_cloud::FakeVast,
    _sshd: sshd::Sshd,
    node_port: u16,
}

fn vast_rig(price: f64) -> Option<VastRig> {
    vast_rig_with(price, |_| String::new())
}

/// A rig whose sshd takes extra config lines, made knowing the test's root.
fn vast_rig_with(price: f64, sshd_config: impl FnOnce(&Path) -> String) -> Option<VastRig> {
    let root = tempfile::tempdir().unwrap();
    let extra = sshd_config(root.path());
    let sshd = sshd::sshd_with(root.path(), "", &extra)?;
    let nodes = root.path().join("nodes");
    let node_port = sshd::free_port();
    let fake = fake_cloud::vast(
        VAST_KEY,
        vec![vast_offer(11, "RTX 4090", 1, 24564, price, "US")],
    );
    {
        let mut s = fake.state.lock().unwrap();
        s.polls_to_run = Some(1);
        s.host_ports.insert(22, sshd.port);
        s.host_ports.insert(node_port, node_port);
        s.machine = Some(machine(&sshd, &nodes, "vast"));
    }
    Some(VastRig {
        _nodes: NodesDown(nodes),
        root,
        fake,
        _sshd: sshd,
        node_port,
    })
}

#[test]
fn a_machine_rented_for_a_job_joins_renders_and_is_released_when_the_job_ends() {
    let Some(rig) = vast_rig(0.40) else {
        return;
    };
    let root = rig.root.path();
    let env = cloud_env(root, Some(&rig.fake.url), None, &[]);
    let a = start(root, "a", &["--no-render", "--lease-secs", "5"], &env);
    let scene = make_scene(root, "rented.blend", 4, 64, 36, 4);
    let out = root.join("out");
    let port = rig.node_port.to_string();
    // Submit and rent in one command; it follows the rent until the node joined.
    let o = a.cli(&[
        "submit",
        scene.to_str().unwrap(),
        "1-4",
        "--out",
        out.to_str().unwrap(),
        "--cloud",
        "vast:1",
        "--node-port",
        &port,
        "--budget",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("joined the mesh as"), "{said}");
    assert!(!said.contains(VAST_KEY), "the key is never printed");

    let list = rentals(&a);
    assert_eq!(list.len(), 1, "{list:?}");
    let r = &list[0];
    assert_eq!(r["phase"], "joined");
    assert_eq!(r["provider"], "vast");
    let instance = r["instance"].as_u64().unwrap();
    assert_eq!(vast_live(&rig.fake), vec![instance]);
    let label = rig.fake.state.lock().unwrap().instances[&instance]
        .label
        .clone();
    assert!(label.starts_with("meshd-"), "{label}");
    // The peer list names the rented machine and its price.
    let node = r["peer"].as_str().unwrap().to_string();
    let peers = a.cli_json(&["peers", "--json"]);
    let p = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == node.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(p["rented"]["provider"], "vast", "{peers}");
    assert_eq!(p["rented"]["instance"], instance);
    assert_eq!(p["rented"]["usd_per_hour"], 0.40);
    let status = a.cli_json(&["status", "--json"]);
    assert_eq!(status["cloud"]["machines"], 1, "{status}");

    // The node renders the job; when the job is over the machine is given back.
    let job = a.cli_json(&["status", "--json"])["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(Duration::from_secs(120), "every frame written", || {
        a.job(&job)["frames_written"] == 4
    });
    assert_frames(&out, &[1, 2, 3, 4], (64, 36));
    // What the rented node delivered is Blender's own render of the scene.
    let reference = root.join("reference");
    reference_render(&scene, &reference, 1, 4);
    assert_like_blender(&out, &reference, 1..=4);
    wait_until(Duration::from_secs(30), "the machine released", || {
        vast_live(&rig.fake).is_empty()
    });
    assert_eq!(released_note(&a), "its job is over");
    let r = &rentals(&a)[0];
    let spent = r["spent_usd"].as_f64().unwrap();
    assert!(spent < 0.40, "{r}");
    // The job's cost (shown by the dashboard) is what its machine cost.
    let cost = a.job(&job)["cost_usd"]
        .as_f64()
        .expect("the job has a cost");
    assert!((cost - spent).abs() < 0.01, "{cost} vs {spent}");
    assert!(!a.log().contains(VAST_KEY), "the key is never logged");
}

#[test]
fn a_budget_reached_mid_job_releases_the_machine_and_the_job_finishes_on_the_mesh() {
    // $360/h is 10 cents a second: a $361 budget covers the first hour's projection and
    // runs out of room for another hour after about 10 s.
    let Some(rig) = vast_rig(360.0) else {
        return;
    };
    let root = rig.root.path();
    let env = cloud_env(root, Some(&rig.fake.url), None, &[]);
    let a = start(root, "a", &["--lease-secs", "5"], &env);
    let scene = make_scene(root, "long.blend", 30, 320, 180, 48);
    let out = root.join("out");
    let job = submit(&a, &scene, "1-30", &out, &[]);
    let port = rig.node_port.to_string();
    let o = rent(
        &a,
        "vast",
        Some(port.as_str()),
        &["--job", &job, "--budget", "361"],
    );
    assert!(o.status.success(), "{}", text(&o));
    wait_until(
        Duration::from_secs(60),
        "the budget to release the machine",
        || vast_live(&rig.fake).is_empty(),
    );
    let written = a.job(&job)["frames_written"].as_u64().unwrap_or(0);
    assert!(
        written < 40,
        "released before the job ended ({written} written)"
    );
    assert_eq!(
        released_note(&a),
        "the budget would be exceeded within the hour"
    );
    wait_until(
        Duration::from_secs(300),
        "the job to finish on the mesh",
        || a.job(&job)["frames_written"] == 30,
    );
    assert!(vast_live(&rig.fake).is_empty());
}

#[test]
fn a_machine_that_never_runs_is_destroyed_and_said_so() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(
        VAST_KEY,
        vec![vast_offer(11, "RTX 4090", 1, 24564, 0.4, "US")],
    );
    {
        let mut s = fake.state.lock().unwrap();
        s.polls_to_run = None;
        // Rate limits on the way are waited out.
        s.rate_limit_next = 2;
    }
    let env = cloud_env(
        root.path(),
        Some(&fake.url),
        None,
        &[("MESHD_CLOUD_START_TIMEOUT_SECS", "3")],
    );
    let a = start(root.path(), "a", &["--no-render"], &env);
    let o = rent(&a, "vast", None, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("did not run within 3 s"), "{said}");
    assert!(
        said.lines().filter(|l| l.starts_with("error:")).count() == 1,
        "{said}"
    );
    wait_until(Duration::from_secs(20), "nothing rented", || {
        vast_live(&fake).is_empty()
    });
    assert_eq!(
        rentals(&a)[0]["offer"],
        11,
        "the offer gone gave way to the next"
    );
}

#[test]
fn a_machine_whose_ssh_fails_is_destroyed() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(
        VAST_KEY,
        vec![vast_offer(11, "RTX 4090", 1, 24564, 0.4, "US")],
    );
    {
        let mut s = fake.state.lock().unwrap();
        s.polls_to_run = Some(1);
        // Port 22 maps to a port nothing listens on.
        s.host_ports.insert(22, sshd::free_port());
    }
    let env = cloud_env(
        root.path(),
        Some(&fake.url),
        None,
        &[("MESHD_CLOUD_START_TIMEOUT_SECS", "4")],
    );
    let a = start(root.path(), "a", &["--no-render"], &env);
    let o = rent(&a, "vast", None, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("SSH to instance"), "{}", text(&o));
    wait_until(Duration::from_secs(20), "nothing rented", || {
        vast_live(&fake).is_empty()
    });
}

#[test]
fn a_daemon_killed_mid_rent_destroys_the_machine_when_it_is_back() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(
        VAST_KEY,
        vec![vast_offer(11, "RTX 4090", 1, 24564, 0.4, "US")],
    );
    fake.state.lock().unwrap().polls_to_run = None;
    let env = cloud_env(root.path(), Some(&fake.url), None, &[]);
    let mut a = start(root.path(), "a", &["--no-render"], &env);
    let o = rent(&a, "vast", None, &["--no-wait"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(Duration::from_secs(20), "the instance created", || {
        vast_live(&fake).len() == 1
    });
    a.kill(); // SIGKILL: no chance to clean up
    assert_eq!(
        vast_live(&fake).len(),
        1,
        "still rented while the daemon is down"
    );
    a.restart_env(root.path(), &["--no-render"], &as_strs(&env));
    wait_until(
        Duration::from_secs(30),
        "the restarted daemon to destroy it",
        || vast_live(&fake).is_empty(),
    );
    assert_eq!(
        released_note(&a),
        "renting was interrupted (the daemon stopped)"
    );
}

#[test]
fn an_instance_labelled_for_this_daemon_but_unrecorded_is_destroyed_and_others_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(
        VAST_KEY,
        vec![
            vast_offer(11, "RTX 4090", 1, 24564, 0.4, "US"),
            vast_offer(12, "RTX 4090", 1, 24564, 0.4, "US"),
        ],
    );
    let env = cloud_env(root.path(), Some(&fake.url), None, &[]);
    let mut a = start(root.path(), "a", &["--no-render"], &env);
    let mesh = a.cli_json(&["invite", "--json"])["mesh_id"]
        .as_str()
        .unwrap()
        .to_string();
    let me = a.peer_id();
    a.kill();
    // A leak (recorded nowhere, e.g. the record was lost) and the user's own machine.
    let prefix = format!("meshd-{}-{}-", &mesh[..12], &me[me.len() - 8..]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = meshd::cloud::CloudConfig::from_pairs(&[
        ("MESHD_VAST_URL", fake.url.as_str()),
        ("MESHD_VAST_API_KEY", VAST_KEY),
    ]);
    let vast = meshd::cloud::vast::Vast::new(&cfg).unwrap();
    let spec = |label: String| fake_cloud::rent_spec("img", &label);
    let leaked = rt
        .block_on(vast.create(11, &spec(format!("{prefix}99"))))
        .unwrap();
    let own = rt
        .block_on(vast.create(12, &spec("my-own-work".into())))
        .unwrap();
    a.restart_env(root.path(), &["--no-render"], &as_strs(&env));
    wait_until(Duration::from_secs(30), "the leak destroyed", || {
        !vast_live(&fake).contains(&leaked)
    });
    assert_eq!(
        vast_live(&fake),
        vec![own],
        "the user's own instance is kept"
    );
    rt.block_on(vast.destroy(own)).unwrap();
    assert!(vast_live(&fake).is_empty());
}

#[test]
fn a_clore_machine_joins_and_is_released_on_request_and_when_the_daemon_stops() {
    let root = tempfile::tempdir().unwrap();
    let Some(sshd) = sshd::sshd(root.path(), "") else {
        return;
    };
    let nodes = root.path().join("nodes");
    let _down = NodesDown(nodes.clone());
    let node_port = sshd::free_port();
    let fake = fake_cloud::clore(
        CLORE_KEY,
        vec![
            clore_server(6, "NVIDIA GeForce RTX 4090", 1, 24, 7.2, "CZ"),
            clore_server(7, "NVIDIA GeForce RTX 4090", 1, 24, 7.2, "CZ"),
        ],
    );
    {
        let mut s = fake.state.lock().unwrap();
        s.host_ports.insert(22, sshd.port);
        s.host_ports.insert(node_port, node_port);
        s.machine = Some(machine(&sshd, &nodes, "clore"));
        // Calls closer than 1 s apart are refused with code 5, as Clore does.
        s.enforce_spacing = true;
    }
    let env = cloud_env(root.path(), None, Some(&fake.url), &[]);
    let mut a = start(root.path(), "a", &["--no-render"], &env);
    let port = node_port.to_string();
    let o = rent(&a, "clore", Some(port.as_str()), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let list = rentals(&a);
    assert_eq!(list[0]["phase"], "joined", "{list:?}");
    let order = list[0]["instance"].as_u64().unwrap();
    assert_eq!(fake.state.lock().unwrap().active_ids(), vec![order]);
    let o = a.cli(&["cloud", "release", &order.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(Duration::from_secs(20), "the order cancelled", || {
        fake.state.lock().unwrap().active_ids().is_empty()
    });

    // Ctrl-C while a rent is followed releases it.
    fake.state.lock().unwrap().polls_to_run = 1_000;
    let mut following = Command::new(BIN)
        .arg("--data-dir")
        .arg(&a.dir)
        .args(["cloud", "rent", "--provider", "clore", "--node-port", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the second order placed", || {
        fake.state.lock().unwrap().active_ids().len() == 1
    });
    unsafe { libc::kill(following.id() as i32, libc::SIGINT) };
    let status = following.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_until(
        Duration::from_secs(20),
        "the interrupted rent released",
        || fake.state.lock().unwrap().active_ids().is_empty(),
    );

    // A rented machine is given back when the daemon stops.
    fake.state.lock().unwrap().polls_to_run = 1;
    let o = rent(&a, "clore", Some(port.as_str()), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fake.state.lock().unwrap().active_ids().len(), 1);
    let pid = a.pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(a.wait_exit(), Some(0));
    assert!(fake.state.lock().unwrap().active_ids().is_empty());
}

#[test]
fn an_idle_machine_is_released_and_an_outbid_one_is_given_up() {
    let Some(rig) = vast_rig(0.40) else {
        return;
    };
    let root = rig.root.path();
    let env = cloud_env(root, Some(&rig.fake.url), None, &[]);
    let a = start(root, "a", &["--no-render", "--lease-secs", "5"], &env);
    let port = rig.node_port.to_string();
    // Nothing to render: released once idle for 3 s.
    let o = rent(&a, "vast", Some(port.as_str()), &["--idle-release", "3s"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(Duration::from_secs(30), "the idle machine released", || {
        vast_live(&rig.fake).is_empty()
    });
    let note = released_note(&a);
    assert!(note.starts_with("idle for"), "{note}");

    // A spot machine the provider stops (outbid) is given up, and destroyed.
    rig.fake
        .state
        .lock()
        .unwrap()
        .offers
        .push(vast_offer(12, "RTX 4090", 1, 24564, 0.40, "US"));
    let o = rent(&a, "vast", Some(port.as_str()), &["--spot"]);
    assert!(o.status.success(), "{}", text(&o));
    let rental = rentals(&a)
        .into_iter()
        .find(|r| r["phase"] == "joined")
        .unwrap();
    assert_eq!(rental["spot"], true);
    let instance = rental["instance"].as_u64().unwrap();
    rig.fake
        .state
        .lock()
        .unwrap()
        .instances
        .get_mut(&instance)
        .unwrap()
        .stopped = true;
    // Its container stops with it.
    kill_nodes(&root.join("nodes"), Some(&format!("vast-{instance}")));
    wait_until(
        Duration::from_secs(30),
        "the outbid machine destroyed",
        || vast_live(&rig.fake).is_empty(),
    );
    let r = rentals(&a)
        .into_iter()
        .find(|r| r["instance"] == instance)
        .unwrap();
    let note = r["note"].as_str().unwrap_or("");
    assert!(note.contains("outbid"), "{r}");
}

#[test]
fn a_missing_or_wrong_key_or_a_short_budget_is_one_line_and_rents_nothing() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(
        VAST_KEY,
        vec![vast_offer(11, "RTX 4090", 1, 24564, 0.4, "US")],
    );
    let one_line = |o: &std::process::Output, what: &str| {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(what), "{err}");
        assert!(
            !err.contains("not-the-key") && !err.contains(VAST_KEY),
            "{err}"
        );
    };
    // A budget below one hour of the best offer.
    let env = cloud_env(root.path(), Some(&fake.url), None, &[]);
    let mut a = start(root.path(), "a", &["--no-render"], &env);
    let o = rent(&a, "vast", None, &["--budget", "0.1"]);
    one_line(&o, "raise --budget");
    // A wrong key.
    let wrong: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            let v = if k == "MESHD_VAST_API_KEY" {
                "not-the-key"
            } else {
                v
            };
            (k.clone(), v.to_string())
        })
        .collect();
    let envs: Vec<(&str, &str)> = wrong
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    a.restart_env(root.path(), &["--no-render"], &envs);
    let o = rent(&a, "vast", None, &[]);
    one_line(&o, "rejected the API key");
    // No key at all.
    let none: Vec<(&str, &str)> = envs
        .iter()
        .copied()
        .filter(|(k, _)| *k != "MESHD_VAST_API_KEY")
        .collect();
    a.restart_env(root.path(), &["--no-render"], &none);
    let o = rent(&a, "vast", None, &[]);
    one_line(&o, "MESHD_VAST_API_KEY");
    assert!(vast_live(&fake).is_empty());
    assert!(!a.log().contains(VAST_KEY) && !a.log().contains("not-the-key"));
}

/// Serves `body` to every GET on 127.0.0.1 (a download site for the node); its base URL and
/// the paths asked for, in order.
fn serve_file(body: Vec<u8>) -> (String, Arc<Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(Mutex::new(Vec::new()));
    let paths = served.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
            paths.lock().unwrap().push(path);
        }
    });
    (url, served)
}

/// Rents a machine for a 2-frame job; the machine's PATH holds the tools a bare image has
/// and, if given, an `image_blender`: a `blender` that says that `--version` and renders
/// nothing. Blender releases are served from 127.0.0.1, where `download_env` (called with
/// the site's base URL) says. The node must install a Blender and render the job with it.
/// Returns the paths the node asked the site for and the job's submitting Blender version;
/// `None` where the rig cannot run here.
fn a_node_installs_blender_and_renders(
    image_blender: Option<&str>,
    download_env: impl FnOnce(&str) -> (&'static str, String),
) -> Option<(Vec<String>, String)> {
    let tools = [
        "sh", "mkdir", "cat", "chmod", "mv", "ls", "head", "rm", "tail", "nohup", "curl", "tar",
        "xz",
    ];
    let rig = vast_rig_with(0.40, |root| {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for t in tools {
            if let Some(path) = which(t) {
                std::os::unix::fs::symlink(path, bin.join(t)).unwrap();
            }
        }
        if let Some(v) = image_blender {
            let old = bin.join("blender");
            std::fs::write(&old, format!("#!/bin/sh\necho 'Blender {v}'\nexit 1\n")).unwrap();
            std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        format!("SetEnv PATH={}", bin.display())
    })?;
    if tools.iter().any(|t| which(t).is_none()) {
        eprintln!("SKIPPED: needs curl, tar and xz");
        return None;
    }
    let root = rig.root.path();
    // A Blender release as download.blender.org ships it: one top directory with `blender`
    // in it; here it starts this machine's Blender.
    let pkg = root.join("pkg").join("blender-release-linux-x64");
    std::fs::create_dir_all(&pkg).unwrap();
    let launcher = pkg.join("blender");
    let real = blender();
    let real = if real.is_absolute() {
        real
    } else {
        which("blender").expect("blender on PATH")
    };
    std::fs::write(
        &launcher,
        format!("#!/bin/sh\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tarball = root.join("blender.tar.xz");
    let ok = Command::new("tar")
        .arg("-cJf")
        .arg(&tarball)
        .arg("-C")
        .arg(root.join("pkg"))
        .arg("blender-release-linux-x64")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    let (site, served) = serve_file(std::fs::read(&tarball).unwrap());
    let (var, value) = download_env(&site);
    let env = cloud_env(root, Some(&rig.fake.url), None, &[(var, value.as_str())]);
    let a = start(root, "a", &["--no-render", "--lease-secs", "5"], &env);
    let scene = make_scene(root, "bare.blend", 2, 64, 36, 4);
    let out = root.join("out");
    let job = submit(&a, &scene, "1-2", &out, &[]);
    let version = a.job(&job)["blender_version"].as_str().unwrap().to_string();
    let port = rig.node_port.to_string();
    let o = rent(&a, "vast", Some(port.as_str()), &["--job", &job]);
    assert!(o.status.success(), "{}", text(&o));
    let instance = rentals(&a)[0]["instance"].as_u64().unwrap();
    let installed = root
        .join("nodes")
        .join(format!("vast-{instance}"))
        .join("blender")
        .join("blender");
    assert!(
        installed.is_file(),
        "Blender installed in the node's directory"
    );
    wait_until(
        Duration::from_secs(120),
        "the frames rendered on the node",
        || a.job(&job)["frames_written"] == 2,
    );
    assert_frames(&out, &[1, 2], (64, 36));
    wait_until(Duration::from_secs(30), "the machine released", || {
        vast_live(&rig.fake).is_empty()
    });
    let paths = served.lock().unwrap().clone();
    Some((paths, version))
}

#[test]
fn a_machine_without_blender_gets_one_installed_and_renders_with_it() {
    let Some((paths, _)) = a_node_installs_blender_and_renders(None, |site| {
        let url = format!("{site}/blender-4.2.3-linux-x64.tar.xz");
        ("MESHD_CLOUD_BLENDER_URL", url)
    }) else {
        return;
    };
    assert_eq!(paths, ["/blender-4.2.3-linux-x64.tar.xz"]);
}

/// An image's Blender older than the job needs (its files were saved by a newer one) would
/// take no frame: the machine installs the job's own Blender release instead, from the
/// releases site laid out as download.blender.org is.
#[test]
fn a_machine_whose_blender_is_too_old_for_the_job_installs_the_jobs_own() {
    let Some((paths, version)) = a_node_installs_blender_and_renders(Some("2.93.4"), |site| {
        ("MESHD_CLOUD_BLENDER_RELEASES", format!("{site}/release"))
    }) else {
        return;
    };
    let series: Vec<&str> = version.split('.').take(2).collect();
    let want = format!(
        "/release/Blender{}/blender-{version}-linux-x64.tar.xz",
        series.join(".")
    );
    assert_eq!(paths, [want]);
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}
