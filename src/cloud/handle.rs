//! The local API's side of the cloud actor ([`super::manager`]): requests over a channel,
//! and views of the records read from a `watch` snapshot without a round trip.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot, watch};

use super::now_unix;
use super::rental::{Phase, Rental};
use crate::api::types::{
    CloudListResponse, CloudReleaseRequest, CloudReleaseResponse, CloudRentRequest,
    CloudRentResponse, CloudSpend, RentalInfo, RentedPeer,
};

/// The local API's way to the actor. Listing reads the latest records without a round trip.
#[derive(Clone)]
pub struct CloudHandle {
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) rentals: watch::Receiver<Vec<Rental>>,
}

pub(super) enum Request {
    /// The daemon listens: its ticket (holds the mesh key) and mesh id.
    Ready { ticket: String, mesh_id: String },
    Rent(
        Box<CloudRentRequest>,
        oneshot::Sender<Result<CloudRentResponse, String>>,
    ),
    Release(
        CloudReleaseRequest,
        oneshot::Sender<Result<CloudReleaseResponse, String>>,
    ),
}

const GONE: &str = "the daemon is stopping";

impl CloudHandle {
    pub async fn ready(&self, ticket: String, mesh_id: String) {
        let _ = self.tx.send(Request::Ready { ticket, mesh_id }).await;
    }

    pub async fn rent(&self, req: CloudRentRequest) -> Result<CloudRentResponse, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Rent(Box::new(req), tx))
            .await
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    pub async fn release(&self, req: CloudReleaseRequest) -> Result<CloudReleaseResponse, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Release(req, tx))
            .await
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    /// Every rental on record, live ones first.
    pub fn list(&self) -> CloudListResponse {
        let now = now_unix();
        let mut rentals: Vec<RentalInfo> = self
            .rentals
            .borrow()
            .iter()
            .map(|r| RentalInfo {
                id: r.id,
                provider: r.provider,
                instance: r.instance,
                offer: r.offer,
                node: r.node.as_ref().map(|(h, p)| format!("{h}:{p}")),
                phase: r.phase,
                gpu: r.gpu.clone(),
                gpus: r.gpus,
                usd_per_hour: r.usd_per_hour,
                spent_usd: r.spent_usd(now),
                spot: r.spot,
                peer: r.peer.clone(),
                job: r.group.job.map(|j| j.to_hex()),
                group: r.group.id,
                budget_usd: r.group.budget_usd,
                note: r.note.clone(),
            })
            .collect();
        rentals.sort_by_key(|r| (r.phase == Phase::Released, std::cmp::Reverse(r.id)));
        let usd_per_hour = self
            .rentals
            .borrow()
            .iter()
            .filter(|r| r.billing())
            .map(|r| r.usd_per_hour)
            .sum();
        let spent_usd = rentals.iter().map(|r| r.spent_usd).sum();
        CloudListResponse {
            rentals,
            usd_per_hour,
            spent_usd,
        }
    }

    /// The spend, for `meshd status`; `None` when nothing was rented.
    /// Dollars spent so far on the machines rented for `job`, if any were.
    pub fn job_spend(&self, job: &crate::ids::JobId) -> Option<f64> {
        let rentals = self.rentals.borrow();
        let now = now_unix();
        let mut of_job = rentals
            .iter()
            .filter(|r| r.group.job.as_ref() == Some(job))
            .peekable();
        of_job.peek()?;
        Some(of_job.map(|r| r.spent_usd(now)).sum())
    }

    pub fn spend(&self) -> Option<CloudSpend> {
        let rentals = self.rentals.borrow();
        if rentals.is_empty() {
            return None;
        }
        let now = now_unix();
        Some(CloudSpend {
            machines: rentals.iter().filter(|r| r.billing()).count(),
            usd_per_hour: rentals
                .iter()
                .filter(|r| r.billing())
                .map(|r| r.usd_per_hour)
                .sum(),
            spent_usd: rentals.iter().map(|r| r.spent_usd(now)).sum(),
        })
    }

    /// Rented peers by peer id.
    pub fn rented_peers(&self) -> HashMap<String, RentedPeer> {
        self.rentals
            .borrow()
            .iter()
            .filter(|r| r.phase.is_live())
            .filter_map(|r| {
                Some((
                    r.peer.clone()?,
                    RentedPeer {
                        provider: r.provider,
                        instance: r.instance,
                        usd_per_hour: r.usd_per_hour,
                    },
                ))
            })
            .collect()
    }
}
