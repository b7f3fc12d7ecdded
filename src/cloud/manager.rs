//! The cloud actor: rents machines, joins them to the mesh, and gives every one back.
//!
//! One task owns the rental records (sled tree `cloud`, see [`super::rental`]). Requests
//! come from the local API through a [`CloudHandle`]; the offer search runs as a task
//! ([`super::prepare`]), and each machine being rented is a task of its own
//! ([`super::rent::rent_one`]) that reports its steps back here and waits until they are on
//! disk. Every `MESHD_CLOUD_POLL_SECS` (and at start) the providers' instance lists are read
//! off the loop and [`super::rental::review`] decides what to destroy: that one rule set
//! covers a finished job, an idle node, a budget, an outbid spot instance, and whatever a
//! crash of this daemon left behind. When the daemon stops, every rental is released before
//! it exits. Nothing on this loop waits on a provider.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::account::Account;
use super::handle::{CloudHandle, Request};
use super::instance::{Instance, RentSpec};
use super::prepare::{Prepared, prepare};
use super::rent::{Change, RentCtx, Step, rent_one};
use super::rental::{self, Action, Activity, Group, Phase, Rental, Why};
use super::ssh::Bootstrap;
use super::{CloudConfig, CloudError, Provider, now_unix};
use crate::api::types::{CloudReleaseRequest, CloudReleaseResponse, CloudRentResponse};

mod reconcile;

/// What the actor needs from the daemon.
pub struct CloudEnv {
    pub config: CloudConfig,
    /// The records.
    pub tree: sled::Tree,
    /// `<data dir>/cloud`: the SSH key and known-hosts files.
    pub dir: PathBuf,
    /// This daemon's peer id.
    pub me: String,
    /// The meshd binary uploaded to nodes.
    pub binary: PathBuf,
    pub net: crate::net::Client,
    pub activity: watch::Receiver<Activity>,
}

/// Released records are kept this long for `meshd cloud list` and the spend.
const KEEP_RELEASED_SECS: f64 = 7.0 * 86_400.0;
/// The longest a stopping daemon spends giving machines back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);
/// A rent that has not joined this long after its start timeout (a bootstrap that hangs:
/// a stalled download, a silent machine) is given up and its machine destroyed.
const BOOTSTRAP_ALLOWANCE: Duration = Duration::from_secs(30 * 60);

/// Starts the actor. It runs until `shutdown`, then releases every rental (bounded) and ends.
pub fn spawn(
    env: CloudEnv,
    shutdown: CancellationToken,
) -> (CloudHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let mut rentals = BTreeMap::new();
    let now = now_unix();
    for (k, v) in env.tree.iter().flatten() {
        match postcard::from_bytes::<Rental>(&v) {
            Ok(r)
                if r.phase == Phase::Released
                    && r.ended_unix.is_some_and(|t| now - t > KEEP_RELEASED_SECS) =>
            {
                let _ = env.tree.remove(k);
            }
            Ok(r) => {
                rentals.insert(r.id, r);
            }
            // Kept on disk: a later meshd may read it.
            Err(e) => warn!(
                "a rental record cannot be read ({e}); its machine, if any, is destroyed only \
                 if its label names this daemon: check the provider's console"
            ),
        }
    }
    let (snapshot, snap_rx) = watch::channel(rentals.values().cloned().collect());
    let (steps_tx, steps_rx) = mpsc::channel(16);
    let m = Manager {
        env,
        rentals,
        accounts: HashMap::new(),
        ready: None,
        renting: HashMap::new(),
        rent_ids: HashMap::new(),
        rents: JoinSet::new(),
        bg: JoinSet::new(),
        listing: false,
        listed_once: HashSet::new(),
        destroying: HashSet::new(),
        idle_since: HashMap::new(),
        steps_tx,
        snapshot,
    };
    let handle = tokio::spawn(m.run(rx, steps_rx, shutdown));
    (
        CloudHandle {
            tx,
            rentals: snap_rx,
        },
        handle,
    )
}

struct Ready {
    ticket: String,
    label_prefix: String,
}

type RentReply = oneshot::Sender<Result<CloudRentResponse, String>>;

/// Results of work done off the loop.
enum Bg {
    /// Instance lists; the providers whose key was refused.
    Listed(HashMap<Provider, Vec<Instance>>, Vec<Provider>),
    Destroyed {
        provider: Provider,
        instance: u64,
        rental: Option<u64>,
        finish: bool,
        result: Result<(), CloudError>,
    },
    Prepared(Box<(Result<Prepared, String>, RentReply)>),
}

