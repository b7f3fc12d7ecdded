//! `meshd video` and `meshd submit --video`: real frames from Blender assembled by ffmpeg,
//! checked with ffprobe (frame count, size, codec); clear errors without ffmpeg and for an
//! unfinished job.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// (codec name, width, height, frame count) of the video's first stream.
fn probe(video: &Path) -> (String, u64, u64, u64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(video)
        .output()
        .expect("ffprobe (installed with ffmpeg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    let n = |k: &str| {
        s[k].as_u64()
            .or_else(|| s[k].as_str().and_then(|x| x.parse().ok()))
            .unwrap_or(0)
    };
    (
        s["codec_name"].as_str().unwrap_or("").to_string(),
        n("width"),
        n("height"),
        n("nb_read_frames"),
    )
}

#[test]
fn frames_become_a_video_after_the_job_and_on_request() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let scene = make_scene(r, "shot.blend", 4, 64, 48, 1);
    let d = Daemon::start(r, "d", None, &[]);
    let out = r.join("out");

    // submit --video waits for the frames, then encodes them.
    let st = Command::new(BIN)
        .arg("--data-dir")
        .arg(&d.dir)
        .args([
            "submit",
            scene.to_str().unwrap(),
            "1-4",
            "--name",
            "shot",
            "--out",
        ])
        .arg(&out)
        .args(["--video", "--fps", "12"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(probe(&out.join("shot.mp4")), ("h264".into(), 64, 48, 4));

    // meshd video: another codec, another file; an existing file is not replaced.
    let mov = r.join("shot.mov");
    let prores = || {
        d.cli(&[
            "video",
            "shot",
            "--codec",
            "prores",
            "--out",
            mov.to_str().unwrap(),
        ])
    };
    let st = prores();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(probe(&mov), ("prores".into(), 64, 48, 4));
    let again = prores();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // Without ffmpeg: one clear line.
    let empty = tempfile::tempdir().unwrap();
    let no_ffmpeg = Command::new(BIN)
        .env("PATH", empty.path())
        .arg("--data-dir")
        .arg(&d.dir)
        .args(["video", "shot", "--force"])
        .output()
        .unwrap();
    assert!(!no_ffmpeg.status.success());
    let err = String::from_utf8_lossy(&no_ffmpeg.stderr);
    assert!(
        err.contains("ffmpeg is not installed") && err.lines().count() == 1,
        "{err}"
    );

    // A job whose frames are not all in yet.
    let idle = Daemon::start(r, "idle", None, &["--no-render"]);
    submit(
        &idle,
        &scene,
        "1-4",
        &r.join("idle-out"),
        &["--name", "waiting"],
    );
    let early = idle.cli(&["video", "waiting"]);
    assert!(!early.status.success());
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(err.contains("0 of 4 frames"), "{err}");
}
