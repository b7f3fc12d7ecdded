//! What this daemon rents, and the rules that decide what to give back (pure, no I/O).
//!
//! Every machine meshd rents has a [`Rental`] record in sled, written *before* the provider
//! is asked (phase [`Phase::Ordering`], no instance id yet) and again after every step. The
//! record is what makes leaks impossible: whatever stops the daemon (a crash, kill -9, a lost
//! network), the next [`review`] compares the records with the provider's own instance list
//! and destroys every instance of this daemon that has no live use:
//!
//! - an instance is this daemon's when its id is in a record, when its label is one meshd set
//!   for this daemon ([`label_prefix`], Vast), or when it is the order a record was placing
//!   (Clore orders carry no label: same server, created since the record);
//! - an instance has a live use when its rent is in progress in this process, or its node
//!   joined the mesh and none of the release rules below fires;
//! - release rules: the job it was rented for is over; its node has had no frame in flight
//!   for longer than the idle limit; the provider stopped it (a spot instance outbid); its
//!   group's budget would be exceeded within the next hour ([`over_budget`]).
//!
//! A record is finished ([`Phase::Released`]) only when the provider no longer lists its
//! instance; until then every review destroys it again.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Provider;
use super::instance::{Instance, InstanceState};
use crate::ids::JobId;

/// Where a rental stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Recorded; the provider is being asked (the instance id may not be known yet).
    Ordering,
    /// Created; waiting for it to run.
    Starting,
    /// Running; meshd is being started on it over SSH.
    Bootstrapping,
    /// Its node is a peer of the mesh.
    Joined,
    /// Being given back; reviews destroy it until the provider no longer lists it.
    Releasing,
    /// Gone at the provider. Kept for `meshd cloud list` and the spend.
    Released,
}

impl Phase {
    /// The provider bills it (or may, for an order in flight).
    pub fn is_live(self) -> bool {
        !matches!(self, Phase::Released)
    }
}

/// Who a rental is for, and its limits: every machine of one `meshd cloud rent` (or one
/// `submit --cloud`) shares them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: u64,
    /// Released when this job is over.
    pub job: Option<JobId>,
    /// US dollars the group may spend in all.
    pub budget_usd: Option<f64>,
    /// Released after this long without a frame in flight.
    pub idle_release_secs: u64,
}

/// One rented machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rental {
    /// This daemon's number for it (not the provider's).
    pub id: u64,
    pub provider: Provider,
    /// The offer (Vast) or server (Clore) it was rented from, once chosen.
    pub offer: Option<u64>,
    pub gpu: String,
    pub gpus: u32,
    /// The whole machine, as rented.
    pub usd_per_hour: f64,
    pub spot: bool,
    /// The label meshd gave it (Vast); see [`label_prefix`].
    pub label: String,
    pub node_port: u16,
    /// When the record was written, Unix seconds.
    pub ordered_unix: f64,
    /// When the provider says it started (billing starts), else when it was created.
    pub started_unix: Option<f64>,
    pub ended_unix: Option<f64>,
    /// The provider's id (Vast instance, Clore order), once known.
    pub instance: Option<u64>,
    /// Clore: the account's orders just before this one was placed (the new one is the
    /// order on `offer` not among them; Clore orders carry no label).
    pub preexisting: Vec<u64>,
    pub phase: Phase,
    /// The node's peer id, once it runs meshd.
    pub peer: Option<String>,
    /// Where the node's daemon answers from outside (`host`, `port`).
    pub node: Option<(String, u16)>,
    pub group: Group,
    /// Why it was released, or the last thing that went wrong.
    pub note: Option<String>,
}

impl Rental {
    /// Dollars spent on it so far (from its start to its end, or to `now`).
    pub fn spent_usd(&self, now: f64) -> f64 {
        let Some(start) = self.started_unix else {
            return 0.0;
        };
        let end = self.ended_unix.unwrap_or(now);
        (end - start).max(0.0) / 3600.0 * self.usd_per_hour
    }