struct Manager {
    env: CloudEnv,
    rentals: BTreeMap<u64, Rental>,
    accounts: HashMap<Provider, Arc<Account>>,
    ready: Option<Ready>,
    /// Rents in progress, by rental, and the rental of each rent task.
    renting: HashMap<u64, AbortHandle>,
    rent_ids: HashMap<tokio::task::Id, u64>,
    rents: JoinSet<Result<(), String>>,
    bg: JoinSet<Bg>,
    listing: bool,
    /// Providers listed since start (each provider with a key is, once).
    listed_once: HashSet<Provider>,
    destroying: HashSet<(Provider, u64)>,
    idle_since: HashMap<u64, f64>,
    steps_tx: mpsc::Sender<Step>,
    snapshot: watch::Sender<Vec<Rental>>,
}

impl Manager {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut steps: mpsc::Receiver<Step>,
        shutdown: CancellationToken,
    ) {
        let every = Duration::from_secs(self.env.config.node.poll_secs);
        let mut poll = tokio::time::interval(every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(step) = steps.recv() => self.on_step(step).await,
                Some(res) = self.rents.join_next_with_id() => match res {
                    Ok((task, result)) => self.on_rent_done(task, result),
                    Err(e) if e.is_cancelled() => {
                        self.rent_ids.remove(&e.id());
                    }
                    Err(e) => {
                        warn!("a rent task failed: {e}");
                        self.on_rent_done(e.id(), Err("the rent task crashed".into()));
                    }
                },
                Some(res) = self.bg.join_next() => match res {
                    Ok(bg) => self.on_bg(bg).await,
                    Err(e) => {
                        warn!("a cloud task failed: {e}");
                        self.listing = false;
                    }
                },
                Some(req) = rx.recv() => self.on_request(req),
                _ = poll.tick() => self.on_poll().await,
            }
        }
        // Steps already sent (an instance just created) are recorded before releasing.
        while let Ok(step) = steps.try_recv() {
            self.on_step(step).await;
        }
        self.drain().await;
    }

    /// Writes record `id`; `Err` if it is not on disk (then nothing is rented on it).
    async fn persist(&mut self, id: u64) -> Result<(), String> {
        self.publish();
        self.write(id)?;
        self.env
            .tree
            .flush_async()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Writes record `id` into the tree (on disk at sled's next flush).
    fn write(&self, id: u64) -> Result<(), String> {
        let Some(r) = self.rentals.get(&id) else {
            return Ok(());
        };
        let bytes = postcard::to_stdvec(r).map_err(|e| e.to_string())?;
        self.env
            .tree
            .insert(id.to_be_bytes(), bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Makes the records visible to the API (list, peers, status).
    fn publish(&self) {
        self.snapshot
            .send_replace(self.rentals.values().cloned().collect());
    }

    /// Like [`Self::persist`] where nothing waits on the outcome.
    async fn save(&mut self, id: u64) {
        if let Err(e) = self.persist(id).await {
            warn!(rental = id, "cannot record the rental: {e}");
        }
    }

    fn account(&mut self, p: Provider) -> Result<Arc<Account>, String> {
        if let Some(a) = self.accounts.get(&p) {
            return Ok(a.clone());
        }
        // A key added (or fixed) since start is picked up.
        if let Ok(cfg) = CloudConfig::load() {
            self.env.config = cfg;
        }
        let a = Arc::new(
            Account::new(&self.env.config, p)
                .map_err(|e| format!("{e}, where the daemon (meshd join) can read it"))?,
        );
        self.accounts.insert(p, a.clone());
        Ok(a)
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Ready { ticket, mesh_id } => {
                let label_prefix = rental::label_prefix(&mesh_id, &self.env.me);
                self.ready = Some(Ready {
                    ticket,
                    label_prefix,
                });
                self.start_listing();
            }
            Request::Rent(req, reply) => {
                if self.ready.is_none() {
                    let _ = reply.send(Err(
                        "the daemon is still starting: try again in a moment".into()
                    ));
                    return;
                }
                let account = match self.account(req.provider) {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let activity = self.env.activity.clone();
                let dir = self.env.dir.clone();
                self.bg.spawn(async move {
                    let prepared = prepare(account, *req, activity, dir).await;
                    Bg::Prepared(Box::new((prepared, reply)))
                });
            }
            Request::Release(req, reply) => {
                let _ = reply.send(Ok(self.release(req)));
            }
        }
    }

    /// Records a rental per machine (on disk before anything is ordered) and starts its rent.
    async fn start_rents(&mut self, p: Prepared) -> Result<CloudRentResponse, String> {
        let Some(ready) = &self.ready else {
            return Err("the daemon is still starting: try again in a moment".into());
        };
        let (ticket, label_prefix) = (ready.ticket.clone(), ready.label_prefix.clone());
        let account = self.account(p.req.provider)?;
        let req = &p.req;
        let group = Group {
            id: self.rentals.values().map(|r| r.group.id).max().unwrap_or(0) + 1,
            job: p.job,
            budget_usd: req.budget_usd,
            idle_release_secs: req.idle_release_secs,
        };
        let queue = Arc::new(Mutex::new(VecDeque::from(p.offers)));
        let node = self.env.config.node.clone();
        let start_timeout = Duration::from_secs(node.start_timeout_secs);
        let mut ids = Vec::new();
        for _ in 0..p.count {
            let id = self.rentals.keys().max().copied().unwrap_or(0) + 1;
            let label = format!("{label_prefix}{id}");
            self.rentals.insert(
                id,
                Rental {
                    id,
                    provider: req.provider,
                    offer: None,
                    gpu: String::new(),
                    gpus: 0,
                    usd_per_hour: 0.0,
                    spot: req.filter.spot,
                    label: label.clone(),
                    node_port: req.node_port,
                    ordered_unix: now_unix(),
                    started_unix: None,
                    ended_unix: None,
                    instance: None,
                    preexisting: Vec::new(),
                    phase: Phase::Ordering,
                    peer: None,
                    node: None,
                    group: group.clone(),
                    note: None,
                },
            );
            if let Err(e) = self.persist(id).await {
                self.rentals.remove(&id);
                let _ = self.env.tree.remove(id.to_be_bytes());
                return Err(format!(
                    "cannot record the rental ({e}): nothing more rented; free disk space"
                ));
            }
            let ctx = RentCtx {
                rental: id,
                account: account.clone(),
                offers: queue.clone(),
                spec: RentSpec {
                    image: req.image.clone().unwrap_or_else(|| node.image.clone()),
                    label,
                    node_port: req.node_port,
                    ssh_public_key: p.key.public.clone(),
                    bid_usd_per_hour: None,
                    disk_gb: super::vast::DISK_GB,
                },
                bid: req.bid_usd_per_hour,
                steps: self.steps_tx.clone(),
                ssh_key: p.key.clone(),
                known_hosts: self.env.dir.join(format!("known_hosts-{id}")),
                boot: Bootstrap {
                    binary: node
                        .binary
                        .clone()
                        .unwrap_or_else(|| self.env.binary.clone()),
                    ticket: ticket.clone(),
                    remote_dir: node.remote_dir.clone(),
                    listen_ip: node.listen_ip.clone(),
                    node_port: req.node_port,
                    blender_url: Some(node.blender_url_for(
                        p.blender.version.as_deref(),
                        p.blender.require.as_deref(),
                    )),
                    blender_req: p.blender.require.clone(),
                },
                net: self.env.net.clone(),
                activity: self.env.activity.clone(),
                start_timeout,
            };
            let ceiling = start_timeout + BOOTSTRAP_ALLOWANCE;
            let abort = self.rents.spawn(async move {
                tokio::time::timeout(ceiling, rent_one(ctx))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "the machine did not join within {} min: destroyed",
                            ceiling.as_secs() / 60
                        ))
                    })
            });
            self.rent_ids.insert(abort.id(), id);
            self.renting.insert(id, abort);
            ids.push(id);
        }
        info!(
            group = group.id,
            machines = p.count,
            provider = req.provider.name(),
            "renting"
        );
        Ok(CloudRentResponse {
            group: group.id,
            rentals: ids,
            short_by: req.count.saturating_sub(p.count as u32),
        })
    }

    fn release(&mut self, req: CloudReleaseRequest) -> CloudReleaseResponse {
        let picked: Vec<u64> = self
            .rentals
            .values()
            .filter(|r| r.phase.is_live() && r.phase != Phase::Releasing)
            .filter(|r| {
                req.all
                    || req.group == Some(r.group.id)
                    || req.ids.contains(&r.id)
                    || r.instance.is_some_and(|i| req.ids.contains(&i))
            })
            .map(|r| r.id)
            .collect();
        self.release_all(&picked, Why::Asked);
        // Finish them as soon as the provider confirms.
        self.start_listing();
        CloudReleaseResponse { released: picked }
    }

    async fn on_step(&mut self, step: Step) {
        let Some(r) = self.rentals.get_mut(&step.rental) else {
            return;
        };
        if r.phase == Phase::Releasing {
            // Released meanwhile (its task is being aborted): keep what it learnt, so the
            // machine it just made is destroyed too. No ack: the task stops.
            if let Change::Created { instance, started } = step.change {
                r.instance = Some(instance);
                r.started_unix = Some(started);
                let provider = r.provider;
                self.save(step.rental).await;
                self.destroy(provider, instance, Some(step.rental), false);
            }
            return;
        }
        match step.change {
            Change::Offer(offer, price, preexisting) => {
                r.offer = Some(offer.id);
                r.gpu = offer.model.clone().unwrap_or(offer.gpu.clone());
                r.gpus = offer.gpus;
                r.usd_per_hour = price;
                r.preexisting = preexisting;
            }
            Change::NotOrdered => r.offer = None,
            Change::Created { instance, started } => {
                r.instance = Some(instance);
                r.started_unix = Some(started);
                r.phase = Phase::Starting;
            }
            Change::Running { node } => {
                r.node = Some(node);
                r.phase = Phase::Bootstrapping;
            }
            Change::Started { peer } => r.peer = Some(peer),
            Change::Joined => r.phase = Phase::Joined,
        }
        // Unacknowledged, a step stops its rent (and the machine is destroyed).
        match self.persist(step.rental).await {
            Ok(()) => {
                let _ = step.ack.send(());
            }
            Err(e) => warn!(rental = step.rental, "cannot record the rental: {e}"),
        }
    }

    fn on_rent_done(&mut self, task: tokio::task::Id, result: Result<(), String>) {
        let Some(id) = self.rent_ids.remove(&task) else {
            return;
        };
        self.renting.remove(&id);
        if let Err(why) = result {
            warn!(rental = id, "renting failed: {why}");
            self.apply(vec![Action::Release {
                rental: id,
                why: Why::Failed(why),
            }]);
        }
    }

    async fn on_bg(&mut self, bg: Bg) {
        match bg {
            Bg::Listed(listed, refused) => {
                self.listing = false;
                for p in refused {
                    // A key fixed meanwhile is read again on the next call.
                    self.accounts.remove(&p);
                }
                self.listed_once.extend(listed.keys().copied());
                self.review(&listed);
            }
            Bg::Destroyed {
                provider,
                instance,
                rental,
                finish,
                result,
            } => {
                self.destroying.remove(&(provider, instance));
                match result {
                    Ok(()) => {
                        info!(provider = provider.name(), instance, "released");
                        if let Some(id) = rental
                            && let Some(r) = self.rentals.get_mut(&id)
                        {
                            r.ended_unix.get_or_insert(now_unix());
                            if finish {
                                r.phase = Phase::Released;
                            }
                            self.save(id).await;
                        }
                    }
                    Err(e) => {
                        if matches!(e, CloudError::BadKey(_)) {
                            self.accounts.remove(&provider);
                        }
                        warn!(
                            provider = provider.name(),
                            instance, "cannot release yet (retried at the next check): {e}"
                        );
                    }
                }
            }
            Bg::Prepared(done) => {
                let (prepared, reply) = *done;
                let answer = match prepared {
                    Ok(p) => self.start_rents(p).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
        }
    }

    async fn on_poll(&mut self) {
        let activity = self.env.activity.borrow().clone();
        let list: Vec<Rental> = self.rentals.values().cloned().collect();
        rental::track_idle(&list, &activity, &mut self.idle_since, now_unix());
        // Keep joined nodes connected: this daemon dials them (they may not reach it).
        for r in list.iter().filter(|r| r.phase == Phase::Joined) {
            if let (Some(peer), Some(node)) = (&r.peer, &r.node)
                && !activity.live.contains_key(peer)
                && let Some(addr) = super::rent::node_addr(node, peer)
            {
                let _ = self.env.net.dial(addr).await;
            }
        }
        if self.listing {
            // The release rules that need no list still run.
            self.review(&HashMap::new());
        } else {
            self.start_listing();
        }
    }

    /// The daemon stops: every rental is released, and the providers are asked until none
    /// is listed any more (bounded).
    async fn drain(mut self) {
        self.rents.abort_all();
        self.renting.clear();
        let live: Vec<u64> = self
            .rentals
            .values()
            .filter(|r| r.phase.is_live())
            .map(|r| r.id)
            .collect();
        if live.is_empty() {
            return;
        }
        info!(machines = live.len(), "releasing every rented machine");
        self.release_all(&live, Why::Shutdown);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            while let Ok(Some(res)) = tokio::time::timeout_at(deadline, self.bg.join_next()).await {
                match res {
                    // A rent prepared meanwhile is not started.
                    Ok(Bg::Prepared(done)) => {
                        let _ = done.1.send(Err("the daemon is stopping".into()));
                    }
                    Ok(bg) => self.on_bg(bg).await,
                    Err(_) => self.listing = false,
                }
            }
            if !self.rentals.values().any(|r| r.phase.is_live()) {
                break;
            }
            self.listing = false;
            self.start_listing();
            if !self.listing {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = self.env.tree.flush_async().await;
        let left = self.rentals.values().filter(|r| r.phase.is_live()).count();
        if left > 0 {
            warn!(
                left,
                "some machines could not be confirmed released: the next start retries"
            );
        }
    }
}
