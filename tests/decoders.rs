//! Every decoder of peer or file input, fed arbitrary bytes: it answers with an error, never
//! a panic, a hang or an allocation the input did not pay for. The proptest side of the
//! fuzzing the issue asks for (cargo-fuzz needs a nightly toolchain this project does not
//! have); each case is also a valid encoding with bytes flipped, to reach past the first
//! field.

use std::io::Write;

use meshd::ids::BlobId;
use meshd::net::{BlobRequest, BlobResponse, GossipMsg, SyncRequest, SyncResponse, Ticket};
use meshd::transfer::Manifest;
use meshd::transfer::project::ProjectManifest;
use proptest::prelude::*;

/// `valid` with the bytes at `flips` (positions modulo its length) xor-ed.
fn mutate(valid: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut v = valid.to_vec();
    if v.is_empty() {
        return v;
    }
    for (i, x) in flips {
        let n = v.len();
        v[i % n] ^= x | 1;
    }
    v
}

fn valid_manifest() -> Manifest {
    Manifest::build(&b"some file contents that get chunked"[..]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn gossip(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = GossipMsg::open(&bytes);
        let _ = GossipMsg::decode_body(&bytes);
    }

    #[test]
    fn request_response_bodies(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = postcard::from_bytes::<SyncRequest>(&bytes);
        let _ = postcard::from_bytes::<SyncResponse>(&bytes);
        let _ = postcard::from_bytes::<BlobRequest>(&bytes);
        let _ = postcard::from_bytes::<BlobResponse>(&bytes);
    }

    #[test]
    fn tickets(s in ".{0,600}", flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let _ = Ticket::decode(&s);
        let key = meshd::net::MeshKey::generate();
        let valid = Ticket::new(key, &key.mesh_id(), &["/ip4/127.0.0.1/tcp/4747".parse().unwrap()])
            .encode();
        prop_assert!(Ticket::decode(&valid).is_ok());
        let bent: String = mutate(valid.as_bytes(), &flips)
            .into_iter()
            .map(|b| (b % 128) as char)
            .collect();
        let _ = Ticket::decode(&bent);
    }

    #[test]
    fn manifests(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                 flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        // The id matches the bytes, so decoding itself is exercised.
        let _ = Manifest::decode_verified(&bytes, &BlobId::of(&bytes));
        let bent = mutate(&valid_manifest().encode(), &flips);
        let _ = Manifest::decode_verified(&bent, &BlobId::of(&bent));
        if let Ok(p) = ProjectManifest::decode(&bytes) {
            let _ = p.validate();
        }
    }
}

proptest! {
    // Files: slower (each case writes one), fewer cases.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn blend_headers_and_images(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
        let _ = meshd::render::check_blend_file(&path);
        let _ = meshd::render::verify::verify_image(&path, None, false);
        // With an image's magic in front, the decoders get further.
        for magic in [&b"\x89PNG\r\n\x1a\n"[..], b"\xff\xd8\xff", b"II*\0", b"v/1\x01"] {
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(magic).unwrap();
            f.write_all(&bytes).unwrap();
            drop(f);
            let _ = meshd::render::verify::verify_image(&path, Some((64, 36)), false);
        }
    }
}
