//! The cloud actor: rents machines, joins them to the mesh, and gives every one back.
//!
//! One task owns the rental records (sled tree `cloud`, see [`super::rental`]). Requests
//! come from the local API through a [`CloudHandle`]; each machine being rented is a task of
//! its own ([`super::rent::rent_one`]) that reports its steps back here to be recorded.
//! Every `MESHD_CLOUD_POLL_SECS` (and at start) the providers' instance lists are read off
//! the loop and [`super::rental::review`] decides what to destroy: that one rule set covers
//! a finished job, an idle node, a budget, an outbid spot instance, and whatever a crash of
//! this daemon left behind. When the daemon stops, every rental is released before it exits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::account::Account;
use super::instance::{Instance, RentSpec};
use super::offers::{self, Filter};
use super::rent::{Change, RentCtx, Step, rent_one};
use super::rental::{self, Action, Activity, Group, Phase, Rental, Why};
use super::ssh::{Bootstrap, SshKey};
use super::{CloudConfig, Provider};
use crate::api::types::{
    CloudListResponse, CloudReleaseRequest, CloudReleaseResponse, CloudRentRequest,
    CloudRentResponse, CloudSpend, RentalInfo, RentedPeer,
};
use crate::ids::JobId;

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

/// The local API's way to the actor. Listing reads the latest records without a round trip.
#[derive(Clone)]
pub struct CloudHandle {
    tx: mpsc::Sender<Request>,
    rentals: watch::Receiver<Vec<Rental>>,
}

