//! Blob files: each blob lives whole at `blobs/<hex id>`, with its manifest in sled and every
//! chunk indexed by hash (`ChunkId → (blob, offset, len)`) so chunks can be served to peers
//! and reused locally when a new version of a file shares them.
//!
//! A blob being fetched lives at `blobs/partial/<hex id>` until it is complete. Each chunk
//! written there is indexed at once, so this peer serves it to others while its own fetch
//! goes on, and a fetch cut short (a crash, a restart) resumes with the chunks it has: every
//! chunk is read back and checked against its hash before it is trusted.
//! Complete blob files are read-only: renderers hard-link them into their work dirs.
//! A blob nobody uses may be compacted to chunks only; see [`super::dedup`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::served::Packed;
use super::{Pin, Store, StoreError};
use crate::ids::{BlobId, ChunkId};
use crate::net::wire::{
    PROJECT_CHUNKS_BYTES, PROJECT_CHUNKS_TOTAL, PROJECT_FILES_BYTES, PROJECT_INLINE_BYTES,
    ProjectAnswer, SentChunk,
};
use crate::net::{BlobRequest, BlobResponse, BlobServer};
use crate::transfer::manifest::Manifest;
use crate::transfer::project::ProjectManifest;

/// Where a chunk's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    pub blob: BlobId,
    pub offset: u64,
    pub len: u32,
}

