//! Blob manifests (chunk lists) and project manifests fetched from peers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshd::ids::BlobId;
use meshd::transfer::Manifest;
use meshd::transfer::project::ProjectManifest;

fuzz_target!(|data: &[u8]| {
    // The id matches the bytes, so the decoder itself is reached.
    let _ = Manifest::decode_verified(data, &BlobId::of(data));
    if let Ok(p) = ProjectManifest::decode(data) {
        let _ = p.validate();
    }
});
