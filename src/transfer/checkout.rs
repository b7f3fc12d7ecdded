//! A renderer's copy of a project: fetch the project manifest, then every file's blob (several
//! at once, each from every peer that has it), then lay the files out under a work dir exactly
//! as they lay under the project root on the submitting machine.
//!
//! Files are hard links to the (read-only) blob files, or copies where a link cannot be made;
//! the user's own files are never touched.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use super::fetch::{FetchCtx, FetchError};
use super::project::{MAX_PROJECT_MANIFEST_BYTES, ProjectManifest};
use crate::ids::BlobId;

/// Files fetched at once (each fetches [`super::fetch`]'s chunks in parallel too).
const PARALLEL_FILES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Manifest(String),
    #[error("cannot lay out {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A project laid out on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The `.blend` to open.
    pub scene: PathBuf,
    /// Where the project root is here.
    pub root_here: PathBuf,
    pub manifest: ProjectManifest,
}

/// Reads a project manifest from a local blob.
pub fn read_manifest(path: &Path) -> Result<ProjectManifest, CheckoutError> {
    let len = std::fs::metadata(path)
        .map_err(|source| CheckoutError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > MAX_PROJECT_MANIFEST_BYTES {
        return Err(CheckoutError::Manifest(
            "project manifest is too large".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|source| CheckoutError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ProjectManifest::decode(&bytes).map_err(|e| CheckoutError::Manifest(e.to_string()))
}

/// Fetches project `id` and lays it out under `dir`.
pub async fn checkout(
    ctx: &FetchCtx,
    id: BlobId,
    dir: &Path,
    max_bytes: u64,
) -> Result<Checkout, CheckoutError> {
    let manifest_path = ctx.fetch_project(id, max_bytes).await?;
    ctx.store.touch_blob(&id);
    let manifest = read_manifest(&manifest_path)?;
    let bytes = manifest.total_size();
    if bytes > max_bytes {
        return Err(CheckoutError::Manifest(format!(
            "the project is {bytes} bytes, over this peer's --quota-project-bytes {max_bytes}"
        )));
    }
    let mut fetches = futures::stream::iter(manifest.blobs())
        .map(|blob| async move { ctx.fetch(blob).await.map(|_| ()) })
        .buffer_unordered(PARALLEL_FILES);
    while let Some(r) = fetches.next().await {
        r?;
    }
    let root_here = dir.join("project");
    let store = ctx.store.clone();
    let m = manifest.clone();
    let root = root_here.clone();
    tokio::task::spawn_blocking(move || lay_out(&store, &m, &root))
        .await
        .map_err(|e| CheckoutError::Manifest(format!("layout task failed: {e}")))??;
    Ok(Checkout {
        scene: root_here.join(&manifest.scene),
        root_here,
        manifest,
    })
}

fn lay_out(
    store: &crate::store::Store,
    manifest: &ProjectManifest,
    root: &Path,
) -> Result<(), CheckoutError> {
    use std::os::unix::fs::MetadataExt;
    for f in &manifest.files {
        let dest = root.join(&f.path);
        let src = store.blob_path(&f.blob);
        store.touch_blob(&f.blob);
        let io = |source| CheckoutError::Io {
            path: dest.clone(),
            source,
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match (std::fs::symlink_metadata(&dest), std::fs::metadata(&src)) {
            (Ok(d), Ok(s)) if d.ino() == s.ino() && d.dev() == s.dev() => continue,
            (Ok(_), _) => std::fs::remove_file(&dest).map_err(io)?,
            _ => {}
        }
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(io)?;
        }
    }
    #[cfg(feature = "test-faults")]
    if let Some(victim) = std::env::var_os("MESHD_FAULT_DELETE_DEP") {
        // Test builds only: a dependency vanishes from this renderer's copy.
        let _ = std::fs::remove_file(root.join(victim));
    }
    Ok(())
}
