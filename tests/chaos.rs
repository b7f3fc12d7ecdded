//! Chaos: six daemons render a 60-frame job while two renderers are killed with SIGKILL at
//! random moments and one of them is restarted. Every frame must reach the output exactly
//! once, valid, and `meshd submit --wait` must exit 0. Real Blender, 127.0.0.1 only.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const FRAMES: u32 = 60;

/// Kills the `--wait` child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_renderers_killed_at_random_one_restarted_every_frame_exactly_once() {
    let seed: u64 = std::env::var("MESHD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (MESHD_CHAOS_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "chaos.blend", FRAMES, 96, 54, 4);
    let lease = ["--lease-secs", "3"];
    let a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--no-render", "--lease-secs", "3"],
    );
    let ticket = a.ticket();
    let mut renderers: Vec<Daemon> = ["b", "c", "d", "e", "f"]
        .iter()
        .map(|n| Daemon::start(root.path(), n, Some(&ticket), &lease))
        .collect();
    wait_until(Duration::from_secs(120), "five renderers", || {
        a.renderers() == 5
    });

    let out = root.path().join("out");
    let waiter = Command::new(BIN)
        .arg("--data-dir")
        .arg(&a.dir)
        .args(["submit", scene.to_str().unwrap()])
        .arg(format!("1-{FRAMES}"))
        .args(["--out", out.to_str().unwrap(), "--wait", "--name", "chaos"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meshd submit --wait");
    let mut waiter = Guard(waiter);
    let mut id = String::new();
    wait_until(Duration::from_secs(60), "the job to exist", || {
        let s = a.status();
        if let Some(j) = s["jobs"].as_array().and_then(|j| j.first()) {
            id = j["id"].as_str().unwrap_or_default().to_string();
        }
        !id.is_empty()
    });

    // Two distinct victims, each killed once a random number of frames is done.
    let first = rng.gen_range(0..renderers.len());
    let second = (first + rng.gen_range(1..renderers.len())) % renderers.len();
    let at = [rng.gen_range(3..20u64), rng.gen_range(20..40u64)];
    for (victim, at) in [(first, at[0]), (second, at[1])] {
        wait_until(
            Duration::from_secs(300),
            &format!("{at} frames done before the next kill"),
            || a.job(&id)["frames_done"].as_u64().unwrap_or(0) >= at,
        );
        eprintln!("killing {} at {at} frames done", renderers[victim].name);
        renderers[victim].kill();
    }
    eprintln!("restarting {}", renderers[first].name);
    renderers[first].restart(root.path(), &lease);

    let started = Instant::now();
    let status = loop {
        if let Some(st) = waiter.0.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() >= Duration::from_secs(600) {
            // What the stuck job looks like, for whoever reads this failure (with the seed
            // above and each daemon's last log lines below).
            let job = a.cli(&["status", &id, "--json"]);
            let peers = a.cli(&["peers", "--json"]);
            eprintln!(
                "status: {}\npeers: {}",
                String::from_utf8_lossy(&job.stdout),
                String::from_utf8_lossy(&peers.stdout)
            );
            panic!("`submit --wait` did not return in 10 minutes (seed {seed})");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    if let Some(mut e) = waiter.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "`submit --wait` failed: {status}: {err}");
    let frames: Vec<u32> = (1..=FRAMES).collect();
    assert_frames(&out, &frames, (96, 54));
    let job = a.job(&id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["frames_written"], FRAMES);
}
