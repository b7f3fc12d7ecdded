//! Renting one machine, step by step: an offer is ordered, the machine waited for, meshd
//! started on it over SSH and its node dialled until it is a peer of the mesh.
//!
//! Every step that changes what the provider bills is reported to the cloud actor
//! ([`super::manager`]) and acknowledged only once its record is on disk, so that a daemon
//! killed at any point leaves a record the next start can act on. A failure ends the task
//! with its reason; the actor then destroys the machine.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot, watch};

use super::account::Account;
use super::instance::{InstanceState, RentSpec};
use super::offers::Offer;
use super::rental::Activity;
use super::ssh::{self, Bootstrap, Remote, SshKey};
use super::{CloudError, now_unix};

/// What a rent task reports.
#[derive(Debug)]
pub enum Change {
    /// About to order `offer` at this price ($/h, the whole machine); the provider's orders
    /// before it (Clore), to recognise the new one.
    Offer(Box<Offer>, f64, Vec<u64>),
    /// The provider refused the order outright: nothing was made.
    NotOrdered,
    /// The provider made instance `instance`; billing started at `started` (Unix s).
    Created { instance: u64, started: f64 },
    /// It runs; its daemon will be reachable at `node`.
    Running { node: (String, u16) },
    /// meshd runs on it as peer `peer`.
    Started { peer: String },
    /// Its node is a live peer of the mesh.
    Joined,
}

pub struct Step {
    pub rental: u64,
    pub change: Change,
    /// Answered once the change is recorded.
    pub ack: oneshot::Sender<()>,
}

/// Everything one rent needs.
pub struct RentCtx {
    pub rental: u64,
    pub account: Arc<Account>,
    /// Offers not tried yet, best first, shared by the machines of one request.
    pub offers: Arc<Mutex<VecDeque<Offer>>>,
    pub spec: RentSpec,
    /// A spot bid the user set ($/h).
    pub bid: Option<f64>,
    pub steps: mpsc::Sender<Step>,
    pub ssh_key: SshKey,
    pub known_hosts: PathBuf,
    pub boot: Bootstrap,
    pub net: crate::net::Client,
    pub activity: watch::Receiver<Activity>,
    pub start_timeout: Duration,
}

/// How often a starting machine is looked at.
const SHOW_EVERY: Duration = Duration::from_secs(2);
/// How long a node that runs meshd may take to become a live peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);

impl RentCtx {
    async fn report(&self, change: Change) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.steps
            .send(Step {
                rental: self.rental,
                change,
                ack,
            })
            .await
            .map_err(|_| "the daemon is stopping".to_string())?;
        done.await.map_err(|_| "the daemon is stopping".to_string())
    }

    fn next_offer(&self) -> Option<Offer> {
        self.offers.lock().ok()?.pop_front()
    }
}

