//! A mesh member that lies: forged results at epoch 0, entries in another peer's name
//! through sync, a claim on every frame, results that are no image. Honest peers refuse
//! every lie and disconnect the liar; the job completes with Blender's own frames, and no
//! frame written to the output ever changes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Every frame file in `dir` with the blake3 of its bytes.
fn snapshot(dir: &Path) -> HashMap<PathBuf, [u8; 32]> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("frame_"))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((e.path(), *blake3::hash(&bytes).as_bytes()))
        })
        .collect()
}

#[test]
fn liars_are_refused_and_disconnected_and_the_job_completes() {
    let root = tempfile::tempdir().unwrap();
    let scene = make_scene(root.path(), "lies.blend", 6, 64, 36, 1);
    // A short lease: liars' claims lapse quickly where nobody has caught them yet.
    let lease = ["--lease-secs", "5"];
    let a = Daemon::start(
        root.path(),
        "a",
        None,
        &["--lease-secs", "5", "--no-render"],
    );
    let ticket = a.ticket();
    let liar = |name: &str, var: &str, extra: &[&str]| {
        Daemon::start_env(root.path(), name, Some(&ticket), extra, &[(var, "1")])
    };
    let no_render = ["--lease-secs", "5", "--no-render"];
    let epoch0 = liar("epoch0", "MESHD_FAULT_FORGE_EPOCH0", &no_render);
    let flood = liar("flood", "MESHD_FAULT_FLOOD_CLAIMS", &no_render);
    let forger = liar("forger", "MESHD_FAULT_FORGE_SYNC", &no_render);
    let garbage = liar("garbage", "MESHD_FAULT_GARBAGE_OUTPUT", &lease);
    wait_until(Duration::from_secs(90), "the liars connected", || {
        a.renderers() == 1 && a.connected_peers().len() == 4
    });
    let liars = [
        ("epoch0", epoch0.peer_id()),
        ("flood", flood.peer_id()),
        ("forger", forger.peer_id()),
        ("garbage", garbage.peer_id()),
    ];

    let out = root.path().join("out");
    let id = submit(&a, &scene, "1-6", &out, &[]);
    // Whatever is written once stays as it is.
    let mut seen: HashMap<PathBuf, [u8; 32]> = HashMap::new();
    let mut watch = || {
        for (path, hash) in snapshot(&out) {
            let first = *seen.entry(path.clone()).or_insert(hash);
            assert_eq!(
                first,
                hash,
                "{} changed after it was written",
                path.display()
            );
        }
    };
    // The liars are the only renderers and the only peers answering sync until every one
    // of them is caught (the forger lies in sync answers, which the submitter asks of a
    // random peer every 5 s). Nothing is written meanwhile.
    let caught = |peer: &str| {
        a.log()
            .lines()
            .any(|l| l.contains("disconnecting a peer that misbehaved") && l.contains(peer))
    };
    wait_until(Duration::from_secs(180), "every liar disconnected", || {
        watch();
        let connected = a.connected_peers();
        liars
            .iter()
            .all(|(_, p)| caught(p) && !connected.contains(p))
    });
    assert!(snapshot(&out).is_empty(), "no lie was written");
    assert!(
        a.log().contains("is not a PNG file"),
        "the submitter says why"
    );
    assert_ne!(a.job(&id)["state"], "done");

    // An honest renderer joins: the job completes.
    let honest = Daemon::start(root.path(), "honest", Some(&ticket), &lease);
    wait_until(Duration::from_secs(180), "every frame written", || {
        watch();
        a.job(&id)["frames_written"] == 6
    });
    assert_eq!(a.job(&id)["state"], "done");
    watch();
    let connected = a.connected_peers();
    assert!(
        connected.contains(&honest.peer_id()),
        "the honest peer stays"
    );
    for (_, peer) in &liars {
        assert!(!connected.contains(peer), "the liars stay out");
    }
    // The frames are Blender's, not anything a liar served.
    assert_frames(&out, &[1, 2, 3, 4, 5, 6], (64, 36));
    let reference = root.path().join("reference");
    reference_render(&scene, &reference, 1, 6);
    assert_like_blender(&out, &reference, 1..=6);
}
