//! Finding a scene's external files with the submitting machine's own Blender.
//!
//! ```text
//! blender -b --factory-startup -Y -noaudio SCENE.blend --python-exit-code 86 \
//!     --python DIR/meshd_project.py -- --meshd-discover
//! ```
//!
//! Scripts in the file stay off (`-Y`). The embedded `project.py` walks every datablock that
//! names a file — libraries (and theirs), images with UDIM tiles and sequences expanded,
//! sounds, fonts, clips, volumes, caches, strips — and prints one line
//! `@@MESHD@@ {"event":"deps", ...}`. The same module remaps and checks those paths inside
//! the render driver (see [`crate::transfer::project`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::probe::{PYTHON_EXIT_CODE, private_env};
use crate::transfer::project::Dependency;

/// The embedded walker (`meshd_project.py`, the discovery script), its path helpers and the
/// remapper, shared with the render driver: file name each gets, and its text. They import
/// each other from the folder they are written to.
const PROJECT_MODULES: [(&str, &str); 3] = [
    ("meshd_project.py", include_str!("project.py")),
    ("meshd_paths.py", include_str!("project_paths.py")),
    ("meshd_remap.py", include_str!("project_remap.py")),
];

/// Writes the project modules into `dir` (next to the driver, so `import meshd_project`
/// finds them); returns the path of the discovery script.
pub fn write_project_modules(dir: &Path) -> std::io::Result<PathBuf> {
    for (name, text) in PROJECT_MODULES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir.join(PROJECT_MODULES[0].0))
}
const MARKER: &str = "@@MESHD@@ ";
/// Loading a big production file can take a while; a walk that takes longer is stuck.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot prepare {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("cannot run Blender at {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("Blender did not list the scene's files within {0:?}")]
    Timeout(Duration),
    #[error("Blender could not list the scene's files ({status}): {tail}")]
    NoResult {
        status: String,
        tail: String,
        /// The version Blender printed as it started ("3.4.1"), if it did.
        blender: Option<String>,
    },
}

impl DiscoverError {
    /// The version of the Blender that failed, when it said.
    pub fn blender(&self) -> Option<&str> {
        match self {
            Self::NoResult { blender, .. } => blender.as_deref(),
            _ => None,
        }
    }
}

/// What the walk found: the `deps` event of `project.py`, from a Blender this daemon ran
/// ([`discover`]) or from the add-on, which walks the open file in the artist's Blender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// Version of the Blender that walked the file, e.g. "3.4.1".
    pub blender: String,
    /// The .blend walked (absolute, '/' separators).
    #[serde(default)]
    pub scene: Option<String>,
    pub deps: Vec<Dependency>,
    /// Datablocks the walker could not inspect (reported, not fatal).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Each scene's resolution settings and cameras.
    #[serde(default)]
    pub sizes: Vec<SceneSize>,
    /// The scene Blender opens the file with.
    #[serde(default)]
    pub active: Option<String>,
}

/// A scene's resolution settings and cameras, as the walk found them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneSize {
    pub name: String,
    pub x: u32,
    pub y: u32,
    pub pct: u32,
    /// Rendering a border cropped to it: the size is not worth predicting.
    pub crop: bool,
    /// Names of the camera objects in the scene (what `--camera` may name).
    #[serde(default)]
    pub cameras: Vec<String>,
    /// Why Blender would refuse to render the scene through its own camera (it has none and
    /// neither the sequencer nor the compositor makes the frame without one).
    #[serde(default)]
    pub no_camera: Option<String>,
}

impl Discovery {
    /// The size of the frames of `scene` (the active one if `None`) with the resolution
    /// percentage `pct` (the file's if `None`), rounded as Blender does; `None` when it
    /// cannot be told (unknown scene, a cropped border).
    pub fn output_size(&self, scene: Option<&str>, pct: Option<u16>) -> Option<(u32, u32)> {
        let name = scene.or(self.active.as_deref())?;
        let s = self.sizes.iter().find(|s| s.name == name)?;
        if s.crop {
            return None;
        }
        let pct = pct.map_or(s.pct, u32::from);
        let (w, h) = (s.x * pct / 100, s.y * pct / 100);
        (w > 0 && h > 0).then_some((w, h))
    }

