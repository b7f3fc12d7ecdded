//! Blender's sandbox (bubblewrap, installed by `scripts/install-deps.sh`): a scene from a
//! mesh member cannot write outside its work dir, read the daemon's keys, or reach the
//! network; the same scene with `--no-sandbox` can, which shows the test would see an escape.
//! And Python in a scene runs only for the submitters a peer trusts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// What the scene's Python tries, reported as JSON into its temp dir (`report.json`).
fn escape_script(data_dir: &Path, outside: &Path, port: u16) -> String {
    format!(
        r#"import json, os, socket, pathlib
DATA = {data:?}
r = {{}}
def attempt(name, f):
    try:
        r[name] = f()
    except Exception as e:
        r[name] = 'denied: ' + type(e).__name__
attempt('read_key', lambda: len(open(DATA + '/identity.key', 'rb').read()))
attempt('data_dir', lambda: sorted(os.listdir(DATA)))
attempt('write_outside', lambda: pathlib.Path({outside:?}, 'python.txt').write_text('escaped'))
attempt('connect', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3).close())
pathlib.Path(os.environ['TMPDIR'], 'report.json').write_text(json.dumps(r))
"#,
        data = data_dir.to_str().unwrap(),
        outside = outside.to_str().unwrap(),
    )
}

/// Compositor File Output nodes writing to an absolute path outside the work dir, into the
/// data dir, and into the project (next to the .blend).
fn file_outputs(data_dir: &Path, outside: &Path) -> String {
    format!(
        r#"sc = bpy.context.scene
sc.use_nodes = True
sc.render.use_compositing = True
tree = sc.node_tree
rl = tree.nodes.get('Render Layers') or tree.nodes.new('CompositorNodeRLayers')
comp = tree.nodes.get('Composite') or tree.nodes.new('CompositorNodeComposite')
tree.links.new(rl.outputs['Image'], comp.inputs['Image'])
for base in [{outside:?}, {data:?}, '//escape-project/']:
    fo = tree.nodes.new('CompositorNodeOutputFile')
    fo.base_path = base
    fo.file_slots[0].path = 'escape_'
    tree.links.new(rl.outputs['Image'], fo.inputs[0])
"#,
        outside = format!("{}/", outside.display()),
        data = format!("{}/escape/", data_dir.display()),
    )
}

fn api_port(d: &Daemon) -> u16 {
    let v: Value = serde_json::from_slice(&std::fs::read(d.dir.join("api.json")).unwrap()).unwrap();
    let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    addr.port()
}

struct Run {
    report: Value,
    /// Files the scene left outside the work dir, in the data dir or in the project.
    escaped: Vec<String>,
}

/// Renders the escaping scene on a fresh daemon started with `extra`.
fn render_escape(root: &Path, name: &str, extra: &[&str]) -> (Daemon, Run) {
    let base = make_scene(root, &format!("{name}-base.blend"), 1, 32, 24, 1);
    let mut args = vec!["--allow-scripts"];
    args.extend_from_slice(extra);
    let d = Daemon::start(root, name, None, &args);
    let outside = root.join(format!("{name}-outside"));
    std::fs::create_dir_all(&outside).unwrap();
    let project = root.join(format!("{name}-project"));
    std::fs::create_dir_all(&project).unwrap();
    let scene = project.join("escape.blend");
    with_python_setup(
        &base,
        &scene,
        &file_outputs(&d.dir, &outside),
        &escape_script(&d.dir, &outside, api_port(&d)),
    );
    let out = root.join(format!("{name}-out"));
    let id = submit(&d, &scene, "1", &out, &["--allow-scripts"]);
    wait_until(Duration::from_secs(120), "the frame to be written", || {
        d.job(&id)["frames_written"] == 1
    });
    assert_frames(&out, &[1], (32, 24));
    let report = find_file(&d.dir.join("work"), "report.json")
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .unwrap_or_else(|| panic!("{name}: the scene's Python ran and reported"));
    let mut escaped = Vec::new();
    for dir in [outside, d.dir.join("escape")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            escaped.push(e.path().display().to_string());
        }
    }
    if let Some(p) = find_file(&d.dir.join("work"), "escape-project") {
        escaped.push(p.display().to_string());
    }
    (d, Run { report, escaped })
}

fn denied(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("denied"))
}