enum Request {
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

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Released records are kept this long for `meshd cloud list` and the spend.
const KEEP_RELEASED_SECS: f64 = 7.0 * 86_400.0;
/// The longest a stopping daemon spends giving machines back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

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
            Err(e) => warn!("unreadable rental record dropped: {e}"),
        }
    }
    let (snapshot, snap_rx) = watch::channel(rentals.values().cloned().collect());
    let (steps_tx, steps_rx) = mpsc::channel(16);
    let m = Manager {
        env,
        rentals,
        accounts: HashMap::new(),
        ssh_key: None,
        ready: None,
        renting: HashMap::new(),
        rents: JoinSet::new(),
        bg: JoinSet::new(),
        listing: false,
        reviewed_all: false,
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

/// Results of provider calls made off the loop.
enum Bg {
    Listed(HashMap<Provider, Vec<Instance>>),
    Destroyed {
        provider: Provider,
        instance: u64,
        rental: Option<u64>,
        result: Result<(), String>,
    },
}

struct Manager {
    env: CloudEnv,
    rentals: BTreeMap<u64, Rental>,
    accounts: HashMap<Provider, Arc<Account>>,
    ssh_key: Option<SshKey>,
    ready: Option<Ready>,
    /// Rents in progress, by rental.
    renting: HashMap<u64, AbortHandle>,
    rents: JoinSet<(u64, Result<(), String>)>,
    bg: JoinSet<Bg>,
    listing: bool,
    /// Every provider with a key was listed once since start.
    reviewed_all: bool,
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
                Some(res) = self.rents.join_next() => match res {
                    Ok((id, result)) => self.on_rent_done(id, result),
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => warn!("a rent task failed: {e}"),
                },
                Some(res) = self.bg.join_next() => match res {
                    Ok(bg) => self.on_bg(bg),
                    Err(e) => {
                        warn!("a cloud task failed: {e}");
                        self.listing = false;
                    }
                },
                Some(req) = rx.recv() => self.on_request(req).await,
                _ = poll.tick() => self.on_poll().await,
            }
        }
        self.drain().await;
    }

    fn persist(&mut self, id: u64) {
        if let Some(r) = self.rentals.get(&id) {
            match postcard::to_stdvec(r) {
                Ok(bytes) => {
                    if let Err(e) = self.env.tree.insert(id.to_be_bytes(), bytes) {
                        warn!(rental = id, "cannot record the rental: {e}");
                    }
                }
                Err(e) => warn!(rental = id, "cannot encode the rental: {e}"),
            }
        }
        self.snapshot
            .send_replace(self.rentals.values().cloned().collect());
    }

    /// Persists and waits until the record is on disk.
    async fn persist_durably(&mut self, id: u64) {
        self.persist(id);
        if let Err(e) = self.env.tree.flush_async().await {
            warn!(rental = id, "cannot flush the rental record: {e}");
        }
    }

    fn account(&mut self, p: Provider) -> Result<Arc<Account>, String> {
        if let Some(a) = self.accounts.get(&p) {
            return Ok(a.clone());
        }
        // A key added since start is picked up.
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

    async fn on_request(&mut self, req: Request) {
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
                let _ = reply.send(self.rent(*req).await);
            }
            Request::Release(req, reply) => {
                let _ = reply.send(Ok(self.release(req)));
            }
        }
    }

    async fn rent(&mut self, req: CloudRentRequest) -> Result<CloudRentResponse, String> {
        let Some(ready) = &self.ready else {
            return Err("the daemon is still starting: try again in a moment".into());
        };
        let ticket = ready.ticket.clone();
        let label_prefix = ready.label_prefix.clone();
        validate(&req)?;
        let job = match &req.job {
            None => None,
            Some(j) => {
                let id: JobId = j.parse().map_err(|_| format!("{j:?} is not a job id"))?;
                self.wait_for_job(&id).await?;
                Some(id)
            }
        };
        let account = self.account(req.provider)?;
        let filter = Filter {
            gpu: req.gpu.clone(),
            min_vram_gb: req.min_vram_gb,
            max_usd_per_hour: req.max_usd_per_hour,
            country: req.region.clone(),
            min_reliability: req.min_reliability,
            spot: req.spot,
        };
        let mut found = account.offers(&filter).await.map_err(|e| e.to_string())?;
        offers::rank(&mut found);
        if found.is_empty() {
            return Err(format!(
                "no {} offer matches: loosen the filters (see meshd cloud offers)",
                req.provider.name()
            ));
        }
        let price = |o: &offers::Offer| {
            if o.spot {
                req.bid_usd_per_hour.unwrap_or(o.usd_per_hour * 1.1)
            } else {
                o.usd_per_hour
            }
        };
        let wanted = (req.count as usize).min(found.len());
        let prices: Vec<f64> = found.iter().take(wanted).map(price).collect();
        let n = rental::affordable(&prices, req.budget_usd);
        if n == 0 {
            return Err(format!(
                "a budget of ${:.2} does not cover one hour of the best offer (${:.3}/h): raise --budget",
                req.budget_usd.unwrap_or(0.0),
                prices.first().copied().unwrap_or(0.0)
            ));
        }
        let key = match &self.ssh_key {
            Some(k) => k.clone(),
            None => {
                let k = SshKey::load_or_create(&self.env.dir)
                    .await
                    .map_err(|e| e.to_string())?;
                self.ssh_key = Some(k.clone());
                k
            }
        };
        let group = Group {
            id: self.rentals.values().map(|r| r.group.id).max().unwrap_or(0) + 1,
            job,
            budget_usd: req.budget_usd,
            idle_release_secs: req.idle_release_secs,
        };
        let queue = Arc::new(Mutex::new(VecDeque::from(found)));
        let node = self.env.config.node.clone();
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = self.rentals.keys().max().copied().unwrap_or(0) + 1;
            let label = format!("{label_prefix}{id}");
            let r = Rental {
                id,
                provider: req.provider,
                offer: None,
                gpu: String::new(),
                gpus: 0,
                usd_per_hour: 0.0,
                spot: req.spot,
                label: label.clone(),
                node_port: req.node_port,
                ordered_unix: now_unix(),
                started_unix: None,
                ended_unix: None,
                instance: None,
                phase: Phase::Ordering,
                peer: None,
                node: None,
                group: group.clone(),
                note: None,
            };
            self.rentals.insert(id, r);
            self.persist_durably(id).await;
            let ctx = RentCtx {
                rental: id,
                account: account.clone(),
                offers: queue.clone(),
                spec: RentSpec {
                    image: req.image.clone().unwrap_or_else(|| node.image.clone()),
                    label,
                    node_port: req.node_port,
                    ssh_public_key: key.public.clone(),
                    bid_usd_per_hour: None,
                    disk_gb: super::vast::DISK_GB,
                },
                bid: req.bid_usd_per_hour,
                steps: self.steps_tx.clone(),
                ssh_key: key.clone(),
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
                    peers: Vec::new(),
                    blender_url: Some(node.blender_url.clone()),
                },
                net: self.env.net.clone(),
                activity: self.env.activity.clone(),
                start_timeout: Duration::from_secs(node.start_timeout_secs),
            };
            let abort = self.rents.spawn(async move { (id, rent_one(ctx).await) });
            self.renting.insert(id, abort);
            ids.push(id);
        }
        info!(
            group = group.id,
            machines = n,
            provider = req.provider.name(),
            "renting"
        );
        Ok(CloudRentResponse {
            group: group.id,
            rentals: ids,
            short_by: req.count.saturating_sub(n as u32),
        })
    }

    /// A job named by a rent must be running here (the daemon reports it within a
    /// heartbeat of its submission).
    async fn wait_for_job(&mut self, id: &JobId) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if self.env.activity.borrow().running_jobs.contains(id) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, self.env.activity.changed())
                .await
                .is_err()
            {
                return Err(format!(
                    "job {} is not running on this daemon: machines are rented for a job that is",
                    id.short()
                ));
            }
        }
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
        let actions: Vec<Action> = picked
            .iter()
            .map(|id| Action::Release {
                rental: *id,
                why: Why::Asked,
            })
            .collect();
        self.apply(actions);
        CloudReleaseResponse { released: picked }
    }

    async fn on_step(&mut self, step: Step) {
        let Some(r) = self.rentals.get_mut(&step.rental) else {
            return;
        };
        if r.phase == Phase::Releasing {
            // Released meanwhile (its task is being aborted): keep what it learnt, so the
            // machine it just made is destroyed too.
            if let Change::Created { instance, started } = step.change {
                r.instance = Some(instance);
                r.started_unix = Some(started);
                let provider = r.provider;
                self.persist_durably(step.rental).await;
                self.destroy(provider, instance, Some(step.rental));
            }
            return;
        }
        match step.change {
            Change::Offer(offer, price) => {
                r.offer = Some(offer.id);
                r.gpu = offer.model.clone().unwrap_or(offer.gpu.clone());
                r.gpus = offer.gpus;
                r.usd_per_hour = price;
            }
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
        self.persist_durably(step.rental).await;
        let _ = step.ack.send(());
    }

    fn on_rent_done(&mut self, id: u64, result: Result<(), String>) {
        self.renting.remove(&id);
        if let Err(why) = result {
            warn!(rental = id, "renting failed: {why}");
            self.apply(vec![Action::Release {
                rental: id,
                why: Why::Failed(why),
            }]);
        }
    }

    fn on_bg(&mut self, bg: Bg) {
        match bg {
            Bg::Listed(listed) => {
                self.listing = false;
                if !listed.is_empty() {
                    self.review(&listed);
                }
            }
            Bg::Destroyed {
                provider,
                instance,
                rental,
                result,
            } => {
                self.destroying.remove(&(provider, instance));
                match result {
                    Ok(()) => {
                        info!(provider = provider.name(), instance, "released");
                        if let Some(id) = rental
                            && let Some(r) = self.rentals.get_mut(&id)
                            && r.ended_unix.is_none()
                        {
                            r.ended_unix = Some(now_unix());
                            self.persist(id);
                        }
                    }
                    Err(e) => warn!(
                        provider = provider.name(),
                        instance, "cannot release yet (retried at the next check): {e}"
                    ),
                }
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
        self.start_listing();
    }

    /// Reads the instance lists of the providers this daemon rents from (every provider
    /// with a key, the first time), off the loop.
    fn start_listing(&mut self) {
        if self.listing || self.ready.is_none() {
            return;
        }
        let mut providers: HashSet<Provider> = self
            .rentals
            .values()
            .filter(|r| r.phase.is_live())
            .map(|r| r.provider)
            .collect();
        if !self.reviewed_all {
            for p in [Provider::Vast, Provider::Clore] {
                if self.env.config.key(p).is_some() {
                    providers.insert(p);
                }
            }
        }
        let mut accounts = Vec::new();
        for p in providers {
            match self.account(p) {
                Ok(a) => accounts.push(a),
                Err(e) => warn!("cannot check {} rentals: {e}", p.name()),
            }
        }
        if accounts.is_empty() {
            return;
        }
        self.listing = true;
        self.reviewed_all = true;
        self.bg.spawn(async move {
            let mut listed = HashMap::new();
            for a in accounts {
                // The node port only fills in addresses, which a review does not use.
                match a.list(0).await {
                    Ok(l) => {
                        listed.insert(a.provider(), l);
                    }
                    Err(e) => warn!("cannot list {} instances: {e}", a.provider().name()),
                }
            }
            Bg::Listed(listed)
        });
    }

    fn review(&mut self, listed: &HashMap<Provider, Vec<Instance>>) {
        let Some(ready) = &self.ready else {
            return;
        };
        let list: Vec<Rental> = self.rentals.values().cloned().collect();
        let activity = self.env.activity.borrow().clone();
        let renting: HashSet<u64> = self.renting.keys().copied().collect();
        let actions = rental::review(
            &list,
            listed,
            &activity,
            &renting,
            &self.idle_since,
            &ready.label_prefix,
            now_unix(),
        );
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Release { rental, why } => {
                    if let Some(task) = self.renting.remove(&rental) {
                        task.abort();
                    }
                    let Some(r) = self.rentals.get_mut(&rental) else {
                        continue;
                    };
                    if r.phase == Phase::Releasing || r.phase == Phase::Released {
                        continue;
                    }
                    info!(rental, instance = ?r.instance, "releasing: {why}");
                    r.phase = Phase::Releasing;
                    r.note = Some(why.to_string());
                    let (provider, instance) = (r.provider, r.instance);
                    self.persist(rental);
                    if let Some(i) = instance {
                        self.destroy(provider, i, Some(rental));
                    }
                }
                Action::Destroy {
                    provider,
                    instance,
                    rental,
                } => self.destroy(provider, instance, rental),
                Action::Adopt { rental, instance } => {
                    if let Some(r) = self.rentals.get_mut(&rental) {
                        r.instance = Some(instance);
                        self.persist(rental);
                    }
                }
                Action::Finish { rental } => {
                    if let Some(r) = self.rentals.get_mut(&rental) {
                        r.phase = Phase::Released;
                        r.ended_unix.get_or_insert(now_unix());
                        self.persist(rental);
                        let _ = std::fs::remove_file(
                            self.env.dir.join(format!("known_hosts-{rental}")),
                        );
                    }
                }
            }
        }
    }

    fn destroy(&mut self, provider: Provider, instance: u64, rental: Option<u64>) {
        if !self.destroying.insert((provider, instance)) {
            return;
        }
        let account = match self.account(provider) {
            Ok(a) => a,
            Err(e) => {
                warn!(instance, "cannot release: {e}");
                self.destroying.remove(&(provider, instance));
                return;
            }
        };
        self.bg.spawn(async move {
            let result = account.destroy(instance).await.map_err(|e| e.to_string());
            Bg::Destroyed {
                provider,
                instance,
                rental,
                result,
            }
        });
    }

    /// The daemon stops: every rental is released, and the providers are asked until none
    /// is listed any more (bounded).
    async fn drain(mut self) {
        self.rents.abort_all();
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
        self.renting.clear();
        let actions = live
            .iter()
            .map(|id| Action::Release {
                rental: *id,
                why: Why::Shutdown,
            })
            .collect();
        self.apply(actions);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            while let Ok(Some(res)) = tokio::time::timeout_at(deadline, self.bg.join_next()).await {
                if let Ok(bg) = res {
                    self.on_bg(bg);
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

fn validate(req: &CloudRentRequest) -> Result<(), String> {
    if req.count == 0 || req.count > 64 {
        return Err("--count takes 1 to 64 machines".into());
    }
    if req.budget_usd.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
        return Err("--budget takes a positive number of dollars".into());
    }
    if req
        .bid_usd_per_hour
        .is_some_and(|b| !(b.is_finite() && b > 0.0))
    {
        return Err("--bid takes a positive number of dollars per hour".into());
    }
    if req.node_port == 0 {
        return Err("--node-port takes a port from 1 to 65535".into());
    }
    if req.image.as_ref().is_some_and(|i| {
        i.is_empty() || i.len() > 1024 || i.chars().any(|c| c.is_control() || c.is_whitespace())
    }) {
        return Err(
            "--image takes an image name like nvidia/cuda:12.6.3-runtime-ubuntu24.04".into(),
        );
    }
    Ok(())
}
