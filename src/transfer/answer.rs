//! Checking and keeping the answer to a project request ([`ProjectAnswer`], see
//! [`FetchCtx::fetch_project`](super::FetchCtx::fetch_project)): a project manifest, its
//! files' manifests and, for a small project, its files' chunks. Every part is checked
//! against the hash it must have before anything is kept.

use std::collections::HashMap;

use tracing::warn;

use super::manifest::Manifest;
use super::project::ProjectManifest;
use crate::ids::{BlobId, ChunkId};
use crate::net::wire::{PROJECT_CHUNKS_TOTAL, ProjectAnswer, SentChunk};
use crate::store::{Store, StoreError};

/// What [`keep_project`] kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Kept {
    /// Bytes of content: the project manifest's and its files' (0: its manifest only).
    pub bytes: u64,
    /// The files kept whole from the answer's chunks.
    pub files: Vec<BlobId>,
}

/// Checks and keeps what a [`ProjectAnswer`] for project manifest `id` holds: the blob's
/// manifest; its content, written as the blob; the files' manifests, each of which must be
/// the manifest of one of the project's files; and the files the answer's chunks make up
/// ([`check_chunks`]), unless the files total over `max_files` bytes (this peer's project
/// quota: the checkout refuses the project). An answer that does not check out is an error,
/// and nothing of it is kept but what was checked before.
pub(super) fn keep_project(
    store: &Store,
    id: BlobId,
    answer: ProjectAnswer,
    max_files: u64,
) -> Result<Kept, String> {
    let manifest = Manifest::decode_verified(&answer.manifest, &id).map_err(|e| e.to_string())?;
    let Some(content) = answer.content else {
        store
            .put_manifest(&id, &manifest)
            .map_err(|e| e.to_string())?;
        return Ok(Kept::default());
    };
    // Chunked and hashed here as the server did, the content must give the same manifest.
    if Manifest::build(&content[..]).ok().as_ref() != Some(&manifest) {
        return Err("its content does not match the manifest".into());
    }
    let project = ProjectManifest::decode(&content).ok();
    let files: Vec<(BlobId, Manifest)> = match &project {
        Some(project) => {
            let wanted = project.blobs();
            let mut files = Vec::new();
            for bytes in answer.files.iter().take(wanted.len()) {
                let blob = BlobId::of(bytes);
                if !wanted.contains(&blob) {
                    return Err("it holds the manifest of a file not in the project".into());
                }
                let m = Manifest::decode_verified(bytes, &blob).map_err(|e| e.to_string())?;
                files.push((blob, m));
            }
            files
        }
        // Not a project manifest: the checkout says so when it reads it.
        None => Vec::new(),
    };
    let chunks = check_chunks(&files, answer.chunks, max_files.min(PROJECT_CHUNKS_TOTAL))?;
    // A file of its own, not the blob's partial file: a fetch of the same blob under way
    // may be writing there.
    let tmp = store.temp_path();
    let write = std::fs::write(&tmp, &content).map_err(|e| e.to_string());
    if let Err(e) = write.and_then(|()| store.commit(&tmp, &manifest).map_err(|e| e.to_string())) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    for (blob, m) in &files {
        if store.manifest(blob).is_none() {
            store.put_manifest(blob, m).map_err(|e| e.to_string())?;
        }
    }
    let mut kept = Kept {
        bytes: content.len() as u64,
        files: Vec::new(),
    };
    for (blob, size) in keep_files(store, &files, &chunks) {
        kept.bytes += size;
        kept.files.push(blob);
    }
    Ok(kept)
}

