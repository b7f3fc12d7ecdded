//! The submitter's side of results: every frame's canonical output is fetched (from the peer
//! that rendered it, or any other that has it) and written to the job's output directory as
//! `frame_####.<ext>`, atomically (temp file + rename). A frame is written once per canonical
//! result, so duplicates never reach the output.

use std::path::{Path, PathBuf};

use super::{Daemon, TaskDone};
use crate::ids::BlobId;

/// Output files being fetched/written at once.
const MAX_WRITING: usize = 8;

/// `frame_0001.png`: Blender's `####` padding (at least four digits).
pub fn frame_file_name(frame: u32, ext: &str) -> String {
    format!("frame_{frame:04}.{ext}")
}

fn write_atomically(src: &Path, out_dir: &Path, name: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let part = out_dir.join(format!(".{name}.part"));
    std::fs::copy(src, &part)?;
    std::fs::File::open(&part)?.sync_all()?;
    std::fs::rename(&part, out_dir.join(name))
}

impl Daemon {
    pub(super) fn write_outputs(&mut self) {
        let mut todo: Vec<(
            crate::ids::JobId,
            u32,
            BlobId,
            Vec<libp2p::PeerId>,
            PathBuf,
            String,
        )> = Vec::new();
        for (job, local) in &self.local_jobs {
            let Some(entry) = self.ledger.job(job) else {
                continue;
            };
            let written = self.written.get(job);
            let ext = entry.spec.settings.format.extension();
            for (frame, state) in &entry.frames {
                if self.writing.len() + todo.len() >= MAX_WRITING {
                    break;
                }
                let Some(done) = state.canonical() else {
                    continue;
                };
                let backing_off = self
                    .write_retry
                    .get(&(*job, *frame))
                    .is_some_and(|t| *t > std::time::Instant::now());
                if written.and_then(|w| w.get(frame)) == Some(&done.output)
                    || self.writing.contains(&(*job, *frame))
                    || backing_off
                {
                    continue;
                }
                let providers = self
                    .providers(std::iter::once(done.peer).chain(state.done.iter().map(|d| d.peer)));
                todo.push((
                    *job,
                    *frame,
                    done.output,
                    providers,
                    local.out_dir.clone(),
                    frame_file_name(*frame, ext),
                ));
            }
        }
        for (job, frame, blob, providers, out_dir, name) in todo {
            self.writing.insert((job, frame));
            let net = self.net.clone();
            let store = self.store.clone();
            self.tasks.spawn(async move {
                let result = async {
                    let src = crate::transfer::fetch(&net, &store, blob, &providers)
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::task::spawn_blocking(move || write_atomically(&src, &out_dir, &name))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                }
                .await;
                TaskDone::OutputWritten {
                    job,
                    frame,
                    blob,
                    result,
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_blender_padding() {
        assert_eq!(frame_file_name(1, "png"), "frame_0001.png");
        assert_eq!(frame_file_name(250, "exr"), "frame_0250.exr");
        assert_eq!(frame_file_name(12345, "png"), "frame_12345.png");
    }
}