impl Store {
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.blob_dir.join(id.to_hex())
    }

    /// Where a blob still being fetched is assembled.
    pub fn partial_path(&self, id: &BlobId) -> PathBuf {
        self.blob_dir.join("partial").join(id.to_hex())
    }

    /// Records that chunk `c` now lies at `offset` of the partial file of `blob`, unless a
    /// complete blob already holds it.
    pub fn index_partial_chunk(
        &self,
        blob: &BlobId,
        offset: u64,
        c: &crate::transfer::manifest::ChunkRef,
    ) -> Result<(), StoreError> {
        let loc = ChunkLoc {
            blob: *blob,
            offset,
            len: c.len,
        };
        let bytes = postcard::to_stdvec(&loc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Only a chunk nobody indexed yet: an existing entry points at a file that has it.
        let _ = self
            .chunks
            .compare_and_swap(c.id.0, None as Option<&[u8]>, Some(bytes))?;
        Ok(())
    }

    /// Whether blob `id` is complete here (a whole file, or compact: see [`super::dedup`]).
    pub fn has_blob(&self, id: &BlobId) -> bool {
        self.manifests.contains_key(id.0).unwrap_or(false)
            && (self.is_whole(id) || self.is_compact(id))
    }

    /// A fresh temporary path inside the blob dir (same filesystem, so renames are atomic).
    pub fn temp_path(&self) -> PathBuf {
        self.blob_dir
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    pub fn manifest(&self, id: &BlobId) -> Option<Manifest> {
        let bytes = self.manifests.get(id.0).ok()??;
        Manifest::decode_verified(&bytes, id).ok()
    }

    /// Stores `bytes` as a blob and returns its id.
    pub fn import_bytes(&self, bytes: &[u8]) -> Result<BlobId, StoreError> {
        self.import_bytes_pinned(bytes).map(|(id, _)| id)
    }

    /// Like [`import_bytes`](Self::import_bytes); the blob stays pinned (kept by every
    /// collection, see `pins.rs`) while the [`Pin`] lives.
    pub fn import_bytes_pinned(&self, bytes: &[u8]) -> Result<(BlobId, Pin), StoreError> {
        let tmp = self.temp_path();
        std::fs::write(&tmp, bytes)?;
        self.import_owned_pinned(&tmp)
    }

    /// Copies `path` into the store and returns its id.
    pub fn import_copy(&self, path: &Path) -> Result<BlobId, StoreError> {
        self.import_copy_pinned(path).map(|(id, _)| id)
    }

    /// Like [`import_copy`](Self::import_copy), pinned while the [`Pin`] lives.
    pub fn import_copy_pinned(&self, path: &Path) -> Result<(BlobId, Pin), StoreError> {
        self.import_open_pinned(&mut File::open(path)?)
    }

    /// Copies open `file` into the store (what is stored is what `file` is, whatever its
    /// name points at by now), pinned while the [`Pin`] lives.
    pub fn import_open_pinned(&self, file: &mut File) -> Result<(BlobId, Pin), StoreError> {
        let tmp = self.temp_path();
        std::io::copy(file, &mut File::create(&tmp)?)?;
        self.import_owned_pinned(&tmp)
    }

    /// Moves `path` (which must be on the data dir's filesystem) into the store.
    pub fn import_owned(&self, path: &Path) -> Result<BlobId, StoreError> {
        self.import_owned_pinned(path).map(|(id, _)| id)
    }

    /// Like [`import_owned`](Self::import_owned), pinned while the [`Pin`] lives. The pin
    /// is taken before the blob's file appears in the store.
    pub fn import_owned_pinned(&self, path: &Path) -> Result<(BlobId, Pin), StoreError> {
        let manifest = Manifest::build(File::open(path)?)?;
        let pin = self.pin(manifest.id());
        let id = self.commit(path, &manifest)?;
        Ok((id, pin))
    }

    /// Files a complete, verified blob at `tmp` under its manifest's id.
    pub fn commit(&self, tmp: &Path, manifest: &Manifest) -> Result<BlobId, StoreError> {
        let id = manifest.id();
        let dest = self.blob_path(&id);
        if self.is_whole(&id) && self.manifests.contains_key(id.0)? {
            let _ = std::fs::remove_file(tmp);
            return Ok(id);
        }
        let f = File::open(tmp)?;
        f.sync_all()?;
        let mut perms = f.metadata()?.permissions();
        perms.set_readonly(true);
        f.set_permissions(perms)?;
        std::fs::rename(tmp, &dest)?;
        for (offset, c) in manifest.offsets() {
            let loc = ChunkLoc {
                blob: id,
                offset,
                len: c.len,
            };
            let bytes =
                postcard::to_stdvec(&loc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.chunks.insert(c.id.0, bytes)?;
        }
        self.manifests.insert(id.0, manifest.encode())?;
        self.compact.remove(id.0)?;
        Ok(id)
    }

    /// Reads one chunk from whichever local blob holds it, or its loose file, verified
    /// against its hash.
    pub fn read_chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.read_indexed(id).or_else(|| self.read_loose(id))
    }

    fn read_indexed(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let loc_bytes = self.chunks.get(id.0).ok()??;
        let loc: ChunkLoc = postcard::from_bytes(&loc_bytes).ok()?;
        let mut f = File::open(self.blob_path(&loc.blob))
            .or_else(|_| File::open(self.partial_path(&loc.blob)))
            .ok()?;
        f.seek(SeekFrom::Start(loc.offset)).ok()?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact(&mut buf).ok()?;
        if ChunkId::of(&buf) != *id {
            warn!(chunk = %id.short(), blob = %loc.blob.short(), "stored chunk is corrupt");
            return None;
        }
        Some(buf)
    }

    /// The content of a blob of at most `max` bytes, from its file or its chunks.
    pub fn read_blob(&self, id: &BlobId, max: u64) -> Option<Vec<u8>> {
        let m = self.manifest(id)?;
        if m.size > max {
            return None;
        }
        if let Ok(b) = std::fs::read(self.blob_path(id))
            && b.len() as u64 == m.size
        {
            return Some(b);
        }
        let mut out = Vec::with_capacity(m.size as usize);
        for c in &m.chunks {
            out.extend(self.read_chunk(&c.id)?);
        }
        Some(out)
    }

    /// Remembers a verified manifest before its blob is complete (an interrupted fetch resumes
    /// without asking a peer for it again).
    pub fn put_manifest(&self, id: &BlobId, m: &Manifest) -> Result<(), StoreError> {
        self.manifests.insert(id.0, m.encode())?;
        Ok(())
    }

    /// Whether the file at `path` holds chunk `c` at `offset` (read back and hashed).
    pub fn read_at_verified(
        path: &Path,
        offset: u64,
        c: &crate::transfer::manifest::ChunkRef,
    ) -> bool {
        let Ok(f) = File::open(path) else {
            return false;
        };
        let mut buf = vec![0u8; c.len as usize];
        f.read_exact_at(&mut buf, offset).is_ok() && ChunkId::of(&buf) == c.id
    }

    /// Writes `bytes` at `offset` of the file at `path`.
    pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all_at(bytes, offset)
    }
}

