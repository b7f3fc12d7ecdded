//! The frame check run on every rendered or fetched frame: decode as any of meshd's output
//! formats, size, blankness, multilayer EXR headers. The first byte picks an image magic to
//! put in front, so the decoders get past their signatures.
#![no_main]
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const MAGICS: &[&[u8]] = &[
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\0",
    b"MM\0*",
    b"v/1\x01",
    b"BM",
    b"\x01\xda",
    b"#?RADIANCE\n",
];

fn dir() -> &'static std::path::Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let path = dir().join("frame");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(MAGICS[pick as usize % MAGICS.len()])
        .expect("write");
    f.write_all(rest).expect("write");
    drop(f);
    let size = (pick & 0x80 != 0).then_some((64, 36));
    let _ = meshd::render::verify::verify_image(&path, size, pick & 0x40 != 0);
});
