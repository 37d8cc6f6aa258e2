//! GPU health from XID events and periodic re-probes, with recovery. Pure: time is passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_gpu::{DeviceUuid, Health, NodeInventory};

/// XIDs caused by the application (illegal address, MMU fault in user code, ...), not by the GPU:
/// NVIDIA's plugin ignores these too.
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// Whether an XID should take a GPU out of service. An XID NVML could not decode counts as critical.
pub fn is_critical_xid(xid: Option<u64>) -> bool {
    xid.is_none_or(|x| !APPLICATION_XIDS.contains(&x))
}

/// A change of one GPU's health, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub uuid: DeviceUuid,
    pub healthy: bool,
    pub reason: String,
}

/// Remembers critical XIDs and decides each GPU's health from them and the latest probe.
///
/// A GPU with a critical XID stays unhealthy for at least `hold`; after that, the first probe in which
/// it answers normally marks it healthy again (NVIDIA's plugin needs a restart for that). A GPU the probe
/// cannot see at all is lost: unhealthy until it answers again.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    hold: Duration,
    marks: BTreeMap<DeviceUuid, (String, Instant)>,
    last: BTreeMap<DeviceUuid, Health>,
}

impl HealthTracker {
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            marks: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    /// Records an XID; returns whether it marks the GPU (application XIDs do not).
    pub fn on_xid(&mut self, uuid: &DeviceUuid, xid: Option<u64>, now: Instant) -> bool {
        if !is_critical_xid(xid) {
            return false;
        }
        let reason = xid.map_or_else(|| "XID (unknown)".to_owned(), |x| format!("XID {x}"));
        self.marks.insert(uuid.clone(), (reason, now));
        true
    }

    /// The effective inventory: every GPU of `known` with its health decided from `probed` (the latest
    /// discovery; `None` when discovery failed as a whole) and the XID marks. Returns the transitions.
    pub fn reconcile(
        &mut self,
        known: &NodeInventory,
        probed: Option<&NodeInventory>,
        now: Instant,
    ) -> (NodeInventory, Vec<Transition>) {
        let mut effective = known.clone();
        let mut transitions = Vec::new();
        for gpu in &mut effective.gpus {
            let probe = probed.map(|p| p.gpu_by_uuid(gpu.uuid.as_str()).map(|g| g.health.clone()));
            let health = match (probe, self.marks.get(&gpu.uuid)) {
                // The probe could not see this GPU at all: it fell off the bus.
                (Some(None), _) => Health::Unhealthy {
                    reason: "GPU is lost: discovery no longer sees it".to_owned(),
                },
                (Some(Some(Health::Unhealthy { reason })), _) => Health::Unhealthy { reason },
                (_, Some((reason, since))) if now.duration_since(*since) < self.hold => {
                    Health::Unhealthy {
                        reason: reason.clone(),
                    }
                }
                // Held long enough and answering normally: recovered.
                (Some(Some(Health::Healthy)), Some(_)) => {
                    self.marks.remove(&gpu.uuid);
                    Health::Healthy
                }
                // Discovery failed as a whole: keep what we had.
                (None, Some((reason, _))) => Health::Unhealthy {
                    reason: reason.clone(),
                },
                (None, None) => self
                    .last
                    .get(&gpu.uuid)
                    .cloned()
                    .unwrap_or_else(|| gpu.health.clone()),
                (Some(Some(Health::Healthy)), None) => Health::Healthy,
            };
            let previous = self.last.insert(gpu.uuid.clone(), health.clone());
            if previous.as_ref().is_some_and(|p| p != &health) {
                transitions.push(Transition {
                    uuid: gpu.uuid.clone(),
                    healthy: health.is_healthy(),
                    reason: match &health {
                        Health::Healthy => "answers normally again".to_owned(),
                        Health::Unhealthy { reason } => reason.clone(),
                    },
                });
            }
            gpu.health = health;
        }
        (effective, transitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_testkit::load_inventory;

    #[test]
    fn application_xids_are_ignored() {
        for xid in APPLICATION_XIDS {
            assert!(!is_critical_xid(Some(xid)));
        }
        for xid in [48, 63, 64, 74, 79, 92, 94, 95] {
            assert!(is_critical_xid(Some(xid)), "{xid}");
        }
        assert!(is_critical_xid(None));
    }

    #[test]
    fn xid_marks_then_recovers_after_hold() {
        let known = load_inventory("t4-pcie-4.yaml");
        let uuid = known.gpus[1].uuid.clone();
        let mut tracker = HealthTracker::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let (inv, changes) = tracker.reconcile(&known, Some(&known), t0);
        assert!(inv.gpus.iter().all(|g| g.health.is_healthy()) && changes.is_empty());

        assert!(!tracker.on_xid(&uuid, Some(13), t0));
        assert!(tracker.on_xid(&uuid, Some(79), t0));
        let (inv, changes) = tracker.reconcile(&known, Some(&known), t0 + Duration::from_secs(1));
        assert_eq!(
            inv.gpus[1].health,
            Health::Unhealthy {
                reason: "XID 79".into()
            }
        );
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].healthy);

        // Still held, although the probe is fine.
        let (inv, changes) = tracker.reconcile(&known, Some(&known), t0 + Duration::from_secs(29));
        assert!(!inv.gpus[1].health.is_healthy() && changes.is_empty());
        // Discovery failing as a whole changes nothing.
        let (inv, _) = tracker.reconcile(&known, None, t0 + Duration::from_secs(31));
        assert!(!inv.gpus[1].health.is_healthy());
        // Hold over, answering normally: healthy again.
        let (inv, changes) = tracker.reconcile(&known, Some(&known), t0 + Duration::from_secs(31));
        assert!(inv.gpus[1].health.is_healthy());
        assert_eq!(
            changes,
            [Transition {
                uuid,
                healthy: true,
                reason: "answers normally again".into()
            }]
        );
    }

    #[test]
    fn a_gpu_missing_from_the_probe_is_lost_until_it_returns() {
        let known = load_inventory("t4-pcie-4.yaml");
        let mut probed = known.clone();
        probed.gpus.remove(2);
        let mut tracker = HealthTracker::new(Duration::from_secs(30));
        let t0 = Instant::now();
        tracker.reconcile(&known, Some(&known), t0);
        let (inv, changes) = tracker.reconcile(&known, Some(&probed), t0);
        assert!(
            matches!(&inv.gpus[2].health, Health::Unhealthy { reason } if reason.contains("lost"))
        );
        assert_eq!(changes.len(), 1);
        let (inv, changes) = tracker.reconcile(&known, Some(&known), t0);
        assert!(inv.gpus[2].health.is_healthy());
        assert_eq!(changes.len(), 1);
    }
}