impl BlobServer for Store {
    fn serve(&self, req: &BlobRequest) -> BlobResponse {
        match req {
            BlobRequest::Manifest(id) => self
                .served_manifest(id)
                .map_or(BlobResponse::NotFound, BlobResponse::Manifest),
            BlobRequest::Chunk(id) => self.serve_chunk(id),
            BlobRequest::Project(id) => self.serve_project(id),
        }
    }
}

impl Store {
    /// The encoded manifest of a blob this store can serve all of (whole, or compact).
    fn served_manifest(&self, id: &BlobId) -> Option<Vec<u8>> {
        let bytes = self.manifests.get(id.0).ok()??;
        (self.is_whole(id) || self.is_compact(id)).then(|| bytes.to_vec())
    }

    /// A project manifest held whole, its content when small, the manifests of its files
    /// known here (the scene's first) up to [`PROJECT_FILES_BYTES`], and a small project's
    /// chunks ([`Store::project_chunks`]).
    fn serve_project(&self, id: &BlobId) -> BlobResponse {
        let Some(manifest) = self.served_manifest(id) else {
            return BlobResponse::NotFound;
        };
        let content = self.read_blob(id, PROJECT_INLINE_BYTES);
        let mut files = Vec::new();
        let mut chunks = Vec::new();
        if let Some(project) = content
            .as_deref()
            .and_then(|c| ProjectManifest::decode(c).ok())
        {
            let scene = project
                .files
                .iter()
                .find(|f| f.path == project.scene)
                .map(|f| f.blob);
            let blobs = project.blobs();
            let mut budget = PROJECT_FILES_BYTES;
            for blob in scene
                .iter()
                .chain(blobs.iter().filter(|b| Some(**b) != scene))
            {
                let Ok(Some(m)) = self.manifests.get(blob.0) else {
                    continue;
                };
                if m.len() > budget {
                    break;
                }
                budget -= m.len();
                files.push(m.to_vec());
            }
            if files.len() == blobs.len() {
                chunks = self.project_chunks(&project);
            }
        }
        BlobResponse::Project(ProjectAnswer {
            manifest,
            content,
            files,
            chunks,
        })
    }

    /// Every chunk of `project`'s files, each once, as a chunk request would get it: only
    /// when the project is at most [`PROJECT_CHUNKS_TOTAL`] bytes, this store can serve all
    /// of it, and the answers sum to at most [`PROJECT_CHUNKS_BYTES`]; none otherwise.
    fn project_chunks(&self, project: &ProjectManifest) -> Vec<SentChunk> {
        if project.total_size() > PROJECT_CHUNKS_TOTAL {
            return Vec::new();
        }
        let mut seen = std::collections::HashSet::new();
        let mut chunks = Vec::new();
        let mut bytes = 0;
        for blob in project.blobs() {
            let Some(m) = self.manifest(&blob) else {
                return Vec::new();
            };
            for c in m.chunks.iter().filter(|c| seen.insert(c.id)) {
                let Some(chunk) = SentChunk::of(self.serve_chunk(&c.id)) else {
                    return Vec::new();
                };
                bytes += chunk.len();
                if bytes > PROJECT_CHUNKS_BYTES {
                    return Vec::new();
                }
                chunks.push(chunk);
            }
        }
        chunks
    }