    /// Billed now: created and not released.
    pub fn billing(&self) -> bool {
        self.started_unix.is_some() && self.phase.is_live()
    }
}

/// The label prefix of instances this daemon rents for mesh `mesh_id`: `meshd-`, 12 hex
/// digits of the mesh id, the last 8 characters of the renting peer's id.
pub fn label_prefix(mesh_id: &str, peer: &str) -> String {
    let mesh = &mesh_id[..mesh_id.len().min(12)];
    let peer = &peer[peer.len().saturating_sub(8)..];
    format!("meshd-{mesh}-{peer}-")
}

/// What the daemon sees of the mesh, for the release rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    /// Live peers, by id, with what each reports under way: frames in flight, projects
    /// still being fetched, a Blender probe.
    pub live: HashMap<String, usize>,
    /// Jobs that are not over yet, with the Blender their machines should run.
    pub running_jobs: HashMap<JobId, JobBlender>,
}

/// The Blender a job's machines should run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct JobBlender {
    /// The submitting machine's Blender ("4.2.3"): the one a machine installs when its
    /// image has none that fits.
    pub version: Option<String>,
    /// The job's requirement ("4.2+", "4.2"; see [`crate::ledger::job::BlenderReq`]): an
    /// image's Blender is used only if it fits.
    pub require: Option<String>,
}

/// Why a machine is given back.
#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    Asked,
    Interrupted,
    JobOver,
    Idle(u64),
    Budget,
    Stopped(String),
    Failed(String),
    Shutdown,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Asked => write!(f, "released on request"),
            Why::Interrupted => write!(f, "renting was interrupted (the daemon stopped)"),
            Why::JobOver => write!(f, "its job is over"),
            Why::Idle(s) if *s < 120 => write!(f, "idle for {s} s"),
            Why::Idle(s) => write!(f, "idle for {} min", s / 60),
            Why::Budget => write!(f, "the budget would be exceeded within the hour"),
            Why::Stopped(s) => write!(f, "the provider stopped it ({s})"),
            Why::Failed(s) => write!(f, "{s}"),
            Why::Shutdown => write!(f, "the daemon stopped"),
        }
    }
}

/// What a review asks the daemon to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Mark `rental` Releasing for `why` (its instance, if known, is destroyed in the
    /// same review).
    Release { rental: u64, why: Why },
    /// Destroy instance `instance` of `provider` (belonging to `rental`, if recorded).
    /// With `finish`, the record is finished once the provider confirms (an instance its
    /// list no longer shows: gone, or missing from one answer by mistake).
    Destroy {
        provider: Provider,
        instance: u64,
        rental: Option<u64>,
        finish: bool,
    },
    /// The record learns its instance id (and billing start) from the provider's list.
    Adopt {
        rental: u64,
        instance: u64,
        started: Option<f64>,
    },
    /// The provider no longer lists it: the record is finished.
    Finish { rental: u64 },
}

/// How long an order may take to show in the provider's list before a review that does
/// not see it concludes there is none (Clore shows a new order after a few seconds).
pub const ORDER_GRACE_SECS: f64 = 120.0;

/// Whether listed instance `inst` is the one record `r` was ordering when its id was not
/// recorded: Vast by the label meshd set; Clore (no labels) as an order on the record's
/// server that did not exist before the order was placed. No clocks are compared.
fn ordered_by(r: &Rental, inst: &Instance) -> bool {
    r.instance.is_none()
        && match r.provider {
            Provider::Vast => inst.label.as_deref() == Some(r.label.as_str()),
            Provider::Clore => {
                r.offer.is_some() && inst.machine == r.offer && !r.preexisting.contains(&inst.id)
            }
        }
}

