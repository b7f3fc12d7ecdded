//! `meshd logs JOB FRAME`: the Blender log of a frame, from the peer that rendered it (or
//! last tried to) over `/meshd/logs/1`. Every renderer keeps the log of its last attempt
//! at each frame in its worker dir (`work/<job>/worker-<slot>/logs/`).

use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;

use super::Daemon;
use crate::api::types::LogsResponse;
use crate::ids::JobId;
use crate::net::{LogRequest, LogResponse};

/// How long the renderer has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

impl Daemon {
    /// A peer asks for one of this peer's frame logs: read off the loop, answered by the
    /// task.
    pub(super) fn on_log_request(&self, req: LogRequest, channel: ResponseChannel<LogResponse>) {
        let dir = self.job_dir(&req.job);
        let net = self.net.clone();
        tokio::spawn(async move {
            let resp = read_log(dir, req.frame)
                .await
                .map_or(LogResponse::NotFound, LogResponse::Lines);
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
        tokio::spawn(async move {
            let lines = if peer == me {
                read_log(dir, frame).await.ok_or_else(|| {
                    "this peer has no log of that frame (its work dir was cleaned)".to_string()
                })
            } else {
                let req = LogRequest { job, frame };
                match tokio::time::timeout(ASK_TIMEOUT, net.logs(peer, req)).await {
                    Ok(Ok(LogResponse::Lines(lines))) => Ok(lines),
                    Ok(Ok(LogResponse::NotFound)) => Err(format!(
                        "peer {peer} has no log of that frame (its work dir was cleaned)"
                    )),
                    Ok(Err(e)) => Err(format!("cannot ask peer {peer}: {e}")),
                    Err(_) => Err(format!("peer {peer} did not answer")),
                }
            };
            let _ = reply.send(lines.map(|lines| LogsResponse {
                job: job.to_hex(),
                frame,
                peer: peer.to_string(),
                lines,
            }));
        });
    }

    /// The peer whose log of `frame` tells most: its renderer, else the peer of the
    /// latest failed attempt, else the peer rendering it now. An archived job's frame
    /// states are read from disk.
    fn renderer_of(&self, job: &JobId, frame: u32) -> Option<PeerId> {
        let stored;
        let state = match self.ledger.frame(job, frame) {
            Some(s) => s,
            None => {
                stored = self.store.frame_state(job, frame).ok().flatten()?;
                &stored
            }
        };
        state
            .canonical()
            .map(|d| d.peer)
            .or_else(|| {
                state
                    .failures
                    .iter()
                    .max_by_key(|f| f.epoch)
                    .map(|f| f.peer)
            })
            .or_else(|| state.claim.as_ref().map(|c| c.peer))
    }
}

/// This peer's log of `frame` of the job whose dir is `dir`, read on a blocking thread.
async fn read_log(dir: std::path::PathBuf, frame: u32) -> Option<Vec<String>> {
    tokio::task::spawn_blocking(move || crate::render::worker::read_frame_log(&dir, frame))
        .await
        .ok()
        .flatten()
}
