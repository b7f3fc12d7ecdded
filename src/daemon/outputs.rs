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
use crate::ledger::{Done, FrameState, FrameUpdate, sign};
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

/// Whether `name` is a part file [`write_atomically`] makes for a frame:
/// `.frame_####.<ext>.<16 hex digits>.part`.
fn is_frame_part(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(".frame_")
        .and_then(|r| r.strip_suffix(".part"))
    else {
        return false;
    };
    rest.rsplit_once('.').is_some_and(|(frame, tag)| {
        frame.contains('.') && tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Removes the part files a daemon killed mid-copy left in `out_dir` (called at start,
/// before this daemon writes anything there). Only regular files of this user named as
/// [`write_atomically`] names them are touched (in an output dir shared with other users,
/// theirs may be copies under way). What cannot be read or removed is logged and left.
/// Returns how many were removed.
pub(super) fn remove_stale_parts(out_dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(out_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            warn!(dir = %out_dir.display(), "cannot look for unfinished frame copies: {e}");
            return 0;
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_frame_part) {
            continue;
        }
        // Not followed: a link is no part file of ours.
        let ours = entry
            .metadata()
            .is_ok_and(|m| m.file_type().is_file() && m.uid() == me);
        if !ours {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                warn!(file = %entry.path().display(), "cannot remove an unfinished frame copy: {e}")
            }
        }
    }
    removed
}

/// One frame to write: its results' outputs, each with the peers to ask.
struct Todo {
    job: JobId,
    frame: u32,
    candidates: Vec<(BlobId, Vec<PeerId>)>,
    /// The canonical result's thumbnail and the peers to ask, fetched alongside (best
    /// effort: the dashboard shows it).
    thumb: Option<(BlobId, Vec<PeerId>)>,
    format: crate::render::settings::OutputFormat,
    size: Option<(u32, u32)>,
    out_dir: PathBuf,
    name: String,
}

/// Whether the file at `path` is an image of `format` that decodes, at `size` when the job
/// knows it: a frame is checked before it is written or kept as a replica, whatever its
/// renderer says (its bytes match the hash it announced, which proves nothing about them).
pub(super) fn check_output(
    path: &Path,
    format: crate::render::settings::OutputFormat,
    size: Option<(u32, u32)>,
) -> Result<(), String> {
    use crate::render::settings::OutputFormat as F;
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let head = &head[..n];
    let ok = match format {
        F::Png => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        F::Jpeg => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        F::Tiff => head.starts_with(b"II*\0") || head.starts_with(b"MM\0*"),
        F::OpenExr | F::OpenExrMultilayer => head.starts_with(&[0x76, 0x2F, 0x31, 0x01]),
    };
    if !ok {
        return Err(format!("it is not a {} file", format.blender_name()));
    }
    crate::render::verify::verify_image(path, size, true).map(|_| ())
}

/// Why a fetched result was not written.
enum Bad {
    /// Its bytes are no image of the job's format.
    Unusable(String),
    /// Writing the output failed.
    Io(String),
}

impl Daemon {
    /// Results of `frame` whose bytes are no image of the job's format are declared lost at
    /// once by the submitter (proven unusable, not merely unreachable): the frame is
    /// rendered again, and after [`crate::ledger::frame::MAX_LOST`] such results it fails
    /// with the reason, instead of a wrong frame being written.
    /// Whether any was declared.
    async fn declare_unusable(
        &mut self,
        job: JobId,
        frame: u32,
        unusable: &[(BlobId, String)],
    ) -> bool {
        if unusable.is_empty() {
            return false;
        }
        let Some(entry) = self
            .ledger
            .job(&job)
            .filter(|e| e.spec.submitter == self.me)
        else {
            return false;
        };
        let Some(state) = entry.frames.get(&frame) else {
            return false;
        };
        let bad: Vec<Done> = state
            .results()
            .filter_map(|d| {
                let (_, why) = unusable.iter().find(|(b, _)| *b == d.output)?;
                warn!(
                    job = %job.short(),
                    frame,
                    peer = %d.peer,
                    "the result is not written: {why}; the frame will be rendered again"
                );
                Some(d.clone())
            })
            .collect();
        if bad.is_empty() {
            return false;
        }
        // An honest renderer checks its frame before it signs the result, and the bytes
        // are the ones it signed: a result that is no image is a lie.
        let liars: Vec<PeerId> = bad
            .iter()
            .map(|d| d.peer)
            .filter(|p| *p != self.me)
            .collect();
        for peer in liars {
            self.punish(peer, "it signed a result that is no image")
                .await;
        }
        // Punishing declared the liars' results lost already; the rest (this peer's own,
        // which only a broken disk makes) are declared here.
        let state = self.ledger.frame(&job, frame);
        let left: Vec<Done> = bad
            .into_iter()
            .filter(|d| state.is_some_and(|s| !s.is_lost(d)))
            .collect();
        if !left.is_empty() {
            self.declare_lost(job, frame, &left, true).await;
        }
        true
    }

    /// A peer was disconnected for lying: in the jobs submitted here, the results of
    /// frames not written yet by such peers are declared lost at once (they cannot be
    /// fetched from them any more, and nothing a liar signed is worth waiting for), so
    /// those frames are rendered again. A frame already written stays as it is.
    pub(super) async fn forsake_liars(&mut self) {
        let frames: Vec<(JobId, u32)> = self
            .ledger
            .jobs()
            .filter(|(_, e)| e.spec.submitter == self.me)
            .flat_map(|(id, e)| e.frames.keys().map(|f| (*id, *f)))
            .collect();
        self.forsake_liars_in(&frames).await;
    }

    /// Of these frames of jobs submitted here, not written yet: results of peers
    /// disconnected for lying are declared lost and unusable (they arrive late, by sync
    /// through honest peers), which also excludes their renderer from the job everywhere.
    pub(super) async fn forsake_liars_in(&mut self, frames: &[(JobId, u32)]) {
        if self.banned.is_empty() {
            return;
        }
        let mut lost: Vec<(JobId, u32, Vec<Done>)> = Vec::new();
        for &(job, frame) in frames {
            let Some(entry) = self
                .ledger
                .job(&job)
                .filter(|e| e.spec.submitter == self.me)
            else {
                continue;
            };
            if self
                .written
                .get(&job)
                .is_some_and(|w| w.contains_key(&frame))
            {
                continue;
            }
            let Some(state) = entry.frames.get(&frame) else {
                continue;
            };
            let theirs: Vec<Done> = state
                .results()
                .filter(|d| self.banned.contains(&d.peer))
                .cloned()
                .collect();
            if !theirs.is_empty() {
                lost.push((job, frame, theirs));
            }
        }
        for (job, frame, results) in lost {
            self.declare_lost(job, frame, &results, true).await;
        }
    }

    /// Merges and gossips `Lost` for these results of `frame`, signed as the submitter;
    /// `unusable`: they are lies, and their renderers are excluded from the job.
    async fn declare_lost(&mut self, job: JobId, frame: u32, results: &[Done], unusable: bool) {
        let key = &self.identity;
        let updates: Vec<FrameUpdate> = results
            .iter()
            .map(|d| FrameUpdate {
                job,
                frame,
                state: FrameState::from_lost(sign::lost(key, &job, frame, d, unusable)),
            })
            .collect();
        let changed = self.merge_updates(&updates);
        self.after_ledger_change(&changed).await;
        self.publish(GossipMsg::Frames(updates)).await;
    }

    /// Peers to ask for a result of `frame`: its renderer, then likely replica holders, then
    /// every other connected peer.
    pub(super) fn holders(&self, job: &JobId, frame: u32, renderer: PeerId) -> Vec<PeerId> {
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
                thumb: state
                    .canonical()
                    .and_then(|d| Some((d.thumb?, self.holders(&job, frame, d.peer))))
                    .filter(|(t, _)| !self.store.has_blob(t)),
                format: entry.spec.settings.format,
                size: entry.spec.size,
                out_dir: local.out_dir.clone(),
                name: frame_file_name(frame, entry.spec.settings.format.extension()),
            });
        }
        for t in todo {
            self.writing.insert((t.job, t.frame));
            let net = self.net.clone();
            let store = self.store.clone();
            let (job, frame) = (t.job, t.frame);
            let stats = self.frames_moved(job);
            let task = self.tasks.spawn(async move {
                let thumb = async {
                    if let Some((blob, providers)) = t.thumb
                        && let Err(e) =
                            super::thumbs::fetch(&net, &store, blob, providers, stats.clone()).await
                    {
                        debug!(job = %job.short(), frame, "no thumbnail of this frame: {e}");
                    }
                };
                let write = async {
                    let mut errors = Vec::new();
                    let mut unusable = Vec::new();
                    let mut result = Err(String::new());
                    for (blob, providers) in t.candidates {
                        let ctx =
                            crate::transfer::FetchCtx::new(net.clone(), store.clone(), providers)
                                .with_stats(stats.clone());
                        let src = match ctx.fetch(blob).await {
                            Ok(src) => src,
                            Err(e) => {
                                errors.push(e.to_string());
                                continue;
                            }
                        };
                        let (out_dir, name) = (t.out_dir.clone(), t.name.clone());
                        let (format, size) = (t.format, t.size);
                        let written = tokio::task::spawn_blocking(move || {
                            check_output(&src, format, size).map_err(Bad::Unusable)?;
                            write_atomically(&src, &out_dir, &name)
                                .map_err(|e| Bad::Io(e.to_string()))
                        })
                        .await
                        .unwrap_or_else(|e| Err(Bad::Io(e.to_string())));
                        match written {
                            Ok(()) => {
                                result = Ok(blob);
                                break;
                            }
                            Err(Bad::Unusable(why)) => {
                                errors.push(why.clone());
                                unusable.push((blob, why));
                            }
                            Err(Bad::Io(e)) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    if result.as_ref().is_err_and(|e| e.is_empty()) {
                        result = Err(errors.join("; "));
                    }
                    (result, unusable)
                };
                // The thumbnail is fetched alongside the frame: small, it is usually there
                // first; the write's report waits for it at most `thumbs::FETCH_TIMEOUT`.
                let ((result, unusable), ()) = tokio::join!(write, thumb);
                TaskDone::OutputWritten {
                    job: t.job,
                    frame: t.frame,
                    result,
                    unusable,
                }
            });
            self.owners
                .insert(task.id(), super::TaskOwner::Output(job, frame));
        }
    }

    /// A write ended. Results found unusable on the way are declared so; if none was
    /// written because of that, there is nothing to retry: the frame is rendered again.
    pub(super) async fn on_output_written(
        &mut self,
        job: JobId,
        frame: u32,
        result: Result<BlobId, String>,
        unusable: &[(BlobId, String)],
    ) {
        self.writing.remove(&(job, frame));
        let declared = self.declare_unusable(job, frame, unusable).await;
        let blob = match result {
            Ok(blob) => blob,
            Err(_) if declared => {
                self.write_retry.remove(&(job, frame));
                return;
            }
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
        let lost: Vec<Done> = state.results().cloned().collect();
        warn!(
            job = %job.short(),
            frame,
            results = lost.len(),
            "no peer can serve this frame any more; it will be rendered again"
        );
        self.write_retry.remove(&(job, frame));
        self.declare_lost(job, frame, &lost, false).await;
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
    fn only_a_decodable_image_of_the_jobs_format_passes() {
        use crate::render::settings::OutputFormat;
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("f.png");
        image::RgbImage::from_pixel(8, 4, image::Rgb([200, 10, 10]))
            .save(&png)
            .unwrap();
        assert_eq!(check_output(&png, OutputFormat::Png, None), Ok(()));
        assert_eq!(check_output(&png, OutputFormat::Png, Some((8, 4))), Ok(()));
        let e = check_output(&png, OutputFormat::Png, Some((16, 9))).unwrap_err();
        assert!(
            e.contains("8x4") && e.contains("16x9"),
            "a frame of another size: {e}"
        );
        let e = check_output(&png, OutputFormat::OpenExr, None).unwrap_err();
        assert!(e.contains("not a OPEN_EXR"), "{e}");
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not an image at all").unwrap();
        assert!(check_output(&junk, OutputFormat::Png, None).is_err());
        // The right magic, then garbage: it must also decode.
        let mut fake = b"\x89PNG\r\n\x1a\n".to_vec();
        fake.extend_from_slice(&[7u8; 64]);
        std::fs::write(&junk, &fake).unwrap();
        assert!(check_output(&junk, OutputFormat::Png, None).is_err());
    }

    #[test]
    fn part_files_left_by_a_killed_copy_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let keep = [
            "frame_0001.png",
            ".frame_0001.png.part",
            ".frame_0001.png.0123456789abcdeg.part",
            ".notes.0123456789abcdef.part",
            "frame_0002.png.0123456789abcdef.part",
            ".frame_0003.0123456789abcdef.part",
        ];
        for name in keep {
            std::fs::write(out.join(name), b"x").unwrap();
        }
        std::fs::write(out.join(".frame_0002.png.2d38ee466ed30581.part"), b"x").unwrap();
        std::fs::write(out.join(".frame_0104.exr.00000000000000ff.part"), b"x").unwrap();
        // A link with a part file's name is not followed nor removed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = ".frame_0005.png.aaaaaaaaaaaaaaaa.part";
        std::os::unix::fs::symlink(&victim, out.join(link)).unwrap();

        assert_eq!(remove_stale_parts(&out), 2);
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.push(link.to_string());
        want.sort();
        assert_eq!(names, want);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(remove_stale_parts(&dir.path().join("missing")), 0);
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
