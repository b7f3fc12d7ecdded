//! Tests of [`Worker`] against a real Blender and scenes made by
//! `scripts/make_demo_scene.py`. They fail (not skip) when Blender is missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

use super::super::probe::find_blender;
use super::super::settings::OutputFormat;
use super::super::verify::verify_image;
use super::*;

/// Every test must finish well within this.
const LIMIT: Duration = Duration::from_secs(30);

fn blender() -> PathBuf {
    find_blender(None).unwrap_or_else(|e| {
        panic!("the render tests need a real Blender: install it (`apt install blender`) or set BLENDER=/path/to/blender ({e})")
    })
}

/// `scripts/make_demo_scene.py`, found from this source file (absolute when compiled
/// through a `#[path]` from another crate, relative to the crate root otherwise).
fn demo_script() -> PathBuf {
    let here = Path::new(file!());
    let here = if here.is_absolute() {
        here.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(here)
    };
    // <root>/src/render/worker_tests.rs -> <root>/scripts/make_demo_scene.py
    let root = here.ancestors().nth(3).unwrap_or(Path::new("."));
    let p = root.join("scripts/make_demo_scene.py");
    assert!(
        p.is_file(),
        "demo scene script not found at {}",
        p.display()
    );
    p
}

/// Shared scratch directory for the scenes; lives as long as the test binary.
fn scenes_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn make_scene(name: &str, args: &[&str]) -> PathBuf {
    let out = scenes_dir().join(name);
    let status = std::process::Command::new(blender())
        .args([
            "-b",
            "--factory-startup",
            "-noaudio",
            "--python-exit-code",
            "1",
        ])
        .arg("--python")
        .arg(demo_script())
        .arg("--")
        .arg(&out)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "make_demo_scene.py failed: {status}");
    out
}

/// 64x48, 4 samples, 24 frames.
fn tiny_scene() -> &'static Path {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        make_scene(
            "tiny.blend",
            &["--width", "64", "--height", "48", "--samples", "4"],
        )
    })
}

fn config(scene: &Path, work: &Path) -> WorkerConfig {
    WorkerConfig {
        blender: blender(),
        scene: scene.to_path_buf(),
        project: None,
        work_dir: work.to_path_buf(),
        settings: RenderSettings::default(),
        device: DeviceKind::Cpu,
        device_id: None,
        scripts_allowed: false,
        max_frames_per_process: 0,
        max_rss_mib: None,
        frame_timeout: None,
        simulate: None,
        frame_size: None,
        sandbox: Sandbox::Off,
    }
}

/// Frames of about a second on 2 cores: the tiny scene at 50% (32x24), 1000 samples.
fn slow_config(work: &Path) -> WorkerConfig {
    let mut c = config(tiny_scene(), work);
    c.settings.samples = Some(1000);
    c.settings.resolution_pct = Some(50);
    c
}

fn kill(pid: u32, signal: &str) {
    let st = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test]
async fn persistent_worker_renders_frames_in_one_process() {
    let d = tempfile::tempdir().unwrap();
    let mut w = Worker::new(config(tiny_scene(), &d.path().join("work")));
    let out = d.path().join("out");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut pids = Vec::new();
    for f in [1, 2, 3, 12345] {
        let r = timeout(LIMIT, w.render(f, &out, Some(&tx)))
            .await
            .unwrap()
            .unwrap();
        let name = if f == 12345 {
            "frame_12345.png".to_string()
        } else {
            format!("frame_{f:04}.png")
        };
        assert_eq!(r.path, out.join(name));
        assert_eq!((r.frame, r.width, r.height), (f, 64, 48));
        assert_eq!(verify_image(&r.path, Some((64, 48)), false), Ok((64, 48)));
        // The thumbnail of the frame, made by the worker next to it.
        let thumb = std::fs::read(r.thumb.as_ref().expect("a thumbnail")).unwrap();
        crate::render::thumb::check(&thumb).unwrap();
        let t = image::load_from_memory(&thumb).unwrap();
        assert_eq!((t.width(), t.height()), (64, 48), "not enlarged");
        pids.push(w.pid().unwrap());
    }
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "one Blender for all frames: {pids:?}"
    );
    let p = rx.try_recv().expect("progress events");
    assert_eq!((p.frame, p.total), (1, 4));
    // Frames differ: the objects move.
    assert_ne!(
        std::fs::read(out.join("frame_0001.png")).unwrap(),
        std::fs::read(out.join("frame_0003.png")).unwrap()
    );
    w.shutdown().await;
}