/// The chunks a [`ProjectAnswer`] carries, by id, each checked against its hash and the
/// project's files' manifests (`files`, checked against their ids): a chunk of no file, or
/// one sent twice, is an error (each costs a decompression, so an answer may not repeat
/// one). None when the files total over `max_files` bytes, which bounds what an answer can
/// make this peer hold.
fn check_chunks(
    files: &[(BlobId, Manifest)],
    chunks: Vec<SentChunk>,
    max_files: u64,
) -> Result<HashMap<ChunkId, Vec<u8>>, String> {
    let mut got = HashMap::new();
    if chunks.is_empty() || files.iter().map(|(_, m)| m.size).sum::<u64>() > max_files {
        return Ok(got);
    }
    let lens: HashMap<ChunkId, u32> = files
        .iter()
        .flat_map(|(_, m)| m.chunks.iter().map(|c| (c.id, c.len)))
        .collect();
    if chunks.len() > lens.len() {
        return Err("it holds more chunks than the project has".into());
    }
    let longest = lens.values().copied().max().unwrap_or(0) as usize;
    for chunk in chunks {
        let bytes = chunk.into_bytes(longest).map_err(|e| e.to_string())?;
        let id = ChunkId::of(&bytes);
        if lens.get(&id) != Some(&(bytes.len() as u32)) {
            return Err("it holds a chunk of no file of the project".into());
        }
        if got.insert(id, bytes).is_some() {
            return Err("it holds a chunk twice".into());
        }
    }
    Ok(got)
}

