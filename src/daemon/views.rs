//! Read-only views of the daemon's state for the local API (`meshd status`, `meshd peers`).

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

use super::Daemon;
use crate::api::types::{FrameView, JobView, PeerInfo, PeersResponse, StatusResponse};
use crate::ledger::{FrameStatus, JobState, frame_status, job_progress};

impl Daemon {
    pub(super) fn status_view(&self) -> StatusResponse {
        let view = self.view();
        let mut jobs = Vec::new();
        for (id, entry) in self.ledger.jobs() {
            let progress = job_progress(entry, &view, &self.policy);
            let mut frames = Vec::with_capacity(entry.spec.frames.len());
            let mut reasons = Vec::new();
            for frame in entry.spec.frames.iter() {
                let state = entry.frames.get(&frame);
                let status = state
                    .map(|s| frame_status(s, &view, &self.policy))
                    .unwrap_or(FrameStatus::Pending);
                let failures: Vec<String> = state
                    .map(|s| {
                        s.failures
                            .iter()
                            .map(|f| format!("{}: {}", short_peer(&f.peer), f.reason))
                            .collect()
                    })
                    .unwrap_or_default();
                let (state_name, peer, render_ms) = match &status {
                    FrameStatus::Pending => ("pending", None, None),
                    FrameStatus::InFlight(c) => ("rendering", Some(c.peer.to_string()), None),
                    FrameStatus::Done(d) => ("done", Some(d.peer.to_string()), Some(d.render_ms)),
                    FrameStatus::Failed => ("failed", None, None),
                };
                if matches!(status, FrameStatus::Failed) && reasons.len() < 3 {
                    if let Some(f) = state.and_then(|s| s.failures.iter().next()) {
                        reasons.push(format!("frame {frame}: {}", f.reason));
                    }
                } else if progress.state == JobState::Failed
                    && reasons.is_empty()
                    && let Some(f) = state.and_then(|s| s.failures.iter().next())
                {
                    reasons.push(format!("frame {frame}: {}", f.reason));
                }
                frames.push(FrameView {
                    frame,
                    state: state_name.into(),
                    peer,
                    render_ms,
                    failures,
                });
            }
            let local = self.local_jobs.get(id);
            let frames_written = local.map(|_| {
                let written = self.written.get(id);
                entry
                    .frames
                    .iter()
                    .filter(|(f, s)| {
                        s.canonical()
                            .is_some_and(|d| written.and_then(|w| w.get(f)) == Some(&d.output))
                    })
                    .count()
            });
            jobs.push(JobView {
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
                priority: entry.spec.priority,
                out_dir: local.map(|l| l.out_dir.clone()),
                frames_written,
                failure: (progress.state == JobState::Failed).then(|| {
                    if reasons.is_empty() {
                        "no peer can render the remaining frames".to_string()
                    } else {
                        reasons.join("; ")
                    }
                }),
                frames,
            });
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_unix_ms));
        StatusResponse { jobs }
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
        let now = Instant::now();
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
            rendering: self
                .render
                .current()
                .map(|(j, f)| format!("{}:{f}", j.short()))
                .into_iter()
                .collect(),
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
                rendering: hb
                    .map(|h| {
                        h.rendering
                            .iter()
                            .map(|(j, f)| format!("{}:{f}", j.short()))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        let _ = self.started;
        PeersResponse { peers }
    }
}

fn short_peer(p: &PeerId) -> String {
    let s = p.to_string();
    s[s.len().saturating_sub(8)..].to_string()
}