#[tokio::test]
async fn formats_depths_and_resolution_percentage() {
    let d = tempfile::tempdir().unwrap();
    for (i, (format, depth)) in [
        (OutputFormat::Png, Some(16)),
        (OutputFormat::Jpeg, None),
        (OutputFormat::Tiff, None),
        (OutputFormat::OpenExr, Some(32)),
        (OutputFormat::OpenExrMultilayer, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = config(tiny_scene(), &d.path().join(format!("w{i}")));
        c.settings.format = format;
        c.settings.color_depth = depth;
        c.settings.resolution_pct = Some(50);
        c.settings.scene = Some("Scene".into());
        c.settings.camera = Some("Camera".into());
        let mut w = Worker::new(c);
        let r = timeout(LIMIT, w.render(5, d.path(), None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.path,
            d.path().join(format!("frame_0005.{}", format.extension()))
        );
        assert_eq!((r.width, r.height), (32, 24), "{format:?}");
    }
}

#[tokio::test]
async fn eevee_engine_override_reports_progress() {
    let d = tempfile::tempdir().unwrap();
    let mut c = config(tiny_scene(), &d.path().join("w"));
    c.settings.engine = Some(Engine::Eevee);
    c.settings.samples = Some(3);
    let mut w = Worker::new(c);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = timeout(LIMIT, w.render(2, d.path(), Some(&tx)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.width, r.height), (64, 48));
    let mut last = None;
    while let Ok(p) = rx.try_recv() {
        last = Some(p);
    }
    let last = last.expect("EEVEE progress");
    assert_eq!((last.current, last.total), (3, 3));
}

#[tokio::test]
async fn bad_settings_fail_every_frame_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let mut c = config(tiny_scene(), &d.path().join("w1"));
    c.settings.camera = Some("NoSuchCamera".into());
    let mut w = Worker::new(c);
    for f in [1, 2] {
        let e = timeout(LIMIT, w.render(f, d.path(), None))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, FrameError::Settings(_)), "{e:?}");
        assert_eq!(
            e.reason(),
            "job settings cannot be applied: camera 'NoSuchCamera' not found in scene 'Scene'"
        );
    }
    let mut c = config(tiny_scene(), &d.path().join("w2"));
    c.settings.scene = Some("Nope".into());
    let e = timeout(LIMIT, Worker::new(c).render(1, d.path(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.reason().contains("scene 'Nope' not found"),
        "{}",
        e.reason()
    );

    // A GPU kind this Blender lacks fails loudly instead of falling back to the CPU.
    let mut c = config(tiny_scene(), &d.path().join("w3"));
    c.device = DeviceKind::Optix;
    let e = timeout(LIMIT, Worker::new(c).render(1, d.path(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.reason().contains("OPTIX"), "{}", e.reason());
}

#[tokio::test]
async fn unreadable_scenes_fail_with_blenders_error() {
    let d = tempfile::tempdir().unwrap();
    let e = Worker::new(config(&d.path().join("missing.blend"), d.path()))
        .render(1, d.path(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, FrameError::Scene(_)), "{e:?}");
    // Passes the header check, but Blender cannot load it.
    let bad = d.path().join("bad.blend");
    std::fs::write(&bad, b"BLENDER-v304REND garbage garbage").unwrap();
    let mut w = Worker::new(config(&bad, &d.path().join("w")));
    let e = timeout(LIMIT, w.render(1, d.path(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, FrameError::Start { .. }), "{e:?}");
    assert!(e.reason().starts_with("Blender: Error: "), "{}", e.reason());
    assert!(w.pid().is_none());
}

#[tokio::test]
async fn killed_blender_fails_the_frame_and_the_next_one_restarts() {
    let d = tempfile::tempdir().unwrap();
    let mut w = Worker::new(slow_config(&d.path().join("work")));
    let out = d.path().join("out");
    timeout(LIMIT, w.render(1, &out, None))
        .await
        .unwrap()
        .unwrap();
    for (frame, signal, expect) in [
        (2, "-9", "crashed (signal 9)"),
        (3, "-SEGV", "crashed (signal 11)"),
    ] {
        let pid = w.pid().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let killer = async {
            rx.recv().await.unwrap();
            kill(pid, signal);
        };
        let (r, ()) = timeout(LIMIT, async {
            tokio::join!(w.render(frame, &out, Some(&tx)), killer)
        })
        .await
        .unwrap();
        let e = r.unwrap_err();
        assert!(matches!(e, FrameError::Crashed { .. }), "{e:?}");
        assert!(
            e.reason()
                .starts_with(&format!("Blender {expect} while rendering frame {frame}")),
            "{}",
            e.reason()
        );
        if signal == "-SEGV"
            && let FrameError::Crashed { crash_log, .. } = &e
        {
            assert!(crash_log.as_ref().is_some_and(|p| p.is_file()), "{e:?}");
        }
        assert!(w.pid().is_none());
        let r = timeout(LIMIT, w.render(frame, &out, None))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(w.pid(), Some(pid));
        assert_eq!(r.path, out.join(format!("frame_{frame:04}.png")));
    }
    // Killed while idle: the next frame just gets a new Blender.
    let idle = w.pid().unwrap();
    kill(idle, "-9");
    tokio::time::sleep(Duration::from_millis(300)).await;
    timeout(LIMIT, w.render(4, &out, None))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(w.pid(), Some(idle));
}

#[tokio::test]
async fn dropped_render_future_restarts_blender() {
    let d = tempfile::tempdir().unwrap();
    let mut w = Worker::new(slow_config(&d.path().join("work")));
    let out = d.path().join("out");
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::select! {
        r = w.render(1, &out, Some(&tx)) => panic!("frame should still be rendering: {r:?}"),
        _ = timeout(LIMIT, rx.recv()) => {}
    }
    let stale = w.pid().expect("Blender runs, mid-frame");
    let r = timeout(LIMIT, w.render(2, &out, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.frame, 2);
    assert_ne!(w.pid(), Some(stale), "the abandoned Blender is replaced");
    assert!(
        !Path::new(&format!("/proc/{stale}")).exists(),
        "stale Blender is gone"
    );
}

#[tokio::test]
async fn black_frames_rejected_unless_allowed() {
    static S: OnceLock<PathBuf> = OnceLock::new();
    let scene = S.get_or_init(|| {
        make_scene(
            "black.blend",
            &[
                "--black",
                "--width",
                "64",
                "--height",
                "48",
                "--samples",
                "2",
            ],
        )
    });
    let d = tempfile::tempdir().unwrap();
    let mut w = Worker::new(config(scene, &d.path().join("w1")));
    let e = timeout(LIMIT, w.render(3, d.path(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        e.reason(),
        "output frame_0003.png is entirely black (if the frame is meant to be, submit with \
         --allow-blank)"
    );
    let mut c = config(scene, &d.path().join("w2"));
    c.settings.allow_blank = true;
    let r = timeout(LIMIT, Worker::new(c).render(3, d.path(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.width, r.height), (64, 48));
}

#[tokio::test]
async fn recycles_after_max_frames_and_rss_and_times_out() {
    let d = tempfile::tempdir().unwrap();
    let mut c = config(tiny_scene(), &d.path().join("w1"));
    c.max_frames_per_process = 2;
    let mut w = Worker::new(c);
    let mut pids = Vec::new();
    for f in 1..=3 {
        timeout(LIMIT, w.render(f, d.path(), None))
            .await
            .unwrap()
            .unwrap();
        pids.push(w.pid());
    }
    assert!(pids[0].is_some());
    assert_eq!(pids[1], None, "quit after 2 frames");
    assert!(pids[2].is_some() && pids[2] != pids[0]);

    let mut c = config(tiny_scene(), &d.path().join("w2"));
    c.max_rss_mib = Some(1);
    let mut w = Worker::new(c);
    timeout(LIMIT, w.render(1, d.path(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.pid(), None, "above the RSS limit: recycled");

    let mut c = slow_config(&d.path().join("w3"));
    c.frame_timeout = Some(Duration::from_millis(50));
    let mut w = Worker::new(c);
    let e = timeout(LIMIT, w.render(1, d.path(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, FrameError::Timeout { frame: 1, .. }), "{e:?}");
    assert!(w.pid().is_none());
}

/// Inside bubblewrap (installed by `scripts/install-deps.sh`): frames render and check as
/// outside, Blender's memory is still seen (it is a grandchild of the process meshd
/// starts), and a new output dir gets a Blender whose sandbox can write there.
#[tokio::test]
async fn a_sandboxed_worker_renders_and_its_memory_is_counted() {
    // As `meshd join --sandbox-read` reads it (scripts/test-blender-versions.sh sets it).
    let read = std::env::var_os("MESHD_SANDBOX_READ")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let d = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::detect(false, Vec::new(), read, d.path())
        .await
        .expect("bubblewrap works here");
    assert!(
        sandbox.is_on(),
        "this test needs bubblewrap: run scripts/install-deps.sh (apt install bubblewrap)"
    );
    let mut c = config(tiny_scene(), &d.path().join("work"));
    c.sandbox = sandbox;
    let mut w = Worker::new(c);
    let out = d.path().join("out");
    for f in [1, 2] {
        let r = timeout(LIMIT, w.render(f, &out, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.frame, r.width, r.height), (f, 64, 48));
    }
    let rss = w.proc.as_ref().and_then(|p| p.rss_mib()).unwrap_or(0);
    assert!(
        rss > 50,
        "Blender's memory counted through the sandbox: {rss} MiB"
    );
    let first = w.pid();
    let other = d.path().join("other-out");
    let r = timeout(LIMIT, w.render(3, &other, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.path, other.join("frame_0003.png"));
    assert_ne!(w.pid(), first, "restarted with the new output dir");
    w.shutdown().await;
}
