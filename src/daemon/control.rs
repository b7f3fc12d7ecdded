//! Job control on this daemon: the submitter's `meshd cancel|pause|resume|priority`, and
//! control changes heard from the mesh. Renders of a job that is no longer active stop at
//! once (their Blender is killed), and its warm Blenders go at the next tick.

use libp2p::PeerId;
use tracing::{info, warn};

use super::Daemon;
use crate::api::types::{ControlAction, ControlResponse, FramesQuery, StatusQuery};
use crate::ids::JobId;
use crate::ledger::job::MAX_JOB_NAME;
use crate::ledger::{JobControl, JobState, RunState, sign};
use crate::net::GossipMsg;

impl Daemon {
    /// A control change gossiped by `source`: only the job's submitter may make one.
    pub(super) async fn on_control(&mut self, source: PeerId, job: JobId, control: JobControl) {
        match self.ledger.job(&job) {
            Some(e) if e.spec.submitter == source => {
                self.merge_control_from(Some(source), job, control).await
            }
            Some(_) => {
                let why = "it gossiped a job control in another peer's name";
                self.punish(source, why).await
            }
            None => {} // sync brings the job and its control
        }
    }

    /// Joins a control change (from `sender`, or made here): it must be signed by the
    /// job's submitter, or it costs the sender its connection. Persists it and stops
    /// renders the change forbids.
    pub(super) async fn merge_control_from(
        &mut self,
        sender: Option<PeerId>,
        job: JobId,
        control: JobControl,
    ) {
        match self.ledger.apply_signed_control(&job, &control) {
            Ok(true) => {
                self.settle.recheck(&self.ledger, &job);
                if let Err(e) = self.store.put_control(&job, &control) {
                    warn!("cannot persist job control: {e}");
                }
                let run = self.ledger.job(&job).map(|e| e.control.run);
                info!(job = %job.short(), ?run, "job control changed");
                if run != Some(RunState::Active) {
                    self.stop_renders_of(&job).await;
                }
                self.maybe_archive(&job).await;
            }
            Ok(false) => {}
            Err(e) if e.is_forgery() => match sender {
                Some(peer) => self.punish(peer, &format!("it sent a {e}")).await,
                None => warn!("a job control made here does not verify: {e}"),
            },
            Err(e) => tracing::debug!("ignored job control: {e}"),
        }
    }

    /// `meshd cancel|pause|resume|priority` on the submitting daemon.
    pub(super) async fn control(
        &mut self,
        sel: &str,
        action: ControlAction,
    ) -> Result<ControlResponse, String> {
        if action == ControlAction::Retry {
            return self.retry_failed(sel).await;
        }
        let id = self.find_job(sel)?;
        if action == ControlAction::Remove {
            return self.remove(&id);
        }
        if let Some(a) = self.ledger.archived(&id) {
            return Err(format!(
                "job {} is over and archived: nothing to change (`meshd rm` forgets it)",
                a.spec.name
            ));
        }
        let Some(entry) = self.ledger.job(&id) else {
            return Err(format!("no job matches '{sel}'"));
        };
        if entry.spec.submitter != self.me {
            return Err(format!(
                "job {} was submitted from another machine: run this there",
                entry.spec.name
            ));
        }
        let (now, name) = (entry.control, entry.spec.name.clone());
        if now.run.is_final() {
            return Err(format!("job {name} is over; submit it again"));
        }
        let next = match action {
            ControlAction::Cancel => now.next(RunState::Cancelled, now.priority),
            ControlAction::Pause => now.next(RunState::Paused, now.priority),
            ControlAction::Resume => now.next(RunState::Active, now.priority),
            ControlAction::Priority(p) => now.next(now.run, p),
            ControlAction::Remove => return self.remove(&id),
            ControlAction::Retry => return self.retry_failed(sel).await,
        };
        let next = self.make_control(id, next).await;
        Ok(ControlResponse {
            id: id.to_hex(),
            name,
            run: next.run,
            priority: next.priority,
        })
    }

    /// Signs a control change of a job submitted here, applies it and tells the mesh.
    async fn make_control(&mut self, id: JobId, mut next: JobControl) -> JobControl {
        sign::sign_control(&self.identity, &id, &mut next);
        self.merge_control_from(None, id, next).await;
        let _ = self.store.flush();
        self.publish(GossipMsg::Control(id, next)).await;
        next
    }

    /// `meshd retry JOB` (and the dashboard's button): the failed frames of a job submitted
    /// here, rendered again as a new job (`<name> retry`) writing to the same output dir.
    /// Once the job has failed (no renderer left that may take its frames) its pending
    /// frames go too, since nobody will render them either, and the job is cancelled so that
    /// a renderer joining later does not render them a second time.
    pub(super) async fn retry_failed(&mut self, sel: &str) -> Result<ControlResponse, String> {
        let id = self.find_job(sel)?;
        let spec = self
            .ledger
            .job(&id)
            .map(|e| e.spec.clone())
            .or_else(|| self.ledger.archived(&id).map(|a| a.spec.clone()))
            .ok_or_else(|| format!("no job matches '{sel}'"))?;
        if spec.submitter != self.me {
            return Err(format!(
                "job {} was submitted from another machine: run this there",
                spec.name
            ));
        }
        let out_dir = self
            .local_jobs
            .get(&id)
            .map(|l| l.out_dir.clone())
            .ok_or_else(|| format!("job {} has no output dir here", spec.name))?;
        let q = StatusQuery {
            job: Some(id.to_hex()),
            frames: Some(FramesQuery::All),
        };
        let view = self.status_view(&q);
        let over = view.jobs.iter().any(|j| j.state == JobState::Failed);
        let frames: Vec<u32> = view
            .jobs
            .iter()
            .flat_map(|j| j.frames.iter())
            .filter(|f| f.state == "failed" || (over && f.state == "pending"))
            .map(|f| f.frame)
            .collect();
        if frames.is_empty() {
            return Err(format!("job {} has no failed frames", spec.name));
        }
        let mut again = spec.clone();
        again.frames = crate::ledger::FrameSet::from_frames(frames).map_err(|e| e.to_string())?;
        let mut name: String = spec.name.chars().take(MAX_JOB_NAME - 6).collect();
        name.push_str(" retry");
        again.name = name;
        again.created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(spec.created_unix_ms + 1, |d| d.as_millis() as u64);
        let resp = self.submit(again, out_dir).await?;
        info!(job = %id.short(), retry = %resp.id, frames = resp.frames_total, "failed frames submitted again");
        if let Some(now) = self.ledger.job(&id).map(|e| e.control)
            && over
            && !now.run.is_final()
        {
            self.make_control(id, now.next(RunState::Cancelled, now.priority))
                .await;
        }
        Ok(ControlResponse {
            id: resp.id,
            name: resp.name,
            run: RunState::Active,
            priority: spec.priority,
        })
    }

    /// The one job `sel` names: an id, the first characters of one, or a name.
    pub(super) fn find_job(&self, sel: &str) -> Result<JobId, String> {
        let lower = sel.to_ascii_lowercase();
        let active = self.ledger.jobs().map(|(id, e)| (id, &e.spec));
        let archived = self.ledger.archived_jobs().map(|(id, a)| (id, &a.spec));
        let matches: Vec<JobId> = active
            .chain(archived)
            .filter(|(id, spec)| id.to_hex().starts_with(&lower) || spec.name == sel)
            .map(|(id, _)| *id)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!(
                "no job matches '{sel}': run `meshd status` to list jobs"
            )),
            _ => Err(format!(
                "'{sel}' matches {} jobs: give more of the job id",
                matches.len()
            )),
        }
    }
}
