//! Read-only views of the daemon's state for the local API (`meshd status`, `meshd peers`).

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

use super::{Daemon, SceneState};
use crate::api::types::{
    FrameView, FramesQuery, JobView, PeerInfo, PeersResponse, ProjectView, StatusQuery,
    StatusResponse,
};
use crate::ids::JobId;
use crate::ledger::job::BlenderReq;
use crate::ledger::{
    FrameStatus, JobEntry, JobSpec, JobState, PeerView, fitting_renderers, frame_status_in,
    job_progress,
};
use crate::net::InFlight;

/// "no live peer can render this job (it needs Blender 4.2, a GPU); waiting for one".
/// `newer`: the live peers would render it with `--blender-version` this ("4.2+").
fn no_renderer_reason(spec: &JobSpec, newer: Option<String>) -> String {
    let mut needs = Vec::new();
    if let Some(v) = &spec.require_blender {
        let v = BlenderReq::parse(v).map_or_else(|| v.clone(), |r| r.to_string());
        needs.push(format!("Blender {v}"));
    }
    let d = &spec.settings.device;
    if let Some(k) = d.kind {
        needs.push(format!("a {} device", k.blender_name()));
    } else if d.gpu_only {
        needs.push("a GPU".to_string());
    }
    if let Some(m) = d.min_vram_mib {
        needs.push(format!("at least {m} MiB of GPU memory"));
    }
    if needs.is_empty() {
        "no live peer can render this job; waiting for a renderer to join".to_string()
    } else {
        format!(
            "no live peer can render this job (it needs {}); waiting for one to join{}",
            needs.join(", "),
            newer.map_or_else(String::new, |v| format!(
                " (live peers have a newer Blender: `meshd submit ... --blender-version {v}` \
                 lets them render it)"
            ))
        )
    }
}

/// For a job that waits for its Blender series alone: "4.2+" when a live peer would
/// render it with that requirement.
fn newer_would_render(entry: &JobEntry, view: &impl PeerView) -> Option<String> {
    let Some(BlenderReq::Series(a, b)) = entry
        .spec
        .require_blender
        .as_deref()
        .and_then(BlenderReq::parse)
    else {
        return None;
    };
    let wider = JobSpec {
        require_blender: Some(BlenderReq::AtLeast(a, b).spec()),
        ..entry.spec.clone()
    };
    let fits = view.live_renderers().iter().any(|p| view.fits(p, &wider));
    fits.then(|| wider.require_blender.unwrap_or_default())
}

