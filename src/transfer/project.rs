//! Project manifests: the whole set of files a job renders with.
//!
//! A job names one *project manifest* (a postcard [`ProjectManifest`], itself stored and moved
//! as an ordinary blob). It lists every file the scene needs — the `.blend`, its linked
//! libraries and their libraries, images, UDIM tiles, sequences, caches — each with its path
//! relative to a *project root* and the blob that holds its bytes, plus the scene's own path
//! in that layout.
//!
//! The root is the deepest directory that holds the scene and every dependency found on the
//! submitting machine, so the layout mirrors the artist's disk below it: `//`-relative paths
//! (and relative paths inside libraries) resolve on a renderer without any change. Absolute
//! paths are mapped into the layout by the Blender driver after load, using [`ProjectManifest::root`]
//! (the submitter's root) — see `src/render/project_remap.py`.
//!
//! Everything here is pure: no I/O beyond what the caller hands in.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::BlobId;

pub const PROJECT_VERSION: u16 = 1;
/// Most files one project may hold (image sequences and caches can be long).
pub const MAX_PROJECT_FILES: usize = 200_000;
/// Largest encoded project manifest accepted from a peer.
pub const MAX_PROJECT_MANIFEST_BYTES: u64 = 64 << 20;
/// Longest relative path (bytes) and path component.
const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;