/// Keeps as blobs the `files` whose every chunk is in `chunks`, each written in the order
/// its manifest gives; returns them and their sizes. Files held already are left as they
/// are, and a file this peer cannot write is left to be fetched as usual.
fn keep_files(
    store: &Store,
    files: &[(BlobId, Manifest)],
    chunks: &HashMap<ChunkId, Vec<u8>>,
) -> Vec<(BlobId, u64)> {
    use std::io::Write;
    let mut kept = Vec::new();
    for (blob, m) in files {
        if store.has_blob(blob) || !m.chunks.iter().all(|c| chunks.contains_key(&c.id)) {
            continue;
        }
        let tmp = store.temp_path();
        let write = || -> Result<(), StoreError> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for bytes in m.chunks.iter().filter_map(|c| chunks.get(&c.id)) {
                f.write_all(bytes)?;
            }
            f.flush()?;
            drop(f);
            store.commit(&tmp, m)?;
            Ok(())
        };
        if let Err(e) = write() {
            // This peer's own trouble (a full disk), not the answer's: the file is fetched
            // as usual, and says so if it fails again.
            let _ = std::fs::remove_file(&tmp);
            warn!("cannot keep a file of the project from its answer: {e}");
            break;
        }
        kept.push((*blob, m.size));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::PROJECT_CHUNKS_BYTES;
    use crate::net::{BlobRequest, BlobResponse, BlobServer};

    /// A store holding a project of two files of 300 kB of noise (the scene and a texture)
    /// and its manifest; returns the store, the project manifest's id and the scene's and
    /// texture's ids.
    fn project_store(dir: &std::path::Path) -> (Store, BlobId, BlobId, BlobId) {
        let noise = |seed| crate::transfer::manifest::noise(300_000, seed);
        project_store_of(dir, [noise(1), noise(2)])
    }

    /// [`project_store`] with the scene's and the texture's bytes given.
    fn project_store_of(
        dir: &std::path::Path,
        bytes: [Vec<u8>; 2],
    ) -> (Store, BlobId, BlobId, BlobId) {
        use crate::transfer::project::ProjectFile;
        let store = Store::open(&dir.join("seed")).unwrap();
        let mut ids = Vec::new();
        for (name, bytes) in ["shot.blend", "tex/wood.png"].into_iter().zip(bytes) {
            let path = dir.join(name.replace('/', "_"));
            std::fs::write(&path, &bytes).unwrap();
            let blob = store.import_copy(&path).unwrap();
            ids.push(ProjectFile {
                path: name.into(),
                blob,
                size: bytes.len() as u64,
            });
        }
        let (scene, tex) = (ids[0].blob, ids[1].blob);
        let project = ProjectManifest::new("/p".into(), "shot.blend".into(), ids).unwrap();
        let path = dir.join("project");
        std::fs::write(&path, project.encode()).unwrap();
        let id = store.import_copy(&path).unwrap();
        (store, id, scene, tex)
    }

    fn project_answer(store: &Store, id: BlobId) -> ProjectAnswer {
        match store.serve(&BlobRequest::Project(id)) {
            BlobResponse::Project(a) => a,
            other => panic!("no project answer: {other:?}"),
        }
    }

    #[test]
    fn one_project_answer_brings_the_project_and_its_files_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, id, scene, tex) = project_store(dir.path());
        let answer = project_answer(&seed, id);
        assert_eq!(
            answer.files[0],
            seed.manifest(&scene).unwrap().encode(),
            "scene first"
        );
        assert_eq!(answer.files.len(), 2);

        let here = Store::open(&dir.path().join("here")).unwrap();
        assert!(
            answer.chunks.is_empty(),
            "600 kB of noise is over the budget"
        );
        let kept = keep_project(&here, id, answer, u64::MAX).unwrap();
        assert!(here.has_blob(&id));
        assert_eq!(
            kept.bytes,
            std::fs::metadata(here.blob_path(&id)).unwrap().len()
        );
        assert_eq!(here.manifest(&scene), seed.manifest(&scene));
        assert_eq!(here.manifest(&tex), seed.manifest(&tex));
        assert!(!here.has_blob(&scene), "the files' chunks come later");

        // A blob that is not a project: its manifest and content, no files.
        let BlobResponse::Project(plain) = seed.serve(&BlobRequest::Project(scene)) else {
            panic!("a blob held whole is answered")
        };
        assert!(plain.files.is_empty());
        assert_eq!(
            seed.serve(&BlobRequest::Project(BlobId::of(b"nope"))),
            BlobResponse::NotFound
        );
    }

    #[test]
    fn a_project_answer_that_does_not_check_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, id, scene, _) = project_store(dir.path());
        let good = project_answer(&seed, id);
        let here = Store::open(&dir.path().join("here")).unwrap();
        let refuse = |a: ProjectAnswer, why: &str| {
            let e = keep_project(&here, id, a, u64::MAX).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert!(!here.has_blob(&id));
        };
        // Content changed: it no longer matches the manifest.
        let mut bent = good.clone();
        if let Some(c) = bent.content.as_mut() {
            c[5] ^= 1;
        }
        refuse(bent, "does not match");
        // The manifest of another blob.
        let other = ProjectAnswer {
            manifest: seed.manifest(&scene).unwrap().encode(),
            ..good.clone()
        };
        refuse(other, "hash");
        // A manifest of no file of the project, passed off as one.
        let mut foreign = good.clone();
        foreign.files[1] = Manifest::build(&b"something else"[..]).unwrap().encode();
        refuse(foreign, "not in the project");
        assert!(here.manifest(&scene).is_none(), "nothing of it was kept");
        // The good one still goes in.
        keep_project(&here, id, good, u64::MAX).unwrap();
        assert!(here.has_blob(&id));
    }

    /// A chunk as a chunk request would get it.
    fn sent(bytes: Vec<u8>) -> SentChunk {
        SentChunk::of(BlobResponse::chunk(bytes)).unwrap()
    }

    /// A `.blend`-like file: 1 MB that compresses about eightfold, as Blender's are.
    fn blend_like(n: usize, seed: u64) -> Vec<u8> {
        let noise = crate::transfer::manifest::noise(n / 8, seed);
        (0..n)
            .map(|i| if i % 8 == 0 { noise[i / 8] } else { 0 })
            .collect()
    }

    #[test]
    fn a_small_project_comes_whole_in_one_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, id, scene, tex) =
            project_store_of(dir.path(), [blend_like(1_000_000, 1), b"tiny png".to_vec()]);
        let answer = project_answer(&seed, id);
        let scene_chunks = seed.manifest(&scene).unwrap().chunks.len();
        assert_eq!(answer.chunks.len(), scene_chunks + 1, "every chunk, once");
        let sent: usize = answer.chunks.iter().map(SentChunk::len).sum();
        assert!(sent <= PROJECT_CHUNKS_BYTES, "{sent}");

        let here = Store::open(&dir.path().join("here")).unwrap();
        let kept = keep_project(&here, id, answer, u64::MAX).unwrap();
        let project_len = std::fs::metadata(here.blob_path(&id)).unwrap().len();
        assert_eq!(kept.bytes, project_len + 1_000_000 + 8);
        assert_eq!(kept.files.len(), 2);
        for blob in [scene, tex] {
            assert!(kept.files.contains(&blob));
            assert_eq!(
                std::fs::read(here.blob_path(&blob)).unwrap(),
                std::fs::read(seed.blob_path(&blob)).unwrap()
            );
        }
        // Held already: left as it is, not written again.
        let again = keep_project(&here, id, project_answer(&seed, id), u64::MAX).unwrap();
        assert!(again.files.is_empty());
    }

    #[test]
    fn a_projects_chunks_come_only_when_small_and_all_of_them_check_out() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, id, scene, tex) = project_store_of(
            dir.path(),
            [blend_like(1_000_000, 1), blend_like(200_000, 2)],
        );
        let good = project_answer(&seed, id);
        assert!(!good.chunks.is_empty());
        let here = Store::open(&dir.path().join("here")).unwrap();
        let refuse = |a: ProjectAnswer, why: &str| {
            let e = keep_project(&here, id, a, u64::MAX).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert!(!here.has_blob(&id) && !here.has_blob(&scene) && !here.has_blob(&tex));
        };
        // A chunk of no file of the project.
        let mut foreign = good.clone();
        foreign.chunks[0] = sent(blend_like(100_000, 9));
        refuse(foreign, "no file of the project");
        // A chunk twice (each costs a decompression), or more chunks than the project has.
        let mut twice = good.clone();
        twice.chunks[1] = twice.chunks[0].clone();
        refuse(twice, "twice");
        let mut more = good.clone();
        more.chunks.push(more.chunks[0].clone());
        refuse(more, "more chunks than the project has");
        // A chunk bent on the way.
        let mut bent = good.clone();
        let (SentChunk::Zstd(z) | SentChunk::Raw(z)) = &mut bent.chunks[0];
        let last = z.len() - 1;
        z[last] ^= 1;
        assert!(keep_project(&here, id, bent, u64::MAX).is_err());
        assert!(!here.has_blob(&scene));
        // A missing chunk: the files it would complete are fetched as usual.
        let mut short = good.clone();
        short.chunks.truncate(1);
        let kept = keep_project(&here, id, short, u64::MAX).unwrap();
        assert!(here.has_blob(&id));
        assert!(kept.files.len() < 2);
        // Over this peer's project quota: nothing kept but the project manifest (the
        // checkout then refuses the project).
        let small = Store::open(&dir.path().join("small")).unwrap();
        let kept = keep_project(&small, id, good.clone(), 1_000_000).unwrap();
        assert!(kept.files.is_empty() && !small.has_blob(&scene) && !small.has_blob(&tex));
        assert!(small.has_blob(&id));

        // A project over PROJECT_CHUNKS_TOTAL: the server sends none, and the requester
        // keeps none it is sent.
        let dir = tempfile::tempdir().unwrap();
        let big = PROJECT_CHUNKS_TOTAL as usize;
        let (seed, id, scene, _) =
            project_store_of(dir.path(), [blend_like(big, 3), b"tiny".to_vec()]);
        let mut answer = project_answer(&seed, id);
        assert!(answer.chunks.is_empty(), "over the total");
        let m = seed.manifest(&scene).unwrap();
        answer.chunks = m
            .chunks
            .iter()
            .map(|c| sent(seed.read_chunk(&c.id).unwrap()))
            .collect();
        let here = Store::open(&dir.path().join("here")).unwrap();
        let kept = keep_project(&here, id, answer, u64::MAX).unwrap();
        assert!(kept.files.is_empty() && !here.has_blob(&scene));

        // Noise does not shrink: 600 kB of it is over PROJECT_CHUNKS_BYTES as sent.
        let (seed, id, _, _) = project_store(&dir.path().join("noise"));
        assert!(project_answer(&seed, id).chunks.is_empty());
    }
}