/// The rules that are pure: given the records, what each provider lists (absent: its list
/// could not be read this time), the mesh's activity, the rentals whose rent is running in
/// this process, and since when each joined node has been idle, what to do now.
pub fn review(
    rentals: &[Rental],
    listed: &HashMap<Provider, Vec<Instance>>,
    activity: &Activity,
    renting: &HashSet<u64>,
    idle_since: &HashMap<u64, f64>,
    my_label_prefix: &str,
    now: f64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    // 1. Records that should be given back. A rent in progress is given back when its job
    // ends or its budget runs out, like a joined node; it is never idle or interrupted.
    let budget = over_budget(rentals, now);
    let mut releasing: HashSet<u64> = HashSet::new();
    for r in rentals {
        if r.phase == Phase::Releasing {
            releasing.insert(r.id);
            continue;
        }
        if !r.phase.is_live() {
            continue;
        }
        let in_progress = renting.contains(&r.id) && r.phase != Phase::Joined;
        let why = if !in_progress && r.phase != Phase::Joined {
            Some(Why::Interrupted)
        } else if r
            .group
            .job
            .is_some_and(|j| !activity.running_jobs.contains_key(&j))
        {
            Some(Why::JobOver)
        } else if budget.contains(&r.id) {
            Some(Why::Budget)
        } else if !in_progress
            && let Some(since) = idle_since.get(&r.id)
            && now - since >= r.group.idle_release_secs as f64
        {
            Some(Why::Idle((now - since) as u64))
        } else {
            None
        };
        if let Some(why) = why {
            actions.push(Action::Release { rental: r.id, why });
            releasing.insert(r.id);
        }
    }
    // 2. Each provider's list against the records.
    for (provider, instances) in listed {
        let mine: Vec<&Rental> = rentals
            .iter()
            .filter(|r| r.provider == *provider && r.phase.is_live())
            .collect();
        let mut seen: HashSet<u64> = HashSet::new();
        for inst in instances {
            let owner = mine
                .iter()
                .find(|r| r.instance == Some(inst.id))
                .or_else(|| mine.iter().find(|r| ordered_by(r, inst)));
            let Some(r) = owner else {
                let labelled = inst
                    .label
                    .as_deref()
                    .is_some_and(|l| l.starts_with(my_label_prefix));
                if labelled && inst.state != InstanceState::Gone {
                    actions.push(Action::Destroy {
                        provider: *provider,
                        instance: inst.id,
                        rental: None,
                        finish: false,
                    });
                }
                continue;
            };
            seen.insert(r.id);
            if r.instance.is_none() {
                actions.push(Action::Adopt {
                    rental: r.id,
                    instance: inst.id,
                    started: inst.started_unix,
                });
            }
            if inst.state == InstanceState::Gone {
                if !renting.contains(&r.id) || releasing.contains(&r.id) {
                    actions.push(Action::Finish { rental: r.id });
                }
                continue;
            }
            // A joined node the provider reports stopped or failed is given up once it is
            // no longer a live peer (a host's brief hiccup does not kill a busy render).
            let gone_quiet = r
                .peer
                .as_ref()
                .is_none_or(|p| !activity.live.contains_key(p));
            if r.phase == Phase::Joined
                && !releasing.contains(&r.id)
                && gone_quiet
                && let InstanceState::Stopped | InstanceState::Failed(_) = &inst.state
            {
                let what = match &inst.state {
                    InstanceState::Failed(m) => m.clone(),
                    _ => "stopped; a spot instance is stopped when outbid".into(),
                };
                actions.push(Action::Release {
                    rental: r.id,
                    why: Why::Stopped(what),
                });
                releasing.insert(r.id);
            }
            if releasing.contains(&r.id) {
                actions.push(Action::Destroy {
                    provider: *provider,
                    instance: inst.id,
                    rental: Some(r.id),
                    finish: false,
                });
            }
        }
        // Records whose instance the provider does not list (any more).
        for r in mine {
            if seen.contains(&r.id) {
                continue;
            }
            if renting.contains(&r.id) && !releasing.contains(&r.id) {
                // A rent in progress: its order may not be listed yet.
                continue;
            }
            match r.instance {
                // Gone (a Clore spot order outbid), or left out of one answer: destroyed by
                // id (a no-op when gone), finished once the provider confirms.
                Some(instance) => {
                    if !releasing.contains(&r.id) {
                        actions.push(Action::Release {
                            rental: r.id,
                            why: Why::Stopped("no longer listed".into()),
                        });
                    }
                    actions.push(Action::Destroy {
                        provider: *provider,
                        instance,
                        rental: Some(r.id),
                        finish: true,
                    });
                }
                // Never created, or never shown: after the grace there is none.
                None if now - r.ordered_unix > ORDER_GRACE_SECS => {
                    actions.push(Action::Finish { rental: r.id });
                }
                None => {}
            }
        }
    }
    // 3. Releasing records whose provider could not be listed: destroy by id anyway.
    for r in rentals {
        if releasing.contains(&r.id)
            && !listed.contains_key(&r.provider)
            && let Some(instance) = r.instance
        {
            actions.push(Action::Destroy {
                provider: r.provider,
                instance,
                rental: Some(r.id),
                finish: false,
            });
        }
    }
    actions
}