    /// Refuses job settings that no renderer could apply: a `--scene` the file lacks, a
    /// `--camera` that is not a camera of the scene, a scene Blender would not render for want
    /// of a camera. Passes what the walk could not tell (no scene list).
    pub fn check_settings(&self, scene: Option<&str>, camera: Option<&str>) -> Result<(), String> {
        let Some(name) = scene.or(self.active.as_deref()) else {
            return Ok(());
        };
        if self.sizes.is_empty() {
            return Ok(());
        }
        let Some(s) = self.sizes.iter().find(|s| s.name == name) else {
            let names: Vec<String> = self.sizes.iter().map(|s| format!("{:?}", s.name)).collect();
            return Err(format!(
                "scene {name:?} is not in the .blend; give --scene one of {}",
                names.join(", ")
            ));
        };
        match camera {
            Some(cam) if !s.cameras.iter().any(|c| c == cam) => Err(if s.cameras.is_empty() {
                format!(
                    "camera {cam:?} is not in scene {name:?}, which has no camera: add one in Blender"
                )
            } else {
                let names: Vec<String> = s.cameras.iter().map(|c| format!("{c:?}")).collect();
                format!(
                    "camera {cam:?} is not in scene {name:?}; give --camera one of {}",
                    names.join(", ")
                )
            }),
            Some(_) => Ok(()),
            None => match &s.no_camera {
                Some(why) if s.cameras.is_empty() => Err(format!(
                    "{why}, so Blender cannot render it: add a camera in Blender and save, or \
                     name a scene that has one with --scene"
                )),
                Some(why) => {
                    let names: Vec<String> = s.cameras.iter().map(|c| format!("{c:?}")).collect();
                    Err(format!(
                        "{why} set, so Blender cannot render it: name one with --camera ({}), \
                         or make one the active camera in Blender and save",
                        names.join(", ")
                    ))
                }
                None => Ok(()),
            },
        }
    }
}

