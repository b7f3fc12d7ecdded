//! `meshd logs JOB FRAME`: the Blender log of a frame, from the peer that rendered it,
//! renders it now, or last tried to, over `/meshd/logs/1`. Every renderer keeps the log of
//! its last attempt at each frame in its worker dir (`work/<job>/worker-<slot>/logs/`), and
//! the lines of a frame it renders now in memory (`render::worker::FrameLog`).

use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;

use super::Daemon;
use crate::api::types::LogsResponse;
use crate::ids::JobId;
use crate::ledger::FrameState;
use crate::net::{LogRequest, LogResponse};

/// How long the renderer has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

impl Daemon {
    /// A peer asks for one of this peer's frame logs: read off the loop, answered by the
    /// task.
    pub(super) fn on_log_request(&self, req: LogRequest, channel: ResponseChannel<LogResponse>) {
        let live = self.live_log(&req.job, req.frame);
        let dir = self.job_dir(&req.job);
        let net = self.net.clone();
        tokio::spawn(async move {
            let resp = match live {
                Some(lines) => LogResponse::Live(lines),
                None => read_log(dir, req.frame)
                    .await
                    .map_or(LogResponse::NotFound, LogResponse::Lines),
            };
            if let Err(e) = net.respond_logs(channel, resp).await {
                tracing::debug!("cannot answer a log request: {e}");
            }
        });
    }

    /// `GET /v1/logs`: finds who rendered (or last tried) the frame and asks it; answers
    /// `reply` from a task.
    pub(super) fn logs(
        &self,
        sel: &str,
        frame: u32,
        reply: oneshot::Sender<Result<LogsResponse, String>>,
    ) {
        let found = self.find_job(sel).and_then(|job| {
            let peer = self.renderer_of(&job, frame).ok_or_else(|| {
                format!("frame {frame} of that job has not been rendered or tried yet")
            })?;
            Ok((job, peer))
        });
        let (job, peer) = match found {
            Ok(x) => x,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (me, net, dir) = (self.me, self.net.clone(), self.job_dir(&job));
        let live = (peer == me).then(|| self.live_log(&job, frame)).flatten();
        tokio::spawn(async move {
            let lines = if let Some(lines) = live {
                Ok((lines, true))
            } else if peer == me {
                read_log(dir, frame)
                    .await
                    .map(|l| (l, false))
                    .ok_or_else(|| {
                        "this peer has no log of that frame (its work dir was cleaned)".to_string()
                    })
            } else {
                let req = LogRequest { job, frame };
                match tokio::time::timeout(ASK_TIMEOUT, net.logs(peer, req)).await {
                    Ok(Ok(LogResponse::Lines(lines))) => Ok((lines, false)),
                    Ok(Ok(LogResponse::Live(lines))) => Ok((lines, true)),
                    Ok(Ok(LogResponse::NotFound)) => Err(format!(
                        "peer {peer} has no log of that frame (its work dir was cleaned)"
                    )),
                    Ok(Err(e)) => Err(format!("cannot ask peer {peer}: {e}")),
                    Err(_) => Err(format!("peer {peer} did not answer")),
                }
            };
            let _ = reply.send(lines.map(|(lines, live)| LogsResponse {
                job: job.to_hex(),
                frame,
                peer: peer.to_string(),
                lines,
                live,
            }));
        });
    }

    /// The peer whose log of `frame` tells most: its renderer, else the peer rendering it
    /// now (a claim whose attempt has not failed), else the peer of the latest failed
    /// attempt.
    fn renderer_of(&self, job: &JobId, frame: u32) -> Option<PeerId> {
        let state = self.any_frame_state(job, frame)?;
        let rendering = state.claim.as_ref().filter(|c| {
            !state
                .failures
                .iter()
                .any(|f| f.epoch == c.epoch && f.peer == c.peer)
        });
        state
            .canonical()
            .map(|d| d.peer)
            .or_else(|| rendering.map(|c| c.peer))
            .or_else(|| {
                state
                    .failures
                    .iter()
                    .max_by_key(|f| f.epoch)
                    .map(|f| f.peer)
            })
            .or_else(|| state.claim.as_ref().map(|c| c.peer))
    }

    /// The state of `frame` of `job`, active or archived (an archived job's frame states
    /// are read from disk).
    pub(super) fn any_frame_state(
        &self,
        job: &JobId,
        frame: u32,
    ) -> Option<std::borrow::Cow<'_, FrameState>> {
        match self.ledger.frame(job, frame) {
            Some(s) => Some(std::borrow::Cow::Borrowed(s)),
            None => self
                .store
                .frame_state(job, frame)
                .ok()
                .flatten()
                .map(std::borrow::Cow::Owned),
        }
    }
}

/// This peer's log of `frame` of the job whose dir is `dir`, read on a blocking thread.
async fn read_log(dir: std::path::PathBuf, frame: u32) -> Option<Vec<String>> {
    tokio::task::spawn_blocking(move || crate::render::worker::read_frame_log(&dir, frame))
        .await
        .ok()
        .flatten()
}
