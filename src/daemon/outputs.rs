//! The submitter's side of results: every frame's output is fetched and written to the
//! job's output directory as `frame_####.<ext>`, atomically (temp file + rename), once.
//!
//! Any result that counts will do, least first: the canonical one, then the others. Each is
//! asked of its renderer, then of the peers most likely to hold a replica (see
//! `replicas.rs`), then of every other connected peer. A frame that cannot be fetched backs
//! off (1 s doubling to 16 s) without holding up the others. When every result of a frame
//! stays unfetchable for a lease while its renderer is not live (or for many attempts
//! whatever it says), the submitter declares those results lost and the frame is rendered
//! again ("Lost results" in docs/protocol.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::{debug, warn};

use super::{Daemon, TaskDone};
use crate::ids::{BlobId, JobId};
use crate::ledger::{FrameState, FrameUpdate, Lost};
use crate::net::GossipMsg;

/// Output files being fetched/written at once.
const MAX_WRITING: usize = 8;
/// Failed attempts after which a result is declared lost even if its renderer looks live.
const LOST_AFTER_ATTEMPTS: u32 = 12;

/// Failed attempts to write one frame.
#[derive(Debug)]
pub(super) struct Retry {
    attempts: u32,
    since: Instant,
    next: Instant,
}

/// `frame_0001.png`: Blender's `####` padding (at least four digits).
pub fn frame_file_name(frame: u32, ext: &str) -> String {
    format!("frame_{frame:04}.{ext}")
}

/// Copies `src` to `out_dir/name` so that the name only ever shows a whole file: through a
/// `.part` file with an unpredictable name, created exclusively and never through a symlink
/// (another user who can write the output dir cannot redirect the copy), synced, renamed.
pub(super) fn write_atomically(src: &Path, out_dir: &Path, name: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(out_dir)?;
    let part = out_dir.join(format!(".{name}.{:016x}.part", rand::random::<u64>()));
    let copy = || -> std::io::Result<()> {
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&part)?;
        std::io::copy(&mut std::fs::File::open(src)?, &mut to)?;
        to.sync_all()?;
        std::fs::rename(&part, out_dir.join(name))
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })
}

/// One frame to write: its results' outputs, each with the peers to ask.
struct Todo {
    job: JobId,
    frame: u32,
    candidates: Vec<(BlobId, Vec<PeerId>)>,
    out_dir: PathBuf,
    name: String,
}

impl Daemon {
    /// Peers to ask for a result of `frame`: its renderer, then likely replica holders, then
    /// every other connected peer.
    fn holders(&self, job: &JobId, frame: u32, renderer: PeerId) -> Vec<PeerId> {
        let connected = self.peers.connected();
        let ranked = crate::ledger::replica_holders(job, frame, &connected, connected.len());
        self.providers(std::iter::once(renderer).chain(ranked))
    }

    /// Queues `frame` of `job` for writing if this daemon writes the job and has not
    /// written the frame yet. Cheap: called for every frame that gains a result.
    pub(super) fn queue_write(&mut self, job: JobId, frame: u32) {
        if self.local_jobs.contains_key(&job)
            && !self
                .written
                .get(&job)
                .is_some_and(|w| w.contains_key(&frame))
        {
            self.write_ready.insert((job, frame));
        }
    }

    /// Queues every frame of `job` with a result not written yet (once, when the job
    /// becomes one written here: at start, submit, or `meshd fetch`).
    pub(super) fn queue_unwritten(&mut self, job: JobId) {
        let Some(entry) = self.ledger.job(&job) else {
            return;
        };
        let frames: Vec<u32> = entry
            .frames
            .iter()
            .filter(|(_, s)| s.canonical().is_some())
            .map(|(f, _)| *f)
            .collect();
        for frame in frames {
            self.queue_write(job, frame);
        }
    }

    /// Frames whose write failed and whose back-off is over go back in the queue. Work
    /// proportional to the failing frames (called every tick).
    pub(super) fn requeue_due_writes(&mut self) {
        let now = Instant::now();
        for (key, r) in &self.write_retry {
            if r.next <= now && !self.writing.contains(key) {
                self.write_ready.insert(*key);
            }
        }
    }

