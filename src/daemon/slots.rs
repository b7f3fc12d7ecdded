//! Render slots: what each slot of this peer renders with (one per GPU, or one for all GPUs
//! of the best kind with `--gpus-together`, or one CPU slot), which jobs a slot or a peer
//! fits, and the state of the frames the slots render now.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::ids::JobId;
use crate::net::InFlight;
use crate::render::settings::{DeviceKind, DeviceRequirement};
use crate::render::{BlenderInfo, FrameProgress, Worker};

/// What one slot renders with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    pub device: DeviceKind,
    /// One device by its Blender id; `None` uses every device of the kind.
    pub device_id: Option<String>,
    /// Memory of the slot's device(s) in MiB, the least of them when several; if known.
    pub memory_mib: Option<u64>,
}

/// The slots a peer runs: one per GPU of the best kind (or one for all of them when
/// `together`), else one CPU slot.
pub fn plan_slots(info: &BlenderInfo, together: bool) -> Vec<SlotSpec> {
    let best = info.best_device();
    let devices: Vec<_> = info.devices_of(best).collect();
    if best == DeviceKind::Cpu || devices.is_empty() {
        return vec![SlotSpec {
            device: DeviceKind::Cpu,
            device_id: None,
            memory_mib: None,
        }];
    }
    if together || devices.len() == 1 {
        let memory_mib = devices.iter().map(|d| d.memory_mib).min().flatten();
        return vec![SlotSpec {
            device: best,
            device_id: None,
            memory_mib,
        }];
    }
    devices
        .into_iter()
        .map(|d| SlotSpec {
            device: best,
            device_id: Some(d.id.clone()),
            memory_mib: d.memory_mib,
        })
        .collect()
}

/// Whether a job's device requirement lets this slot render it.
pub fn slot_fits(req: &DeviceRequirement, slot: &SlotSpec) -> bool {
    if req.gpu_only && !slot.device.is_gpu() {
        return false;
    }
    if req.kind.is_some_and(|k| k != slot.device) {
        return false;
    }
    match req.min_vram_mib {
        None => true,
        Some(min) => slot.device.is_gpu() && slot.memory_mib.is_some_and(|m| m >= min),
    }
}

/// Whether a peer with Blender `version` and `devices` (as its heartbeat tells) may render
/// `spec`: the version fits, and one of the slots it would run fits the device requirement.
pub fn peer_fits(
    spec: &crate::ledger::JobSpec,
    version: &str,
    devices: &[crate::render::DeviceInfo],
) -> bool {
    let info = BlenderInfo {
        path: PathBuf::new(),
        version: version.to_string(),
        devices: devices.to_vec(),
        has_oidn: false,
    };
    spec.blender_fits(version)
        && plan_slots(&info, false)
            .iter()
            .any(|s| slot_fits(&spec.settings.device, s))
}

/// The frame a slot is rendering right now.
pub(super) struct Active {
    pub(super) job: JobId,
    pub(super) frame: u32,
    pub(super) epoch: u32,
    pub(super) abort: AbortHandle,
    pub(super) progress: Option<FrameProgress>,
    /// A backup of another peer's render (see [`crate::ledger::tail`]): no claim of ours.
    pub(super) backup: bool,
    pub(super) started: std::time::Instant,
    /// Blender's lines of this frame so far (`meshd logs` of a frame being rendered).
    pub(super) log: crate::render::worker::FrameLog,
}

pub(super) struct Slot {
    pub(super) spec: SlotSpec,
    pub(super) active: Option<Active>,
    /// Warm workers between frames, one per job.
    pub(super) idle: HashMap<JobId, Worker>,
}

/// Progress of a frame, from a render task to the daemon loop.
pub(super) struct ProgressMsg {
    pub(super) slot: usize,
    pub(super) job: JobId,
    pub(super) progress: FrameProgress,
}

pub(super) struct RenderState {
    pub(super) slots: Vec<Slot>,
    /// When a free slot last looked for a straggler to back up.
    pub(super) backup_checked: Option<std::time::Instant>,
    /// The slots' specs (what the ledger's view asks about this peer).
    pub(super) specs: Vec<SlotSpec>,
    pub(super) progress_tx: mpsc::UnboundedSender<ProgressMsg>,
    /// Progress changed since the last heartbeat.
    pub(super) progress_dirty: bool,
}

