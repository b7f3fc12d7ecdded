//! What a submit may send: no file of this daemon's own (its keys, API token and database in
//! the data dir, the cloud API keys in meshd's config dir), and a file list made elsewhere
//! (the add-on's) only when it is of the file submitted.
//!
//! A `.blend` may name any file as a texture, and every file of a job travels to every
//! renderer, rented machines included: a scene that named the daemon's `identity.key` would
//! let them sign as the submitter.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::ledger::job::BlenderReq;
use crate::render::discover::Discovery;
use crate::transfer::project::Dependency;

/// The directories no file of a job may come from, and their own files by identity, so a
/// hard link elsewhere is caught too.
pub struct Protected {
    /// Symbolic links resolved.
    roots: Vec<PathBuf>,
    /// (device, inode) of the regular files in each root and in its `cloud/` (the key the
    /// daemon reaches rented machines with). Not the blob store: its files are jobs' files.
    files: HashSet<(u64, u64)>,
}

impl Protected {
    /// Protects `roots` (those that exist).
    pub fn new(roots: &[PathBuf]) -> Self {
        let roots: Vec<PathBuf> = roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        let files = roots
            .iter()
            .flat_map(|r| [r.clone(), r.join("cloud")])
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .filter(Metadata::is_file)
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Protected { roots, files }
    }

    fn holds(&self, real: &Path, meta: &Metadata) -> bool {
        self.roots.iter().any(|r| real.starts_with(r))
            || self.files.contains(&(meta.dev(), meta.ino()))
    }

    /// Whether the file at `path`, symbolic links followed, is protected. A file that cannot
    /// be resolved is not (reading it fails later anyway).
    pub fn holds_path(&self, path: &Path) -> bool {
        let Ok(real) = std::fs::canonicalize(path) else {
            return false;
        };
        std::fs::metadata(&real).is_ok_and(|m| self.holds(&real, &m))
    }

    /// Whether open `file` is protected: judged by what it is (its inode, and the path the
    /// kernel gives for it), not by the name it was opened by, which may point elsewhere
    /// since a check by name.
    pub fn holds_file(&self, file: &File) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(meta) = file.metadata() else {
            return true;
        };
        match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(real) => self.holds(&real, &meta),
            // No /proc: by identity only.
            Err(_) => self.files.contains(&(meta.dev(), meta.ino())),
        }
    }

    /// Why a job must not be made of `files` (the project plan's: relative path and path
    /// here; the scene among them), naming what needs the file; `None` when nothing here is
    /// protected.
    pub fn refusal(
        &self,
        scene: &Path,
        files: &[(String, PathBuf)],
        deps: &[Dependency],
    ) -> Option<String> {
        let path = files.iter().map(|(_, p)| p).find(|p| self.holds_path(p))?;
        Some(if path == scene {
            format!(
                "the scene {} is one of this daemon's own files, which hold its keys: meshd \
                 sends none of them; copy the project elsewhere and submit the copy",
                path.display()
            )
        } else {
            let owner = deps
                .iter()
                .find(|d| Path::new(&d.path) == path)
                .map_or_else(|| "the scene".to_string(), |d| d.owner.clone());
            format!(
                "{owner} names {}, one of this daemon's own files, which hold its keys (its \
                 data dir or meshd's config dir): meshd sends none of them; point it at \
                 another file",
                path.display()
            )
        })
    }
}