#[test]
fn a_scene_cannot_write_outside_its_work_dir_read_keys_or_reach_the_network() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();

    let (boxed, run) = render_escape(r, "boxed", &[]);
    assert!(
        boxed.log().contains("bubblewrap sandbox"),
        "this test needs bubblewrap: run scripts/install-deps.sh\n{}",
        boxed.log()
    );
    let rep = &run.report;
    assert!(run.escaped.is_empty(), "wrote outside: {:?}", run.escaped);
    assert!(denied(&rep["read_key"]), "{rep}");
    assert!(denied(&rep["write_outside"]), "{rep}");
    assert!(denied(&rep["connect"]), "no network: {rep}");
    let listing = rep["data_dir"].to_string();
    assert!(
        !listing.contains("identity.key")
            && !listing.contains("mesh.key")
            && !listing.contains("db"),
        "the data dir is hidden: {rep}"
    );

    // The same scene unconfined does all of it: the checks above can see an escape.
    let (_open, run) = render_escape(r, "open", &["--no-sandbox"]);
    let rep = &run.report;
    assert!(
        run.escaped.len() >= 3,
        "File Output nodes write where they point without the sandbox: {:?}",
        run.escaped
    );
    assert!(rep["read_key"].is_u64(), "{rep}");
    assert!(rep["write_outside"].is_u64(), "{rep}");
    assert!(rep["connect"].is_null(), "{rep}");
    assert!(
        rep["data_dir"].to_string().contains("identity.key"),
        "{rep}"
    );
}

/// `--trust-submitter`: Python in a job's scene runs only when its submitter is trusted.
#[test]
fn python_runs_only_for_trusted_submitters() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let base = make_scene(r, "base.blend", 1, 32, 24, 1);
    let scene = r.join("autorun.blend");
    with_python(&base, &scene, AUTORUN_MARKER);
    let other = Daemon::start(r, "other", None, &["--no-render"]);
    for trusting in [false, true] {
        let name = if trusting { "trusting" } else { "distrusting" };
        let s = Daemon::start(r, &format!("s-{name}"), None, &["--no-render"]);
        let trusted = if trusting {
            s.peer_id()
        } else {
            other.peer_id()
        };
        let d = Daemon::start(
            r,
            name,
            Some(&s.ticket()),
            &["--allow-scripts", "--trust-submitter", &trusted],
        );
        wait_until(Duration::from_secs(60), "the renderer to be seen", || {
            s.renderers() == 1
        });
        let out = r.join(format!("{name}-out"));
        let id = submit(&s, &scene, "1", &out, &["--allow-scripts"]);
        wait_until(Duration::from_secs(120), "the frame to be written", || {
            s.job(&id)["frames_written"] == 1
        });
        let ran = find_file(&d.dir.join("work"), "autorun.ran").is_some();
        assert_eq!(ran, trusting, "{name}: Python ran = {ran}");
    }

    let bad = std::process::Command::new(BIN)
        .args(["join", "--trust-submitter", "not-a-peer", "--allow-scripts"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--trust-submitter"), "{err}");
}

#[test]
fn a_blender_that_runs_only_outside_the_sandbox_is_named_with_what_to_do() {
    // A launcher script whose target lies outside what the sandbox shows (a Blender
    // unpacked in a home dir, a Python venv): it runs for the user, and in the sandbox it
    // fails with "not found". The daemon said only "no probe result" before.
    let root = tempfile::tempdir().unwrap();
    let script = |path: &Path, body: String| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let apps = root.path().join("apps");
    script(
        &apps.join("blender"),
        format!("exec '{}' \"$@\"", blender().display()),
    );
    let launcher = root.path().join("bin/blender");
    script(
        &launcher,
        format!("exec '{}' \"$@\"", apps.join("blender").display()),
    );
    let launcher = launcher.to_str().unwrap();
    let probed = |d: &Daemon| {
        // The probe's own bound (60 s), then `--version` in and out of the sandbox.
        wait_until(Duration::from_secs(180), "Blender's probe to end", || {
            let log = d.plain_log();
            log.contains("Blender found") || log.contains("will not render")
        });
        d.plain_log()
    };

    let mut d = Daemon::start(root.path(), "d", None, &["--blender", launcher]);
    let log = probed(&d);
    assert!(log.contains("runs, but not in the sandbox"), "{log}");
    assert!(log.contains("--sandbox-read DIR"), "{log}");

    // What the message says to do works.
    d.kill();
    std::fs::remove_file(root.path().join("d.log")).unwrap();
    // --sandbox-read replaces MESHD_SANDBOX_READ (set for a Blender from a Python venv).
    let mut args = vec!["--blender", launcher];
    let env = std::env::var("MESHD_SANDBOX_READ").unwrap_or_default();
    for dir in env.split(':').chain([apps.to_str().unwrap()]) {
        if !dir.is_empty() {
            args.extend(["--sandbox-read", dir]);
        }
    }
    d.restart(root.path(), &args);
    let log = probed(&d);
    assert!(log.contains("Blender found"), "{log}");
    assert_eq!(d.renderers(), 1);
}
