//! A sync answer page, decoded and then checked the way the sync task checks it: every job's
//! signature, every entry's signature against the peer it names.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use meshd::net::SyncResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = postcard::from_bytes::<SyncResponse>(data) {
        let (_valid, _forged) =
            meshd::ledger::sign::verify_page(resp.updates, &resp.jobs, HashMap::new());
    }
});