/// Rentals to release because their group's spend, plus one more hour of every machine the
/// group still runs, would exceed its budget: the dearest machines first, until the rest
/// fit.
pub fn over_budget(rentals: &[Rental], now: f64) -> HashSet<u64> {
    let mut groups: HashMap<u64, Vec<&Rental>> = HashMap::new();
    for r in rentals {
        groups.entry(r.group.id).or_default().push(r);
    }
    let mut out = HashSet::new();
    for members in groups.values() {
        let Some(budget) = members.iter().find_map(|r| r.group.budget_usd) else {
            continue;
        };
        let spent: f64 = members.iter().map(|r| r.spent_usd(now)).sum();
        let mut running: Vec<&&Rental> = members
            .iter()
            .filter(|r| r.billing() && r.phase != Phase::Releasing)
            .collect();
        running.sort_by(|a, b| {
            b.usd_per_hour
                .total_cmp(&a.usd_per_hour)
                .then(b.id.cmp(&a.id))
        });
        let mut next_hour: f64 = running.iter().map(|r| r.usd_per_hour).sum();
        for r in running {
            if spent + next_hour <= budget {
                break;
            }
            next_hour -= r.usd_per_hour;
            out.insert(r.id);
        }
    }
    out
}

/// How many of `prices` (whole machine, $/h, best first) a budget allows: the first hour
/// of all of them must fit in what is left of it.
pub fn affordable(prices: &[f64], budget_left: Option<f64>) -> usize {
    let Some(left) = budget_left else {
        return prices.len();
    };
    let mut total = 0.0;
    prices
        .iter()
        .take_while(|p| {
            total += *p;
            total <= left
        })
        .count()
}