impl Daemon {
    /// `GET /v1/status`: every job, or those `q.job` selects (an id prefix or a name). An
    /// archived job is listed from its summary; when selected, its frames are read back
    /// from disk. `q.frames` says which frames to list (all, those rendering, none).
    pub(super) fn status_view(&self, q: &StatusQuery) -> StatusResponse {
        let view = self.view();
        let lower = q.job.as_deref().map(str::to_ascii_lowercase);
        let selected = |id: &JobId, spec: &JobSpec| match (&q.job, &lower) {
            (Some(sel), Some(l)) => id.to_hex().starts_with(l.as_str()) || spec.name == *sel,
            _ => true,
        };
        let which = q.frames.unwrap_or(FramesQuery::All);
        let mut jobs = Vec::new();
        for (id, entry) in self.ledger.jobs() {
            if selected(id, &entry.spec) {
                jobs.push(self.job_view(id, entry, &view, which));
            }
        }
        for (id, a) in self.ledger.archived_jobs() {
            if !selected(id, &a.spec) {
                continue;
            }
            let mut v = self.archived_view(id, a);
            if q.job.is_some() && which == FramesQuery::All {
                v.frames = self.archived_frames(id, a, &view);
            }
            jobs.push(v);
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_unix_ms));
        StatusResponse {
            jobs,
            cloud: self.cloud.spend(),
        }
    }

    /// The frames of an archived job, from its states on disk.
    fn archived_frames(
        &self,
        id: &JobId,
        a: &crate::ledger::ArchivedJob,
        view: &super::peers::LiveView<'_>,
    ) -> Vec<FrameView> {
        let mut l = crate::ledger::Ledger::new();
        let Ok((_, _)) = l.insert_job(a.spec.clone()) else {
            return Vec::new();
        };
        for u in self.store.job_frames(id).unwrap_or_default() {
            let _ = l.apply(&u);
        }
        l.job(id)
            .map(|e| self.job_view(id, e, view, FramesQuery::All).frames)
            .unwrap_or_default()
    }

    /// A job's view, listing the frames `which` asks for.
    fn job_view(
        &self,
        id: &JobId,
        entry: &crate::ledger::JobEntry,
        view: &super::peers::LiveView<'_>,
        which: FramesQuery,
    ) -> JobView {
        let progress = job_progress(entry, view, &self.policy);
        let failed_job = progress.state == JobState::Failed;
        let mut frames = Vec::new();
        let mut reasons = Vec::new();
        for frame in entry.spec.frames.iter() {
            // Reasons of a failed job are gathered whatever frames are listed.
            if which == FramesQuery::None && !failed_job {
                break;
            }
            let state = entry.frames.get(&frame);
            let status = state
                .map(|s| frame_status_in(entry, s, view, &self.policy))
                .unwrap_or(FrameStatus::Pending);
            let first_failure = || state.and_then(|s| s.failures.iter().find(|f| f.counts()));
            if matches!(status, FrameStatus::Failed) && reasons.len() < 3 {
                if let Some(f) = first_failure() {
                    reasons.push(format!("frame {frame}: {}", f.reason));
                }
            } else if failed_job
                && reasons.is_empty()
                && let Some(f) = first_failure()
            {
                reasons.push(format!("frame {frame}: {}", f.reason));
            }
            let listed = match which {
                FramesQuery::All => true,
                FramesQuery::Active => matches!(status, FrameStatus::InFlight(_)),
                FramesQuery::None => false,
            };
            if !listed {
                continue;
            }
            let failures: Vec<String> = state
                .map(|s| {
                    s.failures
                        .iter()
                        .filter(|f| f.counts())
                        .map(|f| format!("{}: {}", short_peer(&f.peer), f.reason))
                        .collect()
                })
                .unwrap_or_default();
            let samples = match &status {
                FrameStatus::InFlight(c) => self.progress_of(&c.peer, id, frame),
                _ => None,
            };
            let (state_name, peer, render_ms) = match &status {
                FrameStatus::Pending => ("pending", None, None),
                FrameStatus::InFlight(c) => ("rendering", Some(c.peer.to_string()), None),
                FrameStatus::Done(d) => ("done", Some(d.peer.to_string()), Some(d.render_ms)),
                FrameStatus::Failed => ("failed", None, None),
            };
            frames.push(FrameView {
                frame,
                state: state_name.into(),
                peer,
                render_ms,
                samples_done: samples.map(|p| p.0),
                samples_total: samples.map(|p| p.1),
                failures,
                thumb: match &status {
                    FrameStatus::Done(d) => d.thumb.map(|t| t.to_hex()),
                    _ => None,
                },
            });
        }
        let local = self.local_jobs.get(id);
        let frames_written = local.map(|_| {
            // A frame is written once, from whichever result could be fetched first.
            self.written.get(id).map_or(0, |w| {
                w.keys().filter(|f| entry.spec.frames.contains(**f)).count()
            })
        });
        JobView {
            id: id.to_hex(),
            name: entry.spec.name.clone(),
            state: progress.state,
            frames_total: progress.total,
            frames_done: progress.done,
            frames_in_flight: progress.in_flight,
            frames_failed: progress.failed,
            duplicates: progress.duplicates,
            submitter: entry.spec.submitter.to_string(),
            created_unix_ms: entry.spec.created_unix_ms,
            priority: entry.priority(),
            out_dir: local.map(|l| l.out_dir.clone()),
            frames_written,
            failure: (progress.state == JobState::Failed).then(|| {
                if reasons.is_empty() {
                    "no peer can render the remaining frames".to_string()
                } else {
                    reasons.join("; ")
                }
            }),
            waiting: (progress.state == JobState::Running
                && progress.in_flight == 0
                && progress.pending > 0
                && fitting_renderers(entry, view).is_empty())
            .then(|| no_renderer_reason(&entry.spec, newer_would_render(entry, view))),
            cost_usd: self.cloud.job_spend(id),
            frames,
            blender_version: entry.spec.blender_version.clone(),
            require_blender: entry.spec.require_blender.clone(),
            bytes_moved: self.bytes_moved(id),
            project: self.project_view(id),
            archived: false,
        }
    }

    /// See [`JobView::bytes_moved`].
    pub(super) fn bytes_moved(&self, job: &JobId) -> u64 {
        let project = self.scenes.get(job).map_or(0, |s| s.stats().fetched());
        project + self.frames_moved.get(job).map_or(0, |s| s.fetched())
    }

    pub(super) fn project_view(&self, job: &JobId) -> ProjectView {
        let Some(state) = self.scenes.get(job) else {
            return ProjectView {
                state: "none".into(),
                ..Default::default()
            };
        };
        let stats = state.stats();
        let (name, manifest, error) = match state {
            SceneState::Fetching(..) => ("fetching", None, None),
            SceneState::Ready(c, _) => ("ready", Some(&c.manifest), None),
            SceneState::Retry(_, _, e) => ("retrying", None, Some(e.clone())),
        };
        ProjectView {
            state: name.into(),
            files: manifest.map(|m| m.files.len()),
            bytes: manifest.map(|m| m.total_size()),
            bytes_fetched: stats.fetched(),
            bytes_reused: stats.reused(),
            error,
        }
    }

    pub(super) fn peers_view(&self) -> PeersResponse {
        let mut rendered: HashMap<PeerId, usize> = HashMap::new();
        for (_, entry) in self.ledger.jobs() {
            for state in entry.frames.values() {
                if let Some(d) = state.canonical() {
                    *rendered.entry(d.peer).or_default() += 1;
                }
            }
        }
        for (_, a) in self.ledger.archived_jobs() {
            for (p, n) in &a.rendered_by {
                *rendered.entry(*p).or_default() += *n as usize;
            }
        }
        let now = Instant::now();
        let own = self.render.in_flight();
        let rented = self.cloud.rented_peers();
        let mut peers = vec![PeerInfo {
            id: self.me.to_string(),
            is_self: true,
            connected: true,
            addrs: vec![],
            blender: self.blender.as_ref().map(|b| b.version.clone()),
            render_device: self.render_device().map(|k| k.blender_name().to_string()),
            can_render: self.can_render(),
            frames_rendered: rendered.get(&self.me).copied().unwrap_or(0),
            last_seen_secs: Some(0),
            rendering: own.iter().map(in_flight_label).collect(),
            devices: self
                .blender
                .as_ref()
                .map(|b| b.devices.clone())
                .unwrap_or_default(),
            rented: None,
        }];
        for (id, s) in &self.peers.peers {
            if !s.connected && s.heard.is_none() {
                continue;
            }
            let hb = s.heartbeat.as_ref();
            peers.push(PeerInfo {
                id: id.to_string(),
                is_self: false,
                connected: s.connected,
                addrs: s.addrs.iter().map(|a| a.to_string()).collect(),
                blender: hb.and_then(|h| h.blender.clone()),
                render_device: hb.and_then(|h| h.render_device.clone()),
                can_render: hb.is_some_and(|h| h.can_render),
                frames_rendered: rendered.get(id).copied().unwrap_or(0),
                last_seen_secs: s.heard.map(|t| now.saturating_duration_since(t).as_secs()),
                rendering: s
                    .rendering(now, self.cfg.lease)
                    .iter()
                    .filter(|f| self.may_still_render(f))
                    .map(in_flight_label)
                    .collect(),
                devices: hb.map(|h| h.devices.clone()).unwrap_or_default(),
                rented: rented.get(&id.to_string()).cloned(),
            });
        }
        PeersResponse {
            peers,
            gossip: self.net.gossip_traffic(),
        }
    }

    /// Whether a render a peer's last heartbeat reported may still go on: not when its frame
    /// has a result since, or its job is archived (the peer stops such a render when it
    /// hears of the result; its next heartbeat, up to 5 s later, would say so).
    fn may_still_render(&self, f: &InFlight) -> bool {
        if self.ledger.archived(&f.job).is_some() {
            return false;
        }
        let frame = self.ledger.job(&f.job).and_then(|e| e.frames.get(&f.frame));
        frame.is_none_or(|s| s.canonical().is_none())
    }

    /// Samples done/total of a frame in flight on `peer`, from our own slots or its heartbeat.
    fn progress_of(&self, peer: &PeerId, job: &JobId, frame: u32) -> Option<(u32, u32)> {
        let list = if *peer == self.me {
            self.render.in_flight()
        } else {
            self.peers
                .peers
                .get(peer)?
                .rendering(Instant::now(), self.cfg.lease)
        };
        list.iter()
            .find(|f| f.job == *job && f.frame == frame && f.total > 0)
            .map(|f| (f.current, f.total))
    }
}