    /// A chunk's answer: compressed when that pays, remembered for the next peer asking
    /// (`served.rs`). A chunk collected since it was last served may still be answered from
    /// there; its bytes are right all the same.
    fn serve_chunk(&self, id: &ChunkId) -> BlobResponse {
        #[cfg(feature = "test-faults")]
        if let Some(answer) = faults::answer(self, id) {
            return answer;
        }
        let known = self.served.get(id);
        if let Some(Packed::Zstd(z)) = known {
            return BlobResponse::ChunkZstd(z.to_vec());
        }
        let Some(bytes) = self.read_chunk(id) else {
            return BlobResponse::NotFound;
        };
        let answer = match known {
            Some(Packed::Raw) => BlobResponse::Chunk(bytes),
            _ => BlobResponse::chunk(bytes),
        };
        self.served.remember(*id, &answer);
        answer
    }
}

/// Fault injection for the test suite; compiled only with the `test-faults` feature.
#[cfg(feature = "test-faults")]
mod faults {
    use crate::ids::ChunkId;
    use crate::net::BlobResponse;

    /// The answer a fault makes instead of the normal one, if any. A slow chunk is held
    /// back and then answered normally (`None`).
    pub fn answer(store: &super::Store, id: &ChunkId) -> Option<BlobResponse> {
        if let Some(pause) = slow_chunks() {
            std::thread::sleep(pause);
        }
        if !corrupt_chunks() {
            return None;
        }
        let mut bytes = store.read_chunk(id)?;
        if let Some(b) = bytes.first_mut() {
            *b ^= 0xff;
        }
        Some(BlobResponse::chunk(bytes))
    }

    /// `MESHD_FAULT_CORRUPT_CHUNKS=1`: every chunk this peer serves has its first byte flipped.
    pub fn corrupt_chunks() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("MESHD_FAULT_CORRUPT_CHUNKS").is_some())
    }

    /// `MESHD_FAULT_SLOW_CHUNKS_MS=N`: every chunk this peer serves is held back N ms.
    pub fn slow_chunks() -> Option<std::time::Duration> {
        static MS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        MS.get_or_init(|| {
            std::env::var("MESHD_FAULT_SLOW_CHUNKS_MS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .map(std::time::Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_serve_and_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = dir.path().join("scene.blend");
        let data: Vec<u8> = (0..700_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let id = store.import_copy(&src).unwrap();
        assert!(store.has_blob(&id));
        assert_eq!(std::fs::read(store.blob_path(&id)).unwrap(), data);

        let BlobResponse::Manifest(mbytes) = store.serve(&BlobRequest::Manifest(id)) else {
            panic!("manifest not served")
        };
        let m = Manifest::decode_verified(&mbytes, &id).unwrap();
        let mut rebuilt = Vec::new();
        for c in &m.chunks {
            let answer = store.serve(&BlobRequest::Chunk(c.id));
            let b = answer
                .into_chunk(c.len as usize)
                .unwrap()
                .expect("chunk served");
            rebuilt.extend_from_slice(&b);
        }
        assert_eq!(rebuilt, data);
        assert_eq!(
            store.serve(&BlobRequest::Manifest(BlobId::of(b"nope"))),
            BlobResponse::NotFound
        );

        // Importing the same bytes again yields the same id and leaves no temp file behind.
        assert_eq!(store.import_copy(&src).unwrap(), id);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn corrupt_chunk_on_disk_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, vec![7u8; 100_000]).unwrap();
        let id = store.import_copy(&src).unwrap();
        let m = store.manifest(&id).unwrap();
        Store::write_at(&store.blob_path(&id), 10, b"X").unwrap();
        assert_eq!(
            store.serve(&BlobRequest::Chunk(m.chunks[0].id)),
            BlobResponse::NotFound
        );
    }
}