/// A file list the submitting Blender made ([`super::types::SubmitRequest::listed`]), if it
/// is one of `scene` (symbolic links resolved) by a Blender that says its version.
pub fn listed_by_submitter(found: Discovery, scene: &Path) -> Result<Discovery, String> {
    if !BlenderReq::AtLeast(0, 0).admits(&found.blender) {
        return Err(format!(
            "the file list sent with the job names no Blender version ({:?}): update the \
             meshd add-on",
            found.blender
        ));
    }
    let walked = found.scene.as_deref().map(std::fs::canonicalize);
    match walked {
        Some(Ok(walked)) if walked == scene => Ok(found),
        _ => Err(format!(
            "the file list sent with the job is not of {} (it lists {}): save the file and \
             submit again",
            scene.display(),
            found.scene.as_deref().unwrap_or("no file")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(blender: &str, scene: Option<&Path>) -> Discovery {
        Discovery {
            blender: blender.into(),
            scene: scene.map(|p| p.to_str().unwrap().to_string()),
            deps: vec![],
            errors: vec![],
            sizes: vec![],
            active: None,
        }
    }

    #[test]
    fn a_listing_counts_only_for_its_own_file_and_a_blender_version() {
        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("shot.blend");
        let other = dir.path().join("other.blend");
        std::fs::write(&shot, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let shot = std::fs::canonicalize(&shot).unwrap();
        assert!(listed_by_submitter(listing("4.3.0", Some(&shot)), &shot).is_ok());
        let e = listed_by_submitter(listing("4.3.0", Some(&other)), &shot).unwrap_err();
        assert!(e.contains("is not of") && e.contains("other.blend"), "{e}");
        let e = listed_by_submitter(listing("4.3.0", None), &shot).unwrap_err();
        assert!(e.contains("no file"), "{e}");
        let e = listed_by_submitter(listing("Blender", Some(&shot)), &shot).unwrap_err();
        assert!(e.contains("names no Blender version"), "{e}");
    }

    #[test]
    fn own_files_are_caught_by_name_link_hard_link_and_open_handle() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("config");
        std::fs::create_dir_all(data.join("cloud")).unwrap();
        std::fs::create_dir(&config).unwrap();
        std::fs::write(data.join("identity.key"), b"secret").unwrap();
        std::fs::write(data.join("cloud/id_ed25519"), b"ssh").unwrap();
        std::fs::write(config.join("cloud.env"), b"VAST_API_KEY=x").unwrap();
        let p = Protected::new(&[data.clone(), config.clone(), dir.path().join("absent")]);
        let shot = dir.path().join("shot.blend");
        std::fs::write(&shot, b"x").unwrap();
        assert!(!p.holds_path(&shot));
        assert!(!p.holds_file(&File::open(&shot).unwrap()));

        // A symlink in the project to the key, a hard link to the rented machines' key, the
        // cloud API keys by name.
        let link = dir.path().join("wood.png");
        std::os::unix::fs::symlink(data.join("identity.key"), &link).unwrap();
        let hard = dir.path().join("hard.png");
        std::fs::hard_link(data.join("cloud/id_ed25519"), &hard).unwrap();
        for f in [&link, &hard, &config.join("cloud.env")] {
            assert!(p.holds_path(f), "{f:?}");
            assert!(p.holds_file(&File::open(f).unwrap()), "{f:?}");
        }

        // Opened by an innocent name that was swapped for a link after the check by name.
        let swapped = dir.path().join("swapped.png");
        std::fs::write(&swapped, b"png").unwrap();
        assert!(!p.holds_path(&swapped));
        std::fs::remove_file(&swapped).unwrap();
        std::os::unix::fs::symlink(data.join("identity.key"), &swapped).unwrap();
        assert!(p.holds_file(&File::open(&swapped).unwrap()));

        // The refusal names what needs the file, or says it is the scene.
        let dep = Dependency {
            path: link.to_str().unwrap().into(),
            raw: "//wood.png".into(),
            owner: "Image \"Wood\"".into(),
            kind: "image".into(),
            exists: true,
        };
        let files = vec![("shot.blend".into(), shot.clone())];
        assert_eq!(p.refusal(&shot, &files, &[]), None);
        let with_link = vec![files[0].clone(), ("wood.png".into(), link.clone())];
        let e = p
            .refusal(&shot, &with_link, std::slice::from_ref(&dep))
            .unwrap();
        assert!(
            e.starts_with("Image \"Wood\" names") && e.contains("keys"),
            "{e}"
        );
        let inside = data.join("shot.blend");
        std::fs::write(&inside, b"x").unwrap();
        let e = p.refusal(&inside, &[("shot.blend".into(), inside.clone())], &[]);
        assert!(e.unwrap().starts_with("the scene"));
    }
}
