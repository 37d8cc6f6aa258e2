//! Prometheus metrics of the plugin, rendered as text by hand: a few counters need no library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters and gauges, shared by every task of the plugin.
#[derive(Debug, Default)]
pub struct Metrics {
    allocations: Mutex<BTreeMap<(String, &'static str), u64>>,
    xids: Mutex<BTreeMap<String, u64>>,
    transitions: Mutex<BTreeMap<&'static str, u64>>,
    registrations: AtomicU64,
    devices: Mutex<BTreeMap<(String, &'static str), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn allocation(&self, resource: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        *lock(&self.allocations)
            .entry((resource.to_owned(), result))
            .or_default() += 1;
    }

    pub fn xid(&self, xid: Option<u64>) {
        let label = xid.map_or_else(|| "unknown".to_owned(), |x| x.to_string());
        *lock(&self.xids).entry(label).or_default() += 1;
    }

    pub fn transition(&self, healthy: bool) {
        let to = if healthy { "healthy" } else { "unhealthy" };
        *lock(&self.transitions).entry(to).or_default() += 1;
    }

    pub fn registration(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::Relaxed)
    }

    /// Replaces the device gauges with `(resource, healthy, unhealthy)` counts.
    pub fn set_devices(&self, counts: &[(String, u64, u64)]) {
        let mut devices = lock(&self.devices);
        devices.clear();
        for (resource, healthy, unhealthy) in counts {
            devices.insert((resource.clone(), "healthy"), *healthy);
            devices.insert((resource.clone(), "unhealthy"), *unhealthy);
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP gantry_device_plugin_devices Devices advertised, by resource and health."
        );
        let _ = writeln!(out, "# TYPE gantry_device_plugin_devices gauge");
        for ((resource, health), n) in lock(&self.devices).iter() {
            let _ = writeln!(
                out,
                "gantry_device_plugin_devices{{resource=\"{resource}\",health=\"{health}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP gantry_device_plugin_allocations_total Allocate calls per container, by result.");
        let _ = writeln!(out, "# TYPE gantry_device_plugin_allocations_total counter");
        for ((resource, result), n) in lock(&self.allocations).iter() {
            let _ = writeln!(out, "gantry_device_plugin_allocations_total{{resource=\"{resource}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP gantry_device_plugin_xids_total XID errors seen, by XID."
        );
        let _ = writeln!(out, "# TYPE gantry_device_plugin_xids_total counter");
        for (xid, n) in lock(&self.xids).iter() {
            let _ = writeln!(out, "gantry_device_plugin_xids_total{{xid=\"{xid}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP gantry_device_plugin_health_transitions_total GPU health changes, by new state.");
        let _ = writeln!(
            out,
            "# TYPE gantry_device_plugin_health_transitions_total counter"
        );
        for (to, n) in lock(&self.transitions).iter() {
            let _ = writeln!(
                out,
                "gantry_device_plugin_health_transitions_total{{to=\"{to}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gantry_device_plugin_registrations_total Registrations with the kubelet."
        );
        let _ = writeln!(
            out,
            "# TYPE gantry_device_plugin_registrations_total counter"
        );
        let _ = writeln!(
            out,
            "gantry_device_plugin_registrations_total {}",
            self.registrations()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.allocation("nvidia.com/gpu", true);
        m.allocation("nvidia.com/gpu", true);
        m.xid(Some(79));
        m.transition(false);
        m.registration();
        m.set_devices(&[("nvidia.com/gpu".into(), 3, 1)]);
        let text = m.render();
        assert!(text.contains(
            "gantry_device_plugin_allocations_total{resource=\"nvidia.com/gpu\",result=\"ok\"} 2\n"
        ));
        assert!(text.contains("gantry_device_plugin_xids_total{xid=\"79\"} 1\n"));
        assert!(text.contains(
            "gantry_device_plugin_devices{resource=\"nvidia.com/gpu\",health=\"unhealthy\"} 1\n"
        ));
        assert!(text.contains("gantry_device_plugin_registrations_total 1\n"));
        assert!(
            text.contains("gantry_device_plugin_health_transitions_total{to=\"unhealthy\"} 1\n")
        );
    }
}
