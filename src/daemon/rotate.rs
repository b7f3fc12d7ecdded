//! Mesh key rotation (`meshd rotate-key [--exclude PEER]...`).
//!
//! The rotating daemon makes a new key, switches to it (new connections need it; the ones
//! open now stay up) and hands it to every connected peer over `/meshd/key/1`, on
//! connections the old key protects. Each receiver switches too and passes the key on to
//! its own connected peers except the sender and the excluded, so peers that are not
//! connected to the rotator get it as well. Excluded peers are disconnected and refused
//! everywhere the key goes; without the key they, and every old ticket, can no longer
//! connect. A peer away during the rotation needs a new ticket (`meshd invite`): its data
//! dir takes the new key because the mesh id stays the same.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::Daemon;
use crate::api::types::{RotateKeyRequest, RotateKeyResponse};
use crate::net::wire::MAX_EXCLUDED;
use crate::net::{Client, KeyRotation, KeyRotationAck, MeshKey};

/// The version of [`KeyRotation`] this daemon speaks.
const ROTATION_VERSION: u16 = 1;
/// How long a peer has to take the key.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(15);

impl Daemon {
    /// `meshd rotate-key`: switches to a new key and hands it to the connected peers; the
    /// reply, once they answered, says who took it.
    pub(super) async fn rotate_key(
        &mut self,
        req: RotateKeyRequest,
        reply: oneshot::Sender<Result<RotateKeyResponse, String>>,
    ) {
        let mut exclude = Vec::new();
        for p in &req.exclude {
            match p.trim().parse::<PeerId>() {
                Ok(id) if id == self.me => {
                    let _ = reply.send(Err(
                        "cannot exclude this peer itself: run rotate-key on another peer".into(),
                    ));
                    return;
                }
                Ok(id) => exclude.push(id),
                Err(_) => {
                    let _ = reply.send(Err(format!(
                        "{:?} is not a peer id: copy one from `meshd peers`",
                        crate::cli::printable(p)
                    )));
                    return;
                }
            }
        }
        if exclude.len() > MAX_EXCLUDED {
            let _ = reply.send(Err(format!(
                "at most {MAX_EXCLUDED} peers can be excluded at once"
            )));
            return;
        }
        let key = MeshKey::generate();
        if let Err(e) = self.switch_key(key, &exclude).await {
            let _ = reply.send(Err(e));
            return;
        }
        let ticket = match self.invite().await {
            Ok(inv) => inv.ticket,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let rotation = KeyRotation {
            version: ROTATION_VERSION,
            mesh: self.mesh_id.clone(),
            key,
            exclude: exclude.clone(),
        };
        let targets = self.hand_over_targets(&exclude, None);
        let net = self.net.clone();
        let mesh_id = self.mesh_id.clone();
        tokio::spawn(async move {
            let answers = hand_over_all(&net, targets, &rotation).await;
            let mut resp = RotateKeyResponse {
                mesh_id,
                ticket,
                switched: Vec::new(),
                not_reached: Vec::new(),
                excluded: exclude.iter().map(PeerId::to_string).collect(),
            };
            for (peer, outcome) in answers {
                match outcome {
                    Ok(()) => resp.switched.push(peer.to_string()),
                    Err(why) => resp.not_reached.push((peer.to_string(), why)),
                }
            }
            let _ = reply.send(Ok(resp));
        });
    }

    /// A peer hands over a new key: take it, pass it on, answer.
    pub(super) async fn on_key_rotation(
        &mut self,
        from: PeerId,
        req: KeyRotation,
        channel: ResponseChannel<KeyRotationAck>,
    ) {
        let ack = if self.banned.contains(&from) {
            KeyRotationAck::Refused("you are disconnected from this peer".into())
        } else if req.version != ROTATION_VERSION {
            KeyRotationAck::Refused(format!("rotation version {} unknown here", req.version))
        } else if req.mesh != self.mesh_id {
            KeyRotationAck::Refused("a key of another mesh".into())
        } else if req.exclude.len() > MAX_EXCLUDED {
            KeyRotationAck::Refused(format!("more than {MAX_EXCLUDED} peers excluded"))
        } else if req.exclude.contains(&self.me) || req.exclude.contains(&from) {
            KeyRotationAck::Refused("the rotation excludes this peer or its sender".into())
        } else if req.key == self.key.get() {
            KeyRotationAck::Switched
        } else {
            match self.switch_key(req.key, &req.exclude).await {
                Ok(()) => {
                    info!(%from, "took a new mesh key from a peer");
                    self.pass_on(req, from);
                    KeyRotationAck::Switched
                }
                Err(e) => KeyRotationAck::Refused(e),
            }
        };
        if let KeyRotationAck::Refused(why) = &ack {
            warn!(%from, "refused a mesh key rotation: {why}");
        }
        if let Err(e) = self.net.respond_key(channel, ack).await {
            warn!("cannot answer a key rotation: {e}");
        }
    }

    /// Connected peers to hand a key to: not excluded, not `sender`.
    fn hand_over_targets(&self, exclude: &[PeerId], sender: Option<PeerId>) -> Vec<PeerId> {
        self.peers
            .connected()
            .into_iter()
            .filter(|p| *p != self.me && Some(*p) != sender && !exclude.contains(p))
            .filter(|p| !self.banned.contains(p))
            .collect()
    }

    /// Passes a rotation on to this peer's own connected peers, in the background.
    fn pass_on(&self, rotation: KeyRotation, sender: PeerId) {
        let targets = self.hand_over_targets(&rotation.exclude, Some(sender));
        let net = self.net.clone();
        tokio::spawn(async move {
            let answers = hand_over_all(&net, targets, &rotation).await;
            for (peer, outcome) in answers {
                if let Err(why) = outcome {
                    warn!(%peer, "cannot pass the new mesh key on: {why}");
                }
            }
        });
    }

    /// Uses `key` from now on (stored first, so a restart keeps it) and disconnects the
    /// excluded peers.
    async fn switch_key(&mut self, key: MeshKey, exclude: &[PeerId]) -> Result<(), String> {
        super::setup::store_mesh_key(&self.cfg.data_dir, key, Some(self.key.get()))
            .map_err(|e| format!("cannot store the new mesh key: {e}"))?;
        self.key.set(key);
        info!(
            excluded = exclude.len(),
            "mesh key rotated: new connections need the new key"
        );
        for p in exclude {
            self.punish(*p, "excluded by a mesh key rotation").await;
        }
        // The cloud actor bootstraps rented machines with a ticket: give it the new one.
        self.cloud_ready = false;
        Ok(())
    }
}

/// Hands `rotation` to every peer of `targets` at once: each with `Err` saying why it did
/// not take it.
async fn hand_over_all(
    net: &Client,
    targets: Vec<PeerId>,
    rotation: &KeyRotation,
) -> Vec<(PeerId, Result<(), String>)> {
    futures::future::join_all(
        targets
            .into_iter()
            .map(|peer| async move { (peer, hand_over(net, peer, rotation.clone()).await) }),
    )
    .await
}

/// Hands `rotation` to `peer`: `Err` says why it did not take it.
async fn hand_over(net: &Client, peer: PeerId, rotation: KeyRotation) -> Result<(), String> {
    match tokio::time::timeout(HAND_OVER_TIMEOUT, net.rotate_key(peer, rotation)).await {
        Ok(Ok(KeyRotationAck::Switched)) => Ok(()),
        Ok(Ok(KeyRotationAck::Refused(why))) => {
            Err(format!("refused: {}", crate::cli::printable(&why)))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {HAND_OVER_TIMEOUT:?}")),
    }
}