    /// Starts writes of queued frames, least first, at most [`MAX_WRITING`] at once. Called
    /// after every daemon event; costs nothing when the queue is empty or the slots full.
    pub(super) fn write_outputs(&mut self) {
        if self.write_ready.is_empty() || self.writing.len() >= MAX_WRITING {
            return;
        }
        let now = Instant::now();
        let mut todo: Vec<Todo> = Vec::new();
        while self.writing.len() + todo.len() < MAX_WRITING {
            let Some((job, frame)) = self.write_ready.pop_first() else {
                break;
            };
            let (Some(local), Some(entry)) = (self.local_jobs.get(&job), self.ledger.job(&job))
            else {
                continue; // no longer written here, or archived
            };
            let Some(state) = entry.frames.get(&frame).filter(|s| s.canonical().is_some()) else {
                continue; // its results were declared lost: a new one queues it again
            };
            if self
                .written
                .get(&job)
                .is_some_and(|w| w.contains_key(&frame))
                || self.writing.contains(&(job, frame))
                || self
                    .write_retry
                    .get(&(job, frame))
                    .is_some_and(|r| r.next > now)
            {
                continue;
            }
            todo.push(Todo {
                job,
                frame,
                candidates: state
                    .results()
                    .map(|d| (d.output, self.holders(&job, frame, d.peer)))
                    .collect(),
                out_dir: local.out_dir.clone(),
                name: frame_file_name(frame, entry.spec.settings.format.extension()),
            });
        }
        for t in todo {
            self.writing.insert((t.job, t.frame));
            let net = self.net.clone();
            let store = self.store.clone();
            let (job, frame) = (t.job, t.frame);
            let task = self.tasks.spawn(async move {
                let mut errors = Vec::new();
                let mut result = Err(String::new());
                for (blob, providers) in t.candidates {
                    match crate::transfer::fetch(&net, &store, blob, &providers).await {
                        Ok(src) => {
                            let (out_dir, name) = (t.out_dir.clone(), t.name.clone());
                            result = tokio::task::spawn_blocking(move || {
                                write_atomically(&src, &out_dir, &name)
                            })
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                            .map(|()| blob);
                            break;
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                if result.as_ref().is_err_and(|e| e.is_empty()) {
                    result = Err(errors.join("; "));
                }
                TaskDone::OutputWritten {
                    job: t.job,
                    frame: t.frame,
                    result,
                }
            });
            self.owners
                .insert(task.id(), super::TaskOwner::Output(job, frame));
        }
    }

    pub(super) async fn on_output_written(
        &mut self,
        job: JobId,
        frame: u32,
        result: Result<BlobId, String>,
    ) {
        self.writing.remove(&(job, frame));
        let blob = match result {
            Ok(blob) => blob,
            Err(e) => return self.output_failed(job, frame, e).await,
        };
        self.write_retry.remove(&(job, frame));
        debug!(job = %job.short(), frame, "frame written");
        if let Err(e) = self.store.mark_written(&job, frame, &blob) {
            warn!("cannot record written frame: {e}");
        }
        self.written.entry(job).or_default().insert(frame, blob);
        self.archive_if_delivered(&job).await;
    }

    /// Makes this daemon write job `id`'s frames into `out_dir` (created, and remembered).
    pub(super) fn set_out_dir(&mut self, id: JobId, out_dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| format!("cannot create output dir {}: {e}", out_dir.display()))?;
        let local = crate::store::LocalJob {
            out_dir: out_dir.to_path_buf(),
        };
        self.store
            .put_local_job(&id, &local)
            .map_err(|e| e.to_string())?;
        self.local_jobs.insert(id, local);
        self.queue_unwritten(id);
        Ok(())
    }

    /// `meshd fetch`: from now on write job `sel`'s frames into `out_dir` (here, whether or
    /// not this peer submitted it). Frames already written elsewhere are written again.
    pub(super) fn deliver_to(
        &mut self,
        sel: &str,
        out_dir: PathBuf,
    ) -> Result<crate::api::types::SubmitResponse, String> {
        let id = self.find_job(sel)?;
        self.unarchive(&id)?;
        let (name, frames_total) = self
            .ledger
            .job(&id)
            .map(|e| (e.spec.name.clone(), e.spec.frames.len()))
            .unwrap_or_default();
        let same = self
            .local_jobs
            .get(&id)
            .is_some_and(|l| l.out_dir == out_dir);
        if !same {
            self.store.clear_written(&id).map_err(|e| e.to_string())?;
            self.written.remove(&id);
            self.set_out_dir(id, &out_dir)?;
        } else {
            self.queue_unwritten(id); // states brought back from the archive
        }
        Ok(crate::api::types::SubmitResponse::job(
            id.to_hex(),
            name,
            frames_total,
            out_dir,
        ))
    }

    async fn output_failed(&mut self, job: JobId, frame: u32, e: String) {
        let now = Instant::now();
        let r = self.write_retry.entry((job, frame)).or_insert(Retry {
            attempts: 0,
            since: now,
            next: now,
        });
        r.attempts += 1;
        r.next = now + Duration::from_secs(1 << (r.attempts - 1).min(4));
        let (attempts, since) = (r.attempts, r.since);
        warn!(job = %job.short(), frame, attempts, "fetching the frame failed: {e}; will retry");
        // Only the submitter declares results lost (others fetching with `meshd fetch` wait).
        let Some(entry) = self
            .ledger
            .job(&job)
            .filter(|e| e.spec.submitter == self.me)
        else {
            return;
        };
        let Some(state) = entry.frames.get(&frame) else {
            return;
        };
        let lease_over = now.saturating_duration_since(since) >= self.cfg.lease;
        let live = self.view().live_peers();
        let all_gone = state.results().all(|d| !live.contains(&d.peer));
        if attempts < 3 || !(lease_over && all_gone || attempts >= LOST_AFTER_ATTEMPTS) {
            return;
        }
        let lost: Vec<Lost> = state.results().map(Lost::of).collect();
        warn!(
            job = %job.short(),
            frame,
            results = lost.len(),
            "no peer can serve this frame any more; it will be rendered again"
        );
        let updates: Vec<FrameUpdate> = lost
            .into_iter()
            .map(|l| FrameUpdate {
                job,
                frame,
                state: FrameState::from_lost(l),
            })
            .collect();
        self.write_retry.remove(&(job, frame));
        let changed = self.merge_updates(&updates);
        self.after_ledger_change(&changed);
        self.publish(GossipMsg::Frames(updates)).await;
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

    #[test]
    fn a_frame_is_never_written_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // Another user who can write the output dir plants the names a copy might use.
        std::os::unix::fs::symlink(&victim, out.join(".frame_0001.png.part")).unwrap();
        let src = dir.path().join("src.png");
        std::fs::write(&src, b"frame bytes").unwrap();
        write_atomically(&src, &out, "frame_0001.png").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(
            std::fs::read(out.join("frame_0001.png")).unwrap(),
            b"frame bytes"
        );
        // Only the frame and the planted link: no part file left behind.
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![".frame_0001.png.part", "frame_0001.png"]);
        // A frame already there is replaced whole (rename), not written into.
        std::os::unix::fs::symlink(&victim, out.join("frame_0002.png")).unwrap();
        write_atomically(&src, &out, "frame_0002.png").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!out.join("frame_0002.png").is_symlink());
    }
}