/// Lists the external files `scene` needs. `work` is a private scratch directory.
pub async fn discover(
    blender: &Path,
    scene: &Path,
    work: &Path,
) -> Result<Discovery, DiscoverError> {
    let io = |e| DiscoverError::Io(work.to_path_buf(), e);
    std::fs::create_dir_all(work.join("tmp")).map_err(io)?;
    let script = write_project_modules(work).map_err(io)?;
    let mut cmd = Command::new(blender);
    cmd.args(["-b", "--factory-startup", "-Y", "-noaudio"])
        .arg(scene)
        .arg("--python-exit-code")
        .arg(PYTHON_EXIT_CODE.to_string())
        .arg("--python")
        .arg(&script)
        .args(["--", "--meshd-discover"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    private_env(&mut cmd, work);
    let child = cmd
        .spawn()
        .map_err(|e| DiscoverError::Spawn(blender.to_path_buf(), e))?;
    let out = tokio::time::timeout(DISCOVER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| DiscoverError::Timeout(DISCOVER_TIMEOUT))?
        .map_err(io)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_discovery(&stdout).ok_or_else(|| {
        let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error") || l.contains("rror:"))
            .collect();
        let tail = match tail.last() {
            Some(l) => l.trim().to_string(),
            None => text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string(),
        };
        // Blender's first line in the background: "Blender 3.4.1" (5.0: "Blender 5.0.1 ...").
        let blender = stdout.lines().find_map(|l| {
            let v = l
                .trim()
                .strip_prefix("Blender ")?
                .split_whitespace()
                .next()?;
            v.starts_with(|c: char| c.is_ascii_digit())
                .then(|| v.to_string())
        });
        DiscoverError::NoResult {
            status: out.status.to_string(),
            tail,
            blender,
        }
    })
}

/// The `deps` event in Blender's output, if there is one.
pub fn parse_discovery(stdout: &str) -> Option<Discovery> {
    #[derive(Deserialize)]
    struct Event {
        event: String,
        #[serde(flatten)]
        discovery: Discovery,
    }
    stdout.lines().find_map(|l| {
        let json = l.trim_end().strip_prefix(MARKER)?;
        let ev: Event = serde_json::from_str(json).ok()?;
        (ev.event == "deps").then_some(ev.discovery)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_marker_line_among_blender_output() {
        let out = "Blender 3.4.1\nRead blend: /p/shot.blend\n@@MESHD@@ {\"event\": \"deps\", \
                   \"blender\": \"3.4.1\", \"scene\": \"/p/shot.blend\", \"deps\": [{\"path\": \
                   \"/p/t.png\", \"raw\": \"//t.png\", \"owner\": \"Image \\\"t\\\"\", \"kind\": \
                   \"image\", \"exists\": true}], \"errors\": []}\nBlender quit\n";
        let d = parse_discovery(out).unwrap();
        assert_eq!(d.blender, "3.4.1");
        assert_eq!(d.deps.len(), 1);
        assert_eq!(d.deps[0].owner, "Image \"t\"");
        assert!(parse_discovery("no marker\n@@MESHD@@ {bad json").is_none());
        assert!(parse_discovery("@@MESHD@@ {\"event\": \"ready\"}").is_none());
    }

    #[test]
    fn the_frame_size_is_the_scene_resolution_at_its_percentage() {
        let scene = |name: &str, crop| SceneSize {
            name: name.into(),
            x: 1920,
            y: 1081,
            pct: 50,
            crop,
            cameras: vec![],
            no_camera: None,
        };
        let d = Discovery {
            blender: "3.4.1".into(),
            scene: None,
            deps: vec![],
            errors: vec![],
            sizes: vec![scene("Shot", false), scene("Cropped", true)],
            active: Some("Shot".into()),
        };
        assert_eq!(
            d.output_size(None, None),
            Some((960, 540)),
            "rounded down, as Blender"
        );
        assert_eq!(d.output_size(Some("Shot"), Some(100)), Some((1920, 1081)));
        assert_eq!(d.output_size(Some("Cropped"), None), None);
        assert_eq!(d.output_size(Some("Other"), None), None);
        let none = Discovery { active: None, ..d };
        assert_eq!(none.output_size(None, None), None);
    }

    #[test]
    fn settings_no_renderer_could_apply_are_refused() {
        let scene = |name: &str, cameras: &[&str], no_camera: Option<&str>| SceneSize {
            name: name.into(),
            x: 64,
            y: 64,
            pct: 100,
            crop: false,
            cameras: cameras.iter().map(|c| c.to_string()).collect(),
            no_camera: no_camera.map(String::from),
        };
        let d = Discovery {
            blender: "3.4.1".into(),
            scene: None,
            deps: vec![],
            errors: vec![],
            sizes: vec![
                scene("Shot", &["Cam", "Side"], None),
                scene("Edit", &[], None),
                scene("Empty", &[], Some("scene 'Empty' has no camera")),
                scene("Unset", &["Cam"], Some("scene 'Unset' has no camera")),
            ],
            active: Some("Empty".into()),
        };
        let err = d.check_settings(None, None).unwrap_err();
        assert!(
            err.starts_with("scene 'Empty' has no camera, so Blender cannot render it"),
            "{err}"
        );
        assert_eq!(d.check_settings(Some("Shot"), None), Ok(()));
        assert_eq!(d.check_settings(Some("Shot"), Some("Side")), Ok(()));
        assert_eq!(
            d.check_settings(Some("Edit"), None),
            Ok(()),
            "the sequencer makes it"
        );
        assert_eq!(
            d.check_settings(Some("Unset"), None).unwrap_err(),
            "scene 'Unset' has no camera set, so Blender cannot render it: name one with \
             --camera (\"Cam\"), or make one the active camera in Blender and save"
        );
        assert_eq!(d.check_settings(Some("Unset"), Some("Cam")), Ok(()));
        assert_eq!(
            d.check_settings(Some("Shot"), Some("Top")).unwrap_err(),
            r#"camera "Top" is not in scene "Shot"; give --camera one of "Cam", "Side""#
        );
        assert!(
            d.check_settings(Some("Empty"), Some("Cam"))
                .unwrap_err()
                .contains("which has no camera")
        );
        assert_eq!(
            d.check_settings(Some("Final"), None).unwrap_err(),
            r#"scene "Final" is not in the .blend; give --scene one of "Shot", "Edit", "Empty", "Unset""#
        );
        let unknown = Discovery {
            sizes: vec![],
            ..d.clone()
        };
        assert_eq!(unknown.check_settings(Some("Final"), Some("Top")), Ok(()));
        let no_active = Discovery { active: None, ..d };
        assert_eq!(no_active.check_settings(None, Some("Top")), Ok(()));
    }
}
