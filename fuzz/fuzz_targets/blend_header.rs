//! The `.blend` check before Blender opens a scene (plain, gzip and zstd headers).
#![no_main]
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("scene.blend");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(data).expect("write");
    drop(f);
    let _ = meshd::render::check_blend_file(&path);
});