/// One file of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectFile {
    /// Relative to the project root, `/`-separated, no `.`/`..` components.
    pub path: String,
    pub blob: BlobId,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectManifest {
    pub version: u16,
    /// The project root on the submitting machine (absolute, `/`-separated). Renderers map
    /// absolute paths that point below it into their own copy.
    pub root: String,
    /// The `.blend` to render, relative to the root; also one of `files`.
    pub scene: String,
    /// Every file, sorted by path, each path once.
    pub files: Vec<ProjectFile>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectError {
    #[error("project manifest is not valid: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ProjectError {
    ProjectError::Invalid(msg.into())
}

impl ProjectManifest {
    /// Builds a manifest; sorts the files and checks the result.
    pub fn new(
        root: String,
        scene: String,
        mut files: Vec<ProjectFile>,
    ) -> Result<Self, ProjectError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let m = ProjectManifest {
            version: PROJECT_VERSION,
            root,
            scene,
            files,
        };
        m.validate()?;
        Ok(m)
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a manifest read from a blob (which the fetch already verified by hash).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProjectError> {
        if bytes.len() as u64 > MAX_PROJECT_MANIFEST_BYTES {
            return Err(invalid("too large"));
        }
        let m: ProjectManifest =
            postcard::from_bytes(bytes).map_err(|e| invalid(format!("undecodable: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks everything a peer could get wrong: version, paths that could escape the
    /// renderer's work dir, duplicates, a scene that is not among the files.
    pub fn validate(&self) -> Result<(), ProjectError> {
        if self.version != PROJECT_VERSION {
            return Err(invalid(format!("unsupported version {}", self.version)));
        }
        if self.files.is_empty() || self.files.len() > MAX_PROJECT_FILES {
            return Err(invalid("wrong number of files"));
        }
        if !self.root.starts_with('/') || self.root.len() > MAX_PATH || self.root.contains('\0') {
            return Err(invalid("root is not an absolute path"));
        }
        for w in self.files.windows(2) {
            if w[0].path >= w[1].path {
                return Err(invalid("files are not sorted and unique"));
            }
        }
        // A file may not also be a directory of another (`a` and `a/b`).
        let paths: BTreeSet<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        for f in &self.files {
            if !is_safe_rel_path(&f.path) {
                return Err(invalid(format!("unsafe path {:?}", f.path)));
            }
            let mut prefix = f.path.as_str();
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                if paths.contains(parent) {
                    return Err(invalid(format!(
                        "{parent:?} is both a file and a directory"
                    )));
                }
                prefix = parent;
            }
        }
        if !paths.contains(self.scene.as_str()) {
            return Err(invalid("the scene is not one of the files"));
        }
        Ok(())
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Every blob the project needs, each once.
    pub fn blobs(&self) -> BTreeSet<BlobId> {
        self.files.iter().map(|f| f.blob).collect()
    }
}

/// A relative path that stays inside the directory it is joined to: `/`-separated, non-empty
/// components, none of them `.` or `..`, no backslash or NUL, bounded lengths.
pub fn is_safe_rel_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_PATH
        && !p.contains(['\\', '\0'])
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= MAX_COMPONENT)
}

/// A dependency as found at submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// Absolute, normalised path on the submitting machine (Windows-style paths with `/`).
    pub path: String,
    /// The path as written in the datablock.
    pub raw: String,
    /// The datablock that needs it, e.g. `Image "wood" (in library //lib.blend)`.
    pub owner: String,
    pub kind: String,
    pub exists: bool,
}

/// What submit sends: files with their place in the layout, and what is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectPlan {
    pub root: PathBuf,
    /// The scene, relative to `root`.
    pub scene: String,
    /// (relative path, absolute path on this machine), sorted, each once; the scene included.
    pub files: Vec<(String, PathBuf)>,
    /// Dependencies that do not exist here: named to the user, allowed to stay missing.
    pub missing: Vec<Dependency>,
}

/// Lays out a project: the root is the deepest directory holding the scene and every
/// dependency that exists. `scene` must be absolute and normalised; dependencies whose path is
/// not absolute (Windows paths on Linux) count as missing.
pub fn plan(scene: &Path, deps: &[Dependency]) -> Result<ProjectPlan, ProjectError> {
    let mut present: Vec<PathBuf> = vec![scene.to_path_buf()];
    let mut missing = Vec::new();
    let mut seen_missing = BTreeSet::new();
    for d in deps {
        let p = PathBuf::from(&d.path);
        if d.exists && p.is_absolute() && normal(&p) {
            present.push(p);
        } else if seen_missing.insert(d.path.clone()) {
            missing.push(d.clone());
        }
    }
    present.sort();
    present.dedup();
    let root = common_dir(&present).ok_or_else(|| invalid("no common directory"))?;
    let rel = |p: &Path| -> Result<String, ProjectError> {
        let r = p
            .strip_prefix(&root)
            .map_err(|_| invalid("path outside the root"))?;
        let s = r
            .to_str()
            .ok_or_else(|| invalid(format!("{} is not valid UTF-8", p.display())))?
            .to_string();
        if is_safe_rel_path(&s) {
            Ok(s)
        } else {
            Err(invalid(format!(
                "cannot place {} in the project",
                p.display()
            )))
        }
    };
    let scene_rel = rel(scene)?;
    let mut files = Vec::with_capacity(present.len());
    for p in &present {
        files.push((rel(p)?, p.clone()));
    }
    files.sort();
    Ok(ProjectPlan {
        root,
        scene: scene_rel,
        files,
        missing,
    })
}

/// Whether `p` has no `.`/`..` components (so prefix tests on it mean what they say).
fn normal(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The deepest directory containing every path (each path is a file).
fn common_dir(paths: &[PathBuf]) -> Option<PathBuf> {
    let mut root = paths.first()?.parent()?.to_path_buf();
    for p in &paths[1..] {
        while !p.starts_with(&root) {
            root = root.parent()?.to_path_buf();
        }
    }
    Some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(path: &str, exists: bool) -> Dependency {
        Dependency {
            path: path.into(),
            raw: path.into(),
            owner: "Image \"x\"".into(),
            kind: "image".into(),
            exists,
        }
    }

    fn file(path: &str) -> ProjectFile {
        ProjectFile {
            path: path.into(),
            blob: BlobId::of(path.as_bytes()),
            size: 1,
        }
    }

    #[test]
    fn root_is_the_deepest_common_directory() {
        let p = plan(
            Path::new("/home/a/proj/shots/shot.blend"),
            &[
                dep("/home/a/proj/lib/prop.blend", true),
                dep("/home/a/proj/lib/textures/wood.png", true),
                dep("/home/a/proj/shots/shot.blend", true),
                dep("C:/textures/floor.png", false),
                dep("/mnt/gone.png", false),
                dep("/mnt/gone.png", false),
            ],
        )
        .unwrap();
        assert_eq!(p.root, Path::new("/home/a/proj"));
        assert_eq!(p.scene, "shots/shot.blend");
        let rels: Vec<&str> = p.files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            rels,
            [
                "lib/prop.blend",
                "lib/textures/wood.png",
                "shots/shot.blend"
            ]
        );
        assert_eq!(p.missing.len(), 2, "each missing path named once");
    }

    #[test]
    fn absolute_paths_elsewhere_widen_the_root() {
        let p = plan(
            Path::new("/home/a/proj/shot.blend"),
            &[dep("/mnt/assets/floor.png", true)],
        )
        .unwrap();
        assert_eq!(p.root, Path::new("/"));
        assert_eq!(p.scene, "home/a/proj/shot.blend");
        assert_eq!(p.files[1].0, "mnt/assets/floor.png");
    }

    #[test]
    fn scene_alone() {
        let p = plan(Path::new("/w/s.blend"), &[]).unwrap();
        assert_eq!(p.root, Path::new("/w"));
        assert_eq!(
            p.files,
            vec![("s.blend".into(), PathBuf::from("/w/s.blend"))]
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "", "/abs", "a/../b", "./a", "a//b", "a\\b", "..", "a/", "a\0b",
        ] {
            assert!(!is_safe_rel_path(bad), "{bad:?}");
        }
        assert!(is_safe_rel_path("textures/udim/tile.1001.png"));
        assert!(is_safe_rel_path(".hidden/x"));
    }

    #[test]
    fn manifest_checks_what_a_peer_could_forge() {
        let ok = ProjectManifest::new(
            "/p".into(),
            "s.blend".into(),
            vec![file("s.blend"), file("a/b.png")],
        )
        .unwrap();
        assert_eq!(ok.files[0].path, "a/b.png", "sorted");
        assert_eq!(ProjectManifest::decode(&ok.encode()).unwrap(), ok);

        let mut m = ok.clone();
        m.files[0].path = "../../etc/passwd".into();
        assert!(m.validate().is_err());
        let mut m = ok.clone();
        m.scene = "other.blend".into();
        assert!(m.validate().is_err());
        let mut m = ok.clone();
        m.files.push(file("s.blend"));
        assert!(m.validate().is_err(), "duplicates");
        let mut m = ok.clone();
        m.files.insert(0, file("a"));
        assert!(m.validate().is_err(), "a file that is also a directory");
        let mut m = ok.clone();
        m.root = "relative".into();
        assert!(m.validate().is_err());
        assert!(ProjectManifest::decode(b"garbage").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever bytes a peer serves as a project manifest, decoding returns, and whatever it
        /// accepts joins every path below the root.
        #[test]
        fn project_decoder_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = ProjectManifest::decode(&bytes) {
                for f in &m.files {
                    let joined = Path::new("/work").join(&f.path);
                    prop_assert!(joined.starts_with("/work") && normal(&joined));
                }
            }
        }

        #[test]
        fn every_planned_file_lies_below_the_root(
            parts in proptest::collection::vec(proptest::collection::vec("[a-c]{1,2}", 1..4), 0..6)
        ) {
            let deps: Vec<Dependency> = parts.iter().map(|p| Dependency {
                path: format!("/{}", p.join("/")),
                raw: String::new(), owner: String::new(), kind: "image".into(), exists: true,
            }).collect();
            let scene = Path::new("/a/s.blend");
            if let Ok(plan) = plan(scene, &deps) {
                for (rel, abs) in &plan.files {
                    prop_assert!(is_safe_rel_path(rel));
                    prop_assert_eq!(&plan.root.join(rel), abs);
                }
            }
        }
    }
}
