//! Frame thumbnails as peers hand them on. A renderer stores the thumbnail it made
//! (`render::thumb`) as a blob named by the frame's signed result (`Done::thumb`); the
//! submitter fetches it with the frame (`outputs.rs`). Replica holders do not copy it: it
//! is a convenience, and every fetch is two more requests per frame. A dashboard asks its
//! own daemon ([`Daemon::thumbnail`]), which serves
//! the blob if it holds it and fetches it otherwise: from the renderer, then likely
//! replica holders, then every connected peer.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::Daemon;
use crate::ids::{BlobId, JobId};
use crate::net::Client;
use crate::render::thumb;
use crate::store::Store;
use crate::transfer::{FetchCtx, FetchStats};

/// How long a thumbnail fetch may take before it is given up (it is never worth holding a
/// frame's delivery for).
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no thumbnail was served.
#[derive(Debug)]
pub enum ThumbError {
    /// The frame has no result with a thumbnail (not done, a multilayer EXR, or a result
    /// from a meshd that made none): the caller may make one from a written frame.
    None,
    /// The frame's thumbnail could not be had.
    Failed(String),
}

/// Makes thumbnail `blob` local, asking `providers` in order, and returns its bytes once
/// they pass [`thumb::check`]. A blob over [`thumb::MAX_BYTES`] is not fetched at all.
/// Bytes received count in `stats`.
pub(super) async fn fetch(
    net: &Client,
    store: &Store,
    blob: BlobId,
    providers: Vec<PeerId>,
    stats: Arc<FetchStats>,
) -> Result<Vec<u8>, String> {
    let ctx = FetchCtx::new(net.clone(), store.clone(), providers)
        .with_max_size(thumb::MAX_BYTES)
        .with_stats(stats);
    tokio::time::timeout(FETCH_TIMEOUT, ctx.fetch(blob))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    read(store.clone(), blob).await
}

/// The local thumbnail `blob`, checked.
async fn read(store: Store, blob: BlobId) -> Result<Vec<u8>, String> {
    tokio::task::spawn_blocking(move || {
        let bytes = store
            .read_blob(&blob, thumb::MAX_BYTES)
            .ok_or("it is not held here, or too large")?;
        thumb::check(&bytes).map_err(|e| format!("it is no thumbnail: {e}"))?;
        Ok(bytes)
    })
    .await
    .map_err(|e| e.to_string())?
}

impl Daemon {
    /// The counter of frame bytes received for `job`.
    pub(super) fn frames_moved(&mut self, job: JobId) -> Arc<FetchStats> {
        self.frames_moved.entry(job).or_default().clone()
    }

    /// `GET /ui/frame/JOB/N?thumb=1`: the renderer's thumbnail of `frame`, from the store
    /// or fetched from peers; answers `reply` from a task.
    pub(super) fn thumbnail(
        &mut self,
        sel: &str,
        frame: u32,
        reply: oneshot::Sender<Result<Vec<u8>, ThumbError>>,
    ) {
        let found = self.find_job(sel).ok().and_then(|job| {
            let state = self.any_frame_state(&job, frame)?;
            // The canonical result first: the frame the dashboard shows.
            let d = state
                .canonical()
                .into_iter()
                .chain(state.results())
                .find(|d| d.thumb.is_some())?;
            Some((job, d.thumb?, self.holders(&job, frame, d.peer)))
        });
        let Some((job, blob, providers)) = found else {
            let _ = reply.send(Err(ThumbError::None));
            return;
        };
        let stats = self.frames_moved(job);
        let (net, store) = (self.net.clone(), self.store.clone());
        tokio::spawn(async move {
            let got = if store.has_blob(&blob) {
                read(store, blob).await
            } else {
                fetch(&net, &store, blob, providers, stats).await
            };
            let _ = reply.send(got.map_err(ThumbError::Failed));
        });
    }
}
