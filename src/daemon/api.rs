//! Requests from the local API ([`ApiRequest`]) as the daemon's loop answers them: submit,
//! status, peers, invite, control, fetch, logs, key rotation, collection.

use std::path::PathBuf;

use libp2p::Multiaddr;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::Daemon;
use crate::api::types::{InviteResponse, PeersResponse, StatusResponse, SubmitResponse};
use crate::ledger::JobSpec;
use crate::net::GossipMsg;

/// Requests from the local API.
pub enum ApiRequest {
    Submit(
        Box<JobSpec>,
        PathBuf,
        oneshot::Sender<Result<SubmitResponse, String>>,
    ),
    Status(
        crate::api::types::StatusQuery,
        oneshot::Sender<StatusResponse>,
    ),
    Peers(oneshot::Sender<PeersResponse>),
    Invite(oneshot::Sender<Result<InviteResponse, String>>),
    Logs(
        crate::api::types::LogsQuery,
        oneshot::Sender<Result<crate::api::types::LogsResponse, String>>,
    ),
    RotateKey(
        crate::api::types::RotateKeyRequest,
        oneshot::Sender<Result<crate::api::types::RotateKeyResponse, String>>,
    ),
    /// The thumbnail of a frame: job selector, frame.
    Thumbnail(
        String,
        u32,
        oneshot::Sender<Result<Vec<u8>, super::thumbs::ThumbError>>,
    ),
    Gc(oneshot::Sender<Result<crate::store::gc::GcReport, String>>),
    Fetch(
        crate::api::types::FetchRequest,
        oneshot::Sender<Result<SubmitResponse, String>>,
    ),
    Control(
        crate::api::types::ControlRequest,
        oneshot::Sender<Result<crate::api::types::ControlResponse, String>>,
    ),
}

impl Daemon {
    pub(super) async fn on_api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::Submit(spec, out_dir, reply) => {
                let _ = reply.send(self.submit(*spec, out_dir).await);
                // A rent for this job may follow at once.
                self.publish_activity();
            }
            ApiRequest::Status(q, reply) => {
                let _ = reply.send(self.status_view(&q));
            }
            ApiRequest::Peers(reply) => {
                let _ = reply.send(self.peers_view());
            }
            ApiRequest::RotateKey(req, reply) => self.rotate_key(req, reply).await,
            ApiRequest::Logs(q, reply) => self.logs(&q.job, q.frame, reply),
            ApiRequest::Thumbnail(job, frame, reply) => self.thumbnail(&job, frame, reply),
            ApiRequest::Invite(reply) => {
                let _ = reply.send(self.invite().await);
            }
            ApiRequest::Gc(reply) => self.collect_garbage(0, Some(reply)),
            ApiRequest::Control(req, reply) => {
                let _ = reply.send(self.control(&req.job, req.action).await);
            }
            ApiRequest::Fetch(req, reply) => {
                let _ = reply.send(self.deliver_to(&req.job, req.out_dir));
            }
        }
    }

    pub(super) async fn submit(
        &mut self,
        spec: JobSpec,
        out_dir: PathBuf,
    ) -> Result<SubmitResponse, String> {
        spec.validate()?;
        let id = spec.id();
        self.set_out_dir(id, &out_dir)?;
        let mut spec = spec;
        spec.submitter = self.me;
        crate::ledger::sign::sign_job(&self.identity, &mut spec);
        self.add_job(spec.clone()).map_err(|e| e.to_string())?;
        let _ = self.store.flush();
        let resp = SubmitResponse::job(id.to_hex(), spec.name.clone(), spec.frames.len(), out_dir);
        self.publish(GossipMsg::Job(Box::new(spec))).await;
        Ok(resp)
    }

    pub(super) async fn invite(&self) -> Result<InviteResponse, String> {
        let mut addrs = self.net.listen_addrs().await.map_err(|e| e.to_string())?;
        if addrs.is_empty() {
            return Err("the daemon is not listening yet".into());
        }
        // Addresses reachable from other machines first; loopback last.
        addrs.sort_by_key(|a| {
            a.to_string().starts_with("/ip4/127.") || a.to_string().starts_with("/ip6/::1")
        });
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .map(|a| a.with_p2p(self.me).unwrap_or_else(|a| a))
            .collect();
        Ok(InviteResponse {
            ticket: crate::net::Ticket::new(self.key.get(), &self.mesh_id, &addrs).encode(),
            mesh_id: self.mesh_id.clone(),
        })
    }

    pub(super) fn load_local_jobs(&mut self) {
        match self.store.local_jobs() {
            Ok(jobs) => {
                for (id, local) in jobs {
                    let written = self.store.written_frames(&id).unwrap_or_default();
                    // A daemon killed mid-copy leaves its part file, and that frame unwritten:
                    // nothing else removes it. Jobs written whole are not looked at.
                    let unwritten = self
                        .ledger
                        .job(&id)
                        .is_some_and(|e| written.len() < e.spec.frames.len());
                    let removed = if unwritten {
                        super::outputs::remove_stale_parts(&local.out_dir)
                    } else {
                        0
                    };
                    if removed > 0 {
                        info!(job = %id.short(), parts = removed, "removed unfinished frame copies");
                    }
                    self.written.insert(id, written.into_iter().collect());
                    self.local_jobs.insert(id, local);
                    self.queue_unwritten(id);
                }
            }
            Err(e) => warn!("cannot read local jobs: {e}"),
        }
    }
}