/// Rents one machine and joins it to the mesh. `Err` says why it failed.
pub async fn rent_one(mut ctx: RentCtx) -> Result<(), String> {
    let provider = ctx.account.provider();
    // 1. Order: the best offer left; one taken meanwhile gives way to the next.
    let (instance, offer) = loop {
        let Some(offer) = ctx.next_offer() else {
            return Err(format!(
                "no {} offer left to rent (others took them): try again or loosen the filters",
                provider.name()
            ));
        };
        let price = super::prepare::price(&offer, ctx.bid);
        ctx.spec.bid_usd_per_hour = offer.spot.then_some(price);
        let before = ctx
            .account
            .before_order()
            .await
            .map_err(|e| e.to_string())?;
        ctx.report(Change::Offer(
            Box::new(offer.clone()),
            price,
            before.clone(),
        ))
        .await?;
        match ctx.account.create(&offer, &ctx.spec, &before).await {
            Ok(id) => break (id, offer),
            Err(CloudError::OfferGone { .. }) => {
                tracing::info!(offer = offer.id, "offer gone; trying the next");
                ctx.report(Change::NotOrdered).await?;
                continue;
            }
            // Refused outright: nothing was made, nothing to look for.
            Err(
                e @ (CloudError::Api { .. }
                | CloudError::BadKey(_)
                | CloudError::MissingKey(_)
                | CloudError::RateLimited(_)
                | CloudError::Config(_)),
            ) => {
                ctx.report(Change::NotOrdered).await?;
                return Err(e.to_string());
            }
            // The outcome is unknown (a timeout, an answer without the id): the record keeps
            // the offer, and the next review finds and destroys whatever was made.
            Err(e) => return Err(e.to_string()),
        }
    };
    ctx.report(Change::Created {
        instance,
        started: now_unix(),
    })
    .await?;
    tracing::info!(provider = provider.name(), instance, gpu = %offer.gpu, "rented");
    ctx.account
        .authorize(instance, &ctx.ssh_key.public)
        .await
        .map_err(|e| e.to_string())?;

    // 2. Wait until it runs, bounded.
    let deadline = Instant::now() + ctx.start_timeout;
    let running = loop {
        match ctx.account.show(instance, ctx.spec.node_port).await {
            Ok(Some(i)) => match &i.state {
                InstanceState::Running if i.ssh.is_some() => break i,
                InstanceState::Failed(why) => {
                    return Err(format!(
                        "{} instance {instance} failed: {why}",
                        provider.name()
                    ));
                }
                InstanceState::Gone => {
                    return Err(format!("{} ended instance {instance}", provider.name()));
                }
                _ => {}
            },
            Ok(None) => {
                return Err(format!(
                    "{} no longer knows instance {instance}",
                    provider.name()
                ));
            }
            // A provider hiccup: the deadline bounds the retries.
            Err(e @ (CloudError::BadKey(_) | CloudError::MissingKey(_))) => {
                return Err(e.to_string());
            }
            Err(e) => tracing::warn!(instance, "cannot look at the instance: {e}"),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} instance {instance} did not run within {} s: destroyed (try another offer)",
                provider.name(),
                ctx.start_timeout.as_secs()
            ));
        }
        tokio::time::sleep(SHOW_EVERY).await;
    };
    let (Some((ssh_host, ssh_port)), Some(node)) = (running.ssh.clone(), running.node.clone())
    else {
        return Err(format!(
            "{} instance {instance} runs without port {} mapped: pick an offer with open ports",
            provider.name(),
            ctx.spec.node_port
        ));
    };
    ctx.report(Change::Running { node: node.clone() }).await?;

    // 3. SSH: the container's sshd may start a little after the instance reports running.
    let remote = Remote {
        user: "root".into(),
        host: ssh_host,
        port: ssh_port,
        key: ctx.ssh_key.clone(),
        known_hosts: ctx.known_hosts.clone(),
    };
    loop {
        match remote.run("logging in", "true", b"").await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("SSH to instance {instance} failed: {e}"));
            }
            Err(e) => tracing::debug!(instance, "SSH not ready: {e}"),
        }
        tokio::time::sleep(SHOW_EVERY).await;
    }
    let mut boot = ctx.boot.clone();
    boot.remote_dir = format!(
        "{}/{}-{instance}",
        boot.remote_dir.trim_end_matches('/'),
        provider.tag()
    );
    let peer = ssh::bootstrap(&remote, &boot)
        .await
        .map_err(|e| format!("bootstrap over SSH failed: {e}"))?;
    ctx.report(Change::Started { peer: peer.clone() }).await?;

    // 4. Dial the node until it is a live peer.
    let addr = node_addr(&node, &peer)
        .ok_or_else(|| format!("the node's address {}:{} is not usable", node.0, node.1))?;
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut dialled = Instant::now() - Duration::from_secs(60);
    loop {
        if ctx.activity.borrow().live.contains_key(&peer) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the node runs meshd but never joined the mesh through {addr}: is port {} open?",
                ctx.spec.node_port
            ));
        }
        if dialled.elapsed() > Duration::from_secs(5) {
            let _ = ctx.net.dial(addr.clone()).await;
            dialled = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ctx.activity.changed()).await;
    }
    ctx.report(Change::Joined).await?;
    tracing::info!(instance, %peer, "rented node joined the mesh");
    Ok(())
}

/// `/ip4/H/tcp/P/p2p/PEER`, or `/dns4/...` for a host name.
pub fn node_addr(node: &(String, u16), peer: &str) -> Option<Multiaddr> {
    let host = if node.0.parse::<std::net::Ipv4Addr>().is_ok() {
        format!("/ip4/{}", node.0)
    } else if node.0.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("/ip6/{}", node.0)
    } else {
        format!("/dns4/{}", node.0)
    };
    format!("{host}/tcp/{}/p2p/{peer}", node.1).parse().ok()
}
