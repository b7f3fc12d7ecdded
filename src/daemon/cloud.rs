//! The daemon's side of the cloud actor (`cloud::manager`): starting it, and telling it
//! what it needs to know of the mesh (the ticket nodes join with, live peers and what they
//! render, the jobs not over yet).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::setup::{Boot, DaemonError};
use super::{Daemon, DaemonConfig};
use crate::cloud::CloudConfig;
use crate::cloud::handle::CloudHandle;
use crate::cloud::manager::{self, CloudEnv};
use crate::cloud::rental::Activity;
use crate::cloud::rental::JobBlender;

pub(super) type Started = (
    watch::Sender<Activity>,
    CloudHandle,
    tokio::task::JoinHandle<()>,
);

/// Starts the cloud actor. It reviews this daemon's rentals once the ticket is known (a
/// restart after a crash destroys what the crash left behind).
pub(super) fn start(
    cfg: &DaemonConfig,
    boot: &Boot,
    shutdown: CancellationToken,
) -> Result<Started, DaemonError> {
    let config = CloudConfig::load().unwrap_or_else(|e| {
        warn!("cloud settings not read: {e}");
        CloudConfig::from_pairs(&[])
    });
    let (activity, activity_rx) = watch::channel(Activity::default());
    let env = CloudEnv {
        config,
        tree: boot.store.cloud_tree()?,
        dir: cfg.data_dir.join("cloud"),
        me: boot.net.local_peer_id().to_string(),
        binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("meshd")),
        net: boot.net.clone(),
        activity: activity_rx,
    };
    let (handle, task) = manager::spawn(env, shutdown);
    Ok((activity, handle, task))
}

impl Daemon {
    /// Hands the ticket to the cloud actor once the daemon listens, then keeps its view of
    /// the mesh current (called on every heartbeat).
    pub(super) async fn tell_cloud(&mut self) {
        // The jobs first: the actor's first review must not take them for over.
        self.publish_activity();
        if !self.cloud_ready
            && let Ok(inv) = self.invite().await
        {
            self.cloud.ready(inv.ticket, inv.mesh_id).await;
            self.cloud_ready = true;
        }
    }

    /// Live peers with their frames in flight, and the jobs not over: work proportional to
    /// the peers and the active jobs.
    pub(super) fn publish_activity(&self) {
        let now = Instant::now();
        let live: HashMap<String, usize> = self
            .peers
            .peers
            .iter()
            .filter(|(_, s)| {
                s.connected
                    && s.heard
                        .is_some_and(|t| now.duration_since(t) < self.cfg.lease)
            })
            .map(|(p, s)| {
                // Busy: rendering, fetching a project, or probing its Blender (a node that
                // downloads a big project is not idle).
                let busy = s.rendering(now, self.cfg.lease).len()
                    + s.heartbeat.as_ref().map_or(0, |h| {
                        h.projects.iter().filter(|p| !p.complete).count() + usize::from(h.probing)
                    });
                (p.to_string(), busy)
            })
            .collect();
        let running_jobs = self
            .ledger
            .jobs()
            .filter(|(id, _)| !self.settle.is_over(id))
            .map(|(id, e)| {
                let blender = JobBlender {
                    version: e.spec.blender_version.clone(),
                    require: e.spec.require_blender.clone(),
                };
                (*id, blender)
            })
            .collect();
        self.activity.send_if_modified(|a| {
            let next = Activity { live, running_jobs };
            let changed = *a != next;
            *a = next;
            changed
        });
    }
}
