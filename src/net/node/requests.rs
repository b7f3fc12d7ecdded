//! The node's request-response protocols: sync, key rotation and log requests go to the daemon,
//! blob requests are answered here on a blocking thread, answers go back to their callers.

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::request_response::{self, Event, Message, OutboundRequestId, ResponseChannel};
use tokio::sync::oneshot;
use tracing::debug;

use super::{Command, EventLoop, NetError, NetEvent};
use crate::net::wire::{
    BlobRequest, BlobResponse, KeyRotation, KeyRotationAck, LogRequest, LogResponse, SyncRequest,
    SyncResponse,
};

/// Callers waiting for the answers to their requests of one protocol.
pub(super) type Pending<Resp> = HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>;

/// An inbound request, for the protocol's handler to deal with.
type Inbound<Req, Resp> = (PeerId, Req, ResponseChannel<Resp>);

/// Hands answers and outbound failures to the callers waiting in `pending`, logs inbound
/// failures, and returns an inbound request.
fn settle<Req, Resp>(
    pending: &mut Pending<Resp>,
    ev: Event<Req, Resp>,
    protocol: &str,
) -> Option<Inbound<Req, Resp>> {
    match ev {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => return Some((peer, request, channel)),
        Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Ok(response));
            }
        }
        Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Err(NetError::Request {
                    peer,
                    reason: error.to_string(),
                }));
            }
        }
        Event::InboundFailure { peer, error, .. } => {
            debug!(%peer, "inbound {protocol} request failed: {error}");
        }
        Event::ResponseSent { .. } => {}
    }
    None
}

/// Sends an answer; a requester that went away meanwhile is only logged.
pub(super) fn answer<C>(
    behaviour: &mut request_response::Behaviour<C>,
    channel: ResponseChannel<C::Response>,
    resp: C::Response,
    protocol: &str,
) where
    C: request_response::Codec + Clone + Send + 'static,
{
    if behaviour.send_response(channel, resp).is_err() {
        debug!("{protocol} requester went away before the answer");
    }
}

impl EventLoop {
    pub(super) fn on_sync(&mut self, ev: request_response::Event<SyncRequest, SyncResponse>) {
        if let Some((peer, req, channel)) = settle(&mut self.pending_sync, ev, "sync") {
            self.emit(NetEvent::SyncRequest { peer, req, channel });
        }
    }

    pub(super) fn on_key(&mut self, ev: request_response::Event<KeyRotation, KeyRotationAck>) {
        if let Some((peer, req, channel)) = settle(&mut self.pending_key, ev, "key rotation") {
            self.emit(NetEvent::KeyRotation { peer, req, channel });
        }
    }

    pub(super) fn on_logs(&mut self, ev: request_response::Event<LogRequest, LogResponse>) {
        if let Some((peer, req, channel)) = settle(&mut self.pending_logs, ev, "log") {
            self.emit(NetEvent::LogRequest { peer, req, channel });
        }
    }

    pub(super) fn on_blob(&mut self, ev: request_response::Event<BlobRequest, BlobResponse>) {
        let Some((_, request, channel)) = settle(&mut self.pending_blob, ev, "blob") else {
            return;
        };
        let server = self.blob_server.clone();
        let Some(tx) = self.self_tx.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let resp = tokio::task::spawn_blocking(move || server.serve(&request))
                .await
                .unwrap_or(BlobResponse::NotFound);
            let _ = tx.send(Command::RespondBlob { channel, resp }).await;
        });
    }
}
