//! Fetching a blob from peers: manifest first (verified against the blob id), then chunks in
//! parallel from several providers, each verified against its hash before it is written.
//! Chunks already held locally (from another blob) are copied, not fetched.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use libp2p::PeerId;
use tracing::{debug, warn};

use super::manifest::{ChunkRef, Manifest};
use crate::ids::{BlobId, ChunkId};
use crate::net::{BlobRequest, BlobResponse, Client};
use crate::store::{Store, StoreError};

/// Chunk requests in flight at once for one blob.
const PARALLEL_CHUNKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no peer could provide blob {0}")]
    NoProvider(String),
    #[error("chunk {chunk} of blob {blob} could not be fetched from any peer")]
    Chunk { blob: String, chunk: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
}

/// Makes blob `id` local, asking `providers` in order. Returns the local path.
pub async fn fetch(
    client: &Client,
    store: &Store,
    id: BlobId,
    providers: &[PeerId],
) -> Result<PathBuf, FetchError> {
    if store.has_blob(&id) {
        return Ok(store.blob_path(&id));
    }
    let mut manifest = None;
    for p in providers {
        match client.blob(*p, BlobRequest::Manifest(id)).await {
            Ok(BlobResponse::Manifest(bytes)) => match Manifest::decode_verified(&bytes, &id) {
                Ok(m) => {
                    manifest = Some(m);
                    break;
                }
                Err(e) => warn!(peer = %p, "bad manifest for {}: {e}", id.short()),
            },
            Ok(_) => debug!(peer = %p, "peer does not have blob {}", id.short()),
            Err(e) => debug!("{e}"),
        }
    }
    let manifest = manifest.ok_or_else(|| FetchError::NoProvider(id.short()))?;

    let tmp = store.temp_path();
    let f = std::fs::File::create(&tmp)?;
    f.set_len(manifest.size)?;
    drop(f);

    let result = fill(client, store, &manifest, &tmp, providers, id).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    store.commit(&tmp, &manifest)?;
    Ok(store.blob_path(&id))
}

async fn fill(
    client: &Client,
    store: &Store,
    manifest: &Manifest,
    tmp: &std::path::Path,
    providers: &[PeerId],
    id: BlobId,
) -> Result<(), FetchError> {
    let mut remote: Vec<(u64, ChunkRef)> = Vec::new();
    for (offset, c) in manifest.offsets() {
        match store.read_chunk(&c.id) {
            Some(bytes) => Store::write_at(tmp, offset, &bytes)?,
            None => remote.push((offset, c.clone())),
        }
    }
    if remote.is_empty() {
        return Ok(());
    }
    let providers: Arc<[PeerId]> = providers.into();
    let mut results = futures::stream::iter(remote.into_iter().enumerate())
        .map(|(i, (offset, c))| {
            let client = client.clone();
            let providers = providers.clone();
            async move {
                fetch_chunk(client, providers, i, c, id)
                    .await
                    .map(|b| (offset, b))
            }
        })
        .buffer_unordered(PARALLEL_CHUNKS);
    while let Some(r) = results.next().await {
        let (offset, bytes) = r?;
        Store::write_at(tmp, offset, &bytes)?;
    }
    Ok(())
}

/// Fetches one chunk, starting with provider `i % n` so chunks spread over providers, then
/// falling back to the others. Every answer is checked against the chunk's hash.
async fn fetch_chunk(
    client: Client,
    providers: Arc<[PeerId]>,
    i: usize,
    c: ChunkRef,
    blob: BlobId,
) -> Result<Vec<u8>, FetchError> {
    let n = providers.len();
    for k in 0..n {
        let p = providers[(i + k) % n];
        match client.blob(p, BlobRequest::Chunk(c.id)).await {
            Ok(BlobResponse::Chunk(bytes))
                if bytes.len() == c.len as usize && ChunkId::of(&bytes) == c.id =>
            {
                return Ok(bytes);
            }
            Ok(BlobResponse::Chunk(_)) => {
                warn!(peer = %p, chunk = %c.id.short(), "peer sent a corrupt chunk");
            }
            Ok(_) => {}
            Err(e) => debug!("{e}"),
        }
    }
    Err(FetchError::Chunk {
        blob: blob.short(),
        chunk: c.id.short(),
    })
}
