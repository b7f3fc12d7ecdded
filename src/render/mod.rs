//! Blender: discovery, device probe, the persistent render worker, log parsing and
//! output checks.
//!
//! # The worker protocol
//!
//! A [`Worker`] runs one Blender per job and device:
//!
//! ```text
//! blender -b --factory-startup -Y|-y -noaudio --log render SCENE.blend \
//!     --python-exit-code 86 --python WORK/meshd_driver.py -- --meshd-config WORK/meshd_job.json
//! ```
//!
//! (inside bubblewrap where it is installed: [`sandbox`]) with `BLENDER_USER_CONFIG`,
//! `BLENDER_USER_SCRIPTS`, `BLENDER_USER_DATAFILES` and `TMPDIR` pointing into the worker's
//! private directory (Blender writes its
//! `<scene>.crash.txt` there). `-y` (scripts in the `.blend` run) only when the job and this
//! peer allow it. The embedded `driver.py` applies the job's settings once (scene, camera,
//! engine, output format and depth, resolution %, samples, Cycles device; denoising off
//! when the build has no OpenImageDenoise; persistent data on), then:
//!
//! Commands in (stdin, one JSON object per line):
//! - `{"cmd":"render","frame":N,"out":"/abs/dir/frame_####"}`: render frame N with
//!   `frame_start = frame_end = N; render(animation=True)`, which expands `#` like `-o`.
//! - `{"cmd":"quit"}` (or end of stdin): exit.
//!
//! Events out (stdout, lines `@@MESHD@@ {json}` among Blender's own output):
//! - `{"event":"ready","width":W,"height":H,"error":null|"…"}` once, after the settings;
//!   W×H is the output size after the resolution percentage, `error` a settings problem
//!   that then fails every frame.
//! - `{"event":"done","frame":N,"path":"/abs/dir/frame_0007.png"}`
//! - `{"event":"error","frame":N,"message":"…"}`
//!
//! Exactly one `done` or `error` answers each `render`. Between commands Blender's own lines
//! (`Fra:`, `Sample a/b`, `Saved:`, `Error:` …) are parsed by [`logparse`] for progress and
//! for the failure reason. A frame counts only when the driver said `done` and
//! [`verify::verify_image`] accepts the file (size from `ready`, not blank unless the job
//! allows it); the worker then writes the frame's thumbnail ([`thumb`]) next to it. If
//! Blender dies, hangs past the frame timeout, or a `render` future is dropped mid-frame,
//! that process is killed and the next frame starts a fresh one.

pub mod blendfile;
pub mod discover;
pub mod leftovers;
pub mod logparse;
pub mod probe;
mod process;
pub mod sandbox;
pub mod settings;
pub mod simulate;
pub mod thumb;
pub mod verify;
pub mod worker;

pub use blendfile::{BlendFileError, BlendHeader, check_blend_file};
pub use probe::{BlenderInfo, DeviceInfo, ProbeError, find_blender, probe};
pub use sandbox::Sandbox;
pub use worker::{
    FrameError, FrameProgress, ProjectLayout, RenderedFrame, Unchecked, Worker, WorkerConfig,
};