fn in_flight_label(f: &InFlight) -> String {
    if f.total > 0 {
        format!(
            "{}:{} samples {}/{}",
            f.job.short(),
            f.frame,
            f.current,
            f.total
        )
    } else {
        format!("{}:{}", f.job.short(), f.frame)
    }
}

fn short_peer(p: &PeerId) -> String {
    let s = p.to_string();
    s[s.len().saturating_sub(8)..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::state::tests::spec;

    /// One live renderer with Blender `version`.
    struct OnePeer(&'static str);

    impl PeerView for OnePeer {
        fn claim_live(&self, _: &PeerId, _: u64) -> bool {
            true
        }
        fn live_renderers(&self) -> Vec<PeerId> {
            vec![PeerId::random()]
        }
        fn fits(&self, _: &PeerId, spec: &JobSpec) -> bool {
            spec.blender_fits(self.0)
        }
    }

    fn waiting(require: &str, peer: &'static str) -> String {
        let spec = JobSpec {
            require_blender: Some(require.into()),
            ..spec("1-3", 0, 1)
        };
        let entry = JobEntry {
            spec,
            frames: Default::default(),
            control: crate::ledger::JobControl::initial(0),
            tally: Default::default(),
        };
        no_renderer_reason(&entry.spec, newer_would_render(&entry, &OnePeer(peer)))
    }

    #[test]
    fn a_job_waiting_for_its_series_says_how_to_widen_it_only_when_that_helps() {
        let w = waiting("3.4", "5.0.1");
        assert!(w.contains("it needs Blender 3.4)"), "{w}");
        assert!(w.contains("--blender-version 3.4+"), "{w}");
        // An older Blender, or a job that admits newer ones already: nothing to widen.
        for (require, peer) in [("4.2", "3.4.1"), ("4.2+", "3.4.1")] {
            let w = waiting(require, peer);
            assert!(w.contains("waiting for one to join"), "{w}");
            assert!(!w.contains("--blender-version"), "{require} {peer}: {w}");
        }
    }
}