/// Updates when each joined rental's node went idle: a node with a frame in flight is busy;
/// one that is not live counts as idle (it renders nothing for the mesh).
pub fn track_idle(
    rentals: &[Rental],
    activity: &Activity,
    idle_since: &mut HashMap<u64, f64>,
    now: f64,
) {
    idle_since.retain(|id, _| rentals.iter().any(|r| r.id == *id));
    for r in rentals {
        if r.phase != Phase::Joined {
            idle_since.remove(&r.id);
            continue;
        }
        let busy = r
            .peer
            .as_ref()
            .and_then(|p| activity.live.get(p))
            .is_some_and(|n| *n > 0);
        if busy {
            idle_since.remove(&r.id);
        } else {
            idle_since.entry(r.id).or_insert(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "meshd-aaaaaaaaaaaa-peer0001-";

    fn rental(id: u64, phase: Phase, instance: Option<u64>) -> Rental {
        Rental {
            id,
            provider: Provider::Vast,
            offer: Some(100 + id),
            gpu: "RTX 4090".into(),
            gpus: 1,
            usd_per_hour: 1.0,
            spot: false,
            label: format!("{PREFIX}{id}"),
            node_port: 4747,
            ordered_unix: 1000.0,
            started_unix: instance.map(|_| 1000.0),
            ended_unix: None,
            instance,
            preexisting: Vec::new(),
            phase,
            peer: Some(format!("peer{id}")),
            node: None,
            group: Group {
                id: 1,
                job: None,
                budget_usd: None,
                idle_release_secs: 300,
            },
            note: None,
        }
    }

    fn vast(id: u64, label: &str, state: InstanceState) -> Instance {
        Instance {
            provider: Provider::Vast,
            id,
            label: Some(label.into()),
            machine: None,
            state,
            ssh: None,
            node: None,
            usd_per_hour: Some(1.0),
            started_unix: Some(1000.0),
        }
    }

    fn listed(instances: Vec<Instance>) -> HashMap<Provider, Vec<Instance>> {
        HashMap::from([(Provider::Vast, instances)])
    }

    fn run(
        rentals: &[Rental],
        l: &HashMap<Provider, Vec<Instance>>,
        activity: &Activity,
        renting: &[u64],
        idle: &[(u64, f64)],
        now: f64,
    ) -> Vec<Action> {
        review(
            rentals,
            l,
            activity,
            &renting.iter().copied().collect(),
            &idle.iter().copied().collect(),
            PREFIX,
            now,
        )
    }

    /// A review with nothing live in the mesh, no rent in progress, nobody idle.
    fn plain(rentals: &[Rental], l: &HashMap<Provider, Vec<Instance>>, now: f64) -> Vec<Action> {
        run(rentals, l, &Activity::default(), &[], &[], now)
    }

    #[test]
    fn an_interrupted_rent_is_destroyed_even_when_its_id_was_never_recorded() {
        // Killed between the create call and recording its answer: only the label says whose.
        let r = rental(1, Phase::Ordering, None);
        let l = listed(vec![vast(77, &r.label, InstanceState::Running)]);
        let a = plain(&[r], &l, 1010.0);
        assert!(a.contains(&Action::Release {
            rental: 1,
            why: Why::Interrupted
        }));
        assert!(a.contains(&Action::Adopt {
            rental: 1,
            instance: 77,
            started: Some(1000.0)
        }));
        assert!(a.contains(&Action::Destroy {
            provider: Provider::Vast,
            instance: 77,
            rental: Some(1),
            finish: false,
        }));
    }

    #[test]
    fn a_rent_in_progress_is_left_alone() {
        let r = rental(1, Phase::Starting, Some(77));
        let l = listed(vec![vast(77, &r.label, InstanceState::Starting)]);
        assert!(run(&[r], &l, &Activity::default(), &[1], &[], 1010.0).is_empty());
    }

    #[test]
    fn an_unrecorded_instance_with_this_daemons_label_is_destroyed_and_others_are_not() {
        let l = listed(vec![
            vast(5, &format!("{PREFIX}9"), InstanceState::Running),
            vast(6, "meshd-aaaaaaaaaaaa-otherpee-1", InstanceState::Running),
            vast(7, "my-own-thing", InstanceState::Running),
        ]);
        let a = plain(&[], &l, 1010.0);
        assert_eq!(
            a,
            vec![Action::Destroy {
                provider: Provider::Vast,
                instance: 5,
                rental: None,
                finish: false,
            }]
        );
    }

    #[test]
    fn a_joined_node_is_released_when_its_job_ends_or_it_idles() {
        let mut r = rental(1, Phase::Joined, Some(77));
        let job = JobId([7; 32]);
        r.group.job = Some(job);
        let l = listed(vec![vast(77, &r.label, InstanceState::Running)]);
        let mut busy = Activity::default();
        busy.live.insert("peer1".into(), 1);
        busy.running_jobs.insert(job, JobBlender::default());
        assert!(run(std::slice::from_ref(&r), &l, &busy, &[], &[], 1010.0).is_empty());
        let over = Activity {
            running_jobs: HashMap::new(),
            ..busy.clone()
        };
        let a = run(std::slice::from_ref(&r), &l, &over, &[], &[], 1010.0);
        assert_eq!(
            a[0],
            Action::Release {
                rental: 1,
                why: Why::JobOver
            }
        );
        assert!(a.contains(&Action::Destroy {
            provider: Provider::Vast,
            instance: 77,
            rental: Some(1),
            finish: false,
        }));
        // Idle for 299 s: kept; 300 s: released.
        assert!(
            run(
                std::slice::from_ref(&r),
                &l,
                &busy,
                &[],
                &[(1, 711.0)],
                1010.0
            )
            .is_empty()
        );
        let a = run(&[r], &l, &busy, &[], &[(1, 710.0)], 1010.0);
        assert_eq!(
            a[0],
            Action::Release {
                rental: 1,
                why: Why::Idle(300)
            }
        );
    }

    #[test]
    fn a_rent_in_progress_is_given_back_when_its_job_ends_but_never_for_idling() {
        let mut r = rental(1, Phase::Bootstrapping, Some(77));
        let job = JobId([7; 32]);
        r.group.job = Some(job);
        r.group.idle_release_secs = 1;
        let l = listed(vec![vast(77, &r.label, InstanceState::Running)]);
        let mut act = Activity::default();
        act.running_jobs.insert(job, JobBlender::default());
        let quiet = run(
            std::slice::from_ref(&r),
            &l,
            &act,
            &[1],
            &[(1, 0.0)],
            1010.0,
        );
        assert!(quiet.is_empty(), "{quiet:?}");
        let a = run(&[r], &l, &Activity::default(), &[1], &[], 1010.0);
        assert_eq!(
            a[0],
            Action::Release {
                rental: 1,
                why: Why::JobOver
            }
        );
    }

    #[test]
    fn a_busy_node_the_provider_calls_failed_is_kept_while_it_is_a_live_peer() {
        let r = rental(1, Phase::Joined, Some(77));
        let l = listed(vec![vast(
            77,
            &r.label,
            InstanceState::Failed("offline".into()),
        )]);
        let mut act = Activity::default();
        act.live.insert("peer1".into(), 1);
        assert!(run(std::slice::from_ref(&r), &l, &act, &[], &[], 1010.0).is_empty());
        let a = plain(&[r], &l, 1010.0);
        assert!(a.contains(&Action::Destroy {
            provider: Provider::Vast,
            instance: 77,
            rental: Some(1),
            finish: false
        }));
    }

    #[test]
    fn a_stopped_spot_instance_is_released_and_a_vanished_one_finished() {
        let r1 = rental(1, Phase::Joined, Some(77));
        let r2 = rental(2, Phase::Joined, Some(78));
        let l = listed(vec![vast(77, &r1.label, InstanceState::Stopped)]);
        let a = plain(&[r1, r2], &l, 1010.0);
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Release {
                rental: 1,
                why: Why::Stopped(_)
            }
        )));
        assert!(a.contains(&Action::Destroy {
            provider: Provider::Vast,
            instance: 77,
            rental: Some(1),
            finish: false,
        }));
        // The one no longer listed is destroyed by id, finished once confirmed.
        assert!(a.contains(&Action::Destroy {
            provider: Provider::Vast,
            instance: 78,
            rental: Some(2),
            finish: true
        }));
    }

    #[test]
    fn a_releasing_record_is_finished_only_once_the_provider_no_longer_lists_it() {
        let r = rental(1, Phase::Releasing, Some(77));
        let l = listed(vec![vast(77, &r.label, InstanceState::Running)]);
        let a = plain(std::slice::from_ref(&r), &l, 1010.0);
        assert_eq!(
            a,
            vec![Action::Destroy {
                provider: Provider::Vast,
                instance: 77,
                rental: Some(1),
                finish: false,
            }]
        );
        let a = plain(std::slice::from_ref(&r), &listed(vec![]), 1010.0);
        assert_eq!(
            a,
            vec![Action::Destroy {
                provider: Provider::Vast,
                instance: 77,
                rental: Some(1),
                finish: true
            }]
        );
        // Unlisted (provider unreachable): destroyed by id.
        let a = plain(&[r], &HashMap::new(), 1010.0);
        assert_eq!(
            a,
            vec![Action::Destroy {
                provider: Provider::Vast,
                instance: 77,
                rental: Some(1),
                finish: false,
            }]
        );
    }

    #[test]
    fn an_order_never_listed_is_finished_after_the_grace() {
        let mut r = rental(1, Phase::Releasing, None);
        r.provider = Provider::Clore;
        let l = HashMap::from([(Provider::Clore, vec![])]);
        assert!(plain(std::slice::from_ref(&r), &l, 1010.0).is_empty());
        assert_eq!(
            plain(&[r], &l, 1000.0 + ORDER_GRACE_SECS + 1.0),
            vec![Action::Finish { rental: 1 }]
        );
    }

    #[test]
    fn a_clore_order_is_recognised_by_server_and_time() {
        let mut r = rental(1, Phase::Ordering, None);
        r.provider = Provider::Clore;
        r.offer = Some(6);
        // Order 40 was there before; 41 is on another server; 42 is the new one, whatever
        // the clocks say.
        r.preexisting = vec![40];
        let order = |id, machine, ct| Instance {
            provider: Provider::Clore,
            id,
            label: None,
            machine: Some(machine),
            state: InstanceState::Running,
            ssh: None,
            node: None,
            usd_per_hour: Some(0.3),
            started_unix: Some(ct),
        };
        let l = HashMap::from([(
            Provider::Clore,
            vec![
                order(40, 6, 500.0),
                order(41, 7, 1005.0),
                order(42, 6, 1005.0),
            ],
        )]);
        let a = plain(&[r], &l, 1010.0);
        assert!(a.contains(&Action::Adopt {
            rental: 1,
            instance: 42,
            started: Some(1005.0)
        }));
        let destroyed: Vec<u64> = a
            .iter()
            .filter_map(|a| match a {
                Action::Destroy { instance, .. } => Some(*instance),
                _ => None,
            })
            .collect();
        assert_eq!(
            destroyed,
            vec![42],
            "orders of the user's own are not touched"
        );
    }

    #[test]
    fn the_budget_releases_the_dearest_machines_until_the_next_hour_fits() {
        let mut rs: Vec<Rental> = (1..=3).map(|i| rental(i, Phase::Joined, Some(i))).collect();
        rs[0].usd_per_hour = 2.0;
        for r in &mut rs {
            r.group.budget_usd = Some(10.0);
        }
        // Two hours in: spent 2*(2+1+1) = 8; next hour 4 → 12 > 10: drop the $2 one → 10.
        let out = over_budget(&rs, 1000.0 + 7200.0);
        assert_eq!(out, HashSet::from([1]));
        assert!(over_budget(&rs, 1000.0 + 3600.0).is_empty());
        assert_eq!(affordable(&[2.0, 1.0, 1.0], Some(3.5)), 2);
        assert_eq!(affordable(&[2.0], Some(1.0)), 0);
        assert_eq!(affordable(&[2.0, 1.0], None), 2);
    }

    #[test]
    fn idle_time_counts_from_the_last_frame_in_flight() {
        let rs = vec![rental(1, Phase::Joined, Some(1))];
        let mut idle = HashMap::new();
        let mut act = Activity::default();
        track_idle(&rs, &act, &mut idle, 10.0);
        assert_eq!(idle.get(&1), Some(&10.0));
        track_idle(&rs, &act, &mut idle, 20.0);
        assert_eq!(idle.get(&1), Some(&10.0), "not reset while idle");
        act.live.insert("peer1".into(), 2);
        track_idle(&rs, &act, &mut idle, 30.0);
        assert!(idle.is_empty());
    }
}