impl RenderState {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<ProgressMsg>) {
        let (progress_tx, rx) = mpsc::unbounded_channel();
        (
            RenderState {
                slots: Vec::new(),
                backup_checked: None,
                specs: Vec::new(),
                progress_tx,
                progress_dirty: false,
            },
            rx,
        )
    }

    pub(super) fn set_slots(&mut self, specs: Vec<SlotSpec>) {
        self.stop();
        self.specs = specs.clone();
        self.slots = specs
            .into_iter()
            .map(|spec| Slot {
                spec,
                active: None,
                idle: HashMap::new(),
            })
            .collect();
    }

    /// Frames in flight on this peer, with progress.
    /// Frames this peer renders at once.
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn in_flight(&self) -> Vec<InFlight> {
        self.slots
            .iter()
            .filter_map(|s| s.active.as_ref())
            .map(|a| InFlight {
                job: a.job,
                frame: a.frame,
                current: a.progress.as_ref().map_or(0, |p| p.current),
                total: a.progress.as_ref().map_or(0, |p| p.total),
                elapsed_ms: a.started.elapsed().as_millis() as u64,
            })
            .collect()
    }

    pub(super) fn on_progress(&mut self, msg: ProgressMsg) {
        let Some(a) = self.slots.get_mut(msg.slot).and_then(|s| s.active.as_mut()) else {
            return;
        };
        if a.job == msg.job && a.frame == msg.progress.frame {
            a.progress = Some(msg.progress);
            self.progress_dirty = true;
        }
    }

    /// Jobs with a frame in flight or a warm Blender here.
    pub(super) fn jobs_in_use(&self) -> impl Iterator<Item = JobId> + '_ {
        self.slots.iter().flat_map(|s| {
            s.idle
                .keys()
                .copied()
                .chain(s.active.as_ref().map(|a| a.job))
        })
    }

    /// Kills every Blender of `job`, busy or warm, without a word to the mesh.
    pub(super) fn drop_job(&mut self, job: &JobId) {
        for s in &mut self.slots {
            if s.active.as_ref().is_some_and(|a| a.job == *job)
                && let Some(a) = s.active.take()
            {
                a.abort.abort();
                self.progress_dirty = true;
            }
            s.idle.remove(job);
        }
    }

    pub(super) fn stop(&mut self) {
        for s in &mut self.slots {
            if let Some(a) = s.active.take() {
                a.abort.abort();
            }
            s.idle.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::DeviceInfo;

    fn info(devices: Vec<(DeviceKind, &str, Option<u64>)>) -> BlenderInfo {
        BlenderInfo {
            path: "blender".into(),
            version: "4.2.0".into(),
            devices: devices
                .into_iter()
                .map(|(kind, id, memory_mib)| DeviceInfo {
                    kind,
                    name: id.into(),
                    id: id.into(),
                    memory_mib,
                })
                .collect(),
            has_oidn: true,
        }
    }

    #[test]
    fn one_slot_per_gpu_of_the_best_kind() {
        let i = info(vec![
            (DeviceKind::Cpu, "CPU", None),
            (DeviceKind::Cuda, "CUDA_0", Some(24_000)),
            (DeviceKind::Cuda, "CUDA_1", Some(12_000)),
            (DeviceKind::Optix, "OPTIX_0", Some(24_000)),
            (DeviceKind::Optix, "OPTIX_1", Some(12_000)),
        ]);
        let slots = plan_slots(&i, false);
        assert_eq!(slots.len(), 2);
        assert!(slots.iter().all(|s| s.device == DeviceKind::Optix));
        assert_eq!(slots[1].device_id.as_deref(), Some("OPTIX_1"));
        let together = plan_slots(&i, true);
        assert_eq!(
            together,
            vec![SlotSpec {
                device: DeviceKind::Optix,
                device_id: None,
                memory_mib: Some(12_000)
            }]
        );
    }

    #[test]
    fn cpu_only_machine_has_one_cpu_slot() {
        let slots = plan_slots(&info(vec![(DeviceKind::Cpu, "CPU", None)]), false);
        assert_eq!(
            slots,
            vec![SlotSpec {
                device: DeviceKind::Cpu,
                device_id: None,
                memory_mib: None
            }]
        );
    }

    #[test]
    fn requirements_select_slots() {
        let gpu = SlotSpec {
            device: DeviceKind::Cuda,
            device_id: Some("CUDA_0".into()),
            memory_mib: Some(8_000),
        };
        let cpu = SlotSpec {
            device: DeviceKind::Cpu,
            device_id: None,
            memory_mib: None,
        };
        let any = DeviceRequirement::default();
        assert!(slot_fits(&any, &gpu) && slot_fits(&any, &cpu));
        let gpu_only = DeviceRequirement {
            gpu_only: true,
            ..Default::default()
        };
        assert!(slot_fits(&gpu_only, &gpu) && !slot_fits(&gpu_only, &cpu));
        let optix = DeviceRequirement {
            kind: Some(DeviceKind::Optix),
            ..Default::default()
        };
        assert!(!slot_fits(&optix, &gpu));
        let big = DeviceRequirement {
            min_vram_mib: Some(16_000),
            ..Default::default()
        };
        let small = DeviceRequirement {
            min_vram_mib: Some(4_000),
            ..Default::default()
        };
        assert!(!slot_fits(&big, &gpu) && slot_fits(&small, &gpu) && !slot_fits(&small, &cpu));
    }
}
