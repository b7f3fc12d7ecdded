//! Before renting: the request checked, the job waited for, the offers searched and ranked,
//! and how many machines the budget allows. Runs as a task, off the cloud actor's loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::account::Account;
use super::offers::{self, Offer};
use super::rental::{self, Activity, JobBlender};
use super::ssh::SshKey;
use crate::api::types::CloudRentRequest;
use crate::ids::JobId;

/// A rent ready to start.
pub struct Prepared {
    pub req: CloudRentRequest,
    pub job: Option<JobId>,
    /// The Blender the job's machines should run (default without a job).
    pub blender: JobBlender,
    /// Machines to rent.
    pub count: usize,
    /// Offers to rent them from, best first: the first `count`, then those that may stand in
    /// for an offer taken meanwhile (within the budget).
    pub offers: Vec<Offer>,
    pub key: SshKey,
}

pub async fn prepare(
    account: Arc<Account>,
    req: CloudRentRequest,
    mut activity: watch::Receiver<Activity>,
    key_dir: PathBuf,
) -> Result<Prepared, String> {
    validate(&req)?;
    let (job, blender) = match &req.job {
        None => (None, pool_blender(&activity.borrow())),
        Some(j) => {
            let id: JobId = j.parse().map_err(|_| format!("{j:?} is not a job id"))?;
            let blender = wait_for_job(&mut activity, &id).await?;
            (Some(id), blender)
        }
    };
    let mut found = account
        .offers(&req.filter)
        .await
        .map_err(|e| e.to_string())?;
    offers::rank(&mut found);
    if found.is_empty() {
        return Err(format!(
            "no {} offer matches: loosen the filters (see meshd cloud offers)",
            req.provider.name()
        ));
    }
    let (count, offers) = plan(found, &req)?;
    let key = SshKey::load_or_create(&key_dir)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Prepared {
        req,
        job,
        blender,
        count,
        offers,
        key,
    })
}

/// What a machine of `o` costs per hour: its price, or for a spot offer the bid (the
/// user's, else the minimum plus 10%).
pub fn price(o: &Offer, bid: Option<f64>) -> f64 {
    if o.spot {
        bid.unwrap_or(o.usd_per_hour * 1.1)
    } else {
        o.usd_per_hour
    }
}

/// How many machines to rent from `ranked` offers, and which offers may be used: with a
/// budget, the first hour of all of them must fit, and an offer standing in for one taken
/// meanwhile may cost no more than the budget leaves room for.
pub fn plan(ranked: Vec<Offer>, req: &CloudRentRequest) -> Result<(usize, Vec<Offer>), String> {
    let wanted = (req.count as usize).min(ranked.len());
    let prices: Vec<f64> = ranked
        .iter()
        .take(wanted)
        .map(|o| price(o, req.bid_usd_per_hour))
        .collect();
    let n = rental::affordable(&prices, req.budget_usd);
    if n == 0 {
        return Err(format!(
            "a budget of ${:.2} does not cover one hour of the best offer (${:.3}/h): raise --budget",
            req.budget_usd.unwrap_or(0.0),
            prices.first().copied().unwrap_or(0.0)
        ));
    }
    let mut offers = ranked;
    if let Some(budget) = req.budget_usd {
        let chosen: f64 = prices[..n].iter().sum();
        let dearest = prices[..n].iter().copied().fold(0.0, f64::max);
        let cap = dearest + (budget - chosen).max(0.0);
        offers.retain(|o| price(o, req.bid_usd_per_hour) <= cap);
    }
    Ok((n, offers))
}

/// The Blender for machines rented without a job: the one most running jobs here need
/// (each renders on its submitter's Blender series by default), else none in particular
/// (the image's, or the default release).
fn pool_blender(activity: &Activity) -> JobBlender {
    let mut needs: HashMap<&JobBlender, usize> = HashMap::new();
    for b in activity.running_jobs.values() {
        *needs.entry(b).or_default() += 1;
    }
    needs
        .into_iter()
        .max_by(|(a, n), (b, m)| n.cmp(m).then_with(|| a.version.cmp(&b.version)))
        .map(|(b, _)| b.clone())
        .unwrap_or_default()
}

/// A job named by a rent must be running here (the daemon reports it within a heartbeat
/// of its submission).
async fn wait_for_job(
    activity: &mut watch::Receiver<Activity>,
    id: &JobId,
) -> Result<JobBlender, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(b) = activity.borrow().running_jobs.get(id) {
            return Ok(b.clone());
        }
        if tokio::time::timeout_at(deadline, activity.changed())
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

pub fn validate(req: &CloudRentRequest) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Provider;

    fn offer(id: u64, usd: f64) -> Offer {
        Offer {
            provider: Provider::Vast,
            id,
            gpu: "RTX 4090".into(),
            gpus: 1,
            vram_gb: 24.0,
            usd_per_hour: usd,
            reliability: None,
            country: None,
            spot: false,
            model: None,
            score_per_gpu: Some(11_078),
        }
    }

    fn req(count: u32, budget: Option<f64>) -> CloudRentRequest {
        CloudRentRequest {
            provider: Provider::Vast,
            count,
            filter: Default::default(),
            bid_usd_per_hour: None,
            image: None,
            node_port: 4747,
            job: None,
            budget_usd: budget,
            idle_release_secs: 300,
        }
    }

    #[test]
    fn an_offer_standing_in_for_a_taken_one_stays_within_the_budget() {
        let ranked = vec![offer(1, 0.4), offer(2, 3.2), offer(3, 0.5), offer(4, 0.45)];
        // One machine, $1: the $0.40 one, with $0.60 of room for a stand-in.
        let (n, offers) = plan(ranked.clone(), &req(1, Some(1.0))).unwrap();
        assert_eq!(n, 1);
        let ids: Vec<u64> = offers.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![1, 3, 4], "the $3.20 machine never stands in");
        // No budget: every offer may stand in.
        assert_eq!(plan(ranked.clone(), &req(2, None)).unwrap().1.len(), 4);
        // Two asked, the budget covers the first hour of one.
        assert_eq!(plan(ranked.clone(), &req(2, Some(3.0))).unwrap().0, 1);
        let err = plan(ranked, &req(1, Some(0.1))).unwrap_err();
        assert!(err.contains("raise --budget"), "{err}");
    }

    #[test]
    fn machines_rented_without_a_job_run_the_blender_most_running_jobs_need() {
        let needs = |v: &str| JobBlender {
            version: Some(v.into()),
            require: Some(v.rsplit_once('.').unwrap().0.into()),
        };
        let mut activity = Activity::default();
        assert_eq!(
            pool_blender(&activity),
            JobBlender::default(),
            "no job: any"
        );
        for (n, v) in ["3.4.1", "4.2.3", "3.4.1"].into_iter().enumerate() {
            activity
                .running_jobs
                .insert(JobId::of(&[n as u8]), needs(v));
        }
        assert_eq!(pool_blender(&activity), needs("3.4.1"));
    }
}
