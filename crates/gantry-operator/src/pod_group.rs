//! PodGroups: the planner's [`PodGroupPlan`] rendered for Volcano or scheduler-plugins, and
//! admission read back.
//!
//! Under `--gang-scheduler gantry` there is no PodGroup object: the pods carry the group labels that
//! Gantry's scheduler extender reads ([`GANTRY_GROUP_LABEL`](gantry_planner::GANTRY_GROUP_LABEL) and
//! [`GANTRY_MIN_MEMBER_LABEL`](gantry_planner::GANTRY_MIN_MEMBER_LABEL)), so the group always counts as
//! admitted.

use gantry_planner::{GangScheduler, ObservedPodGroup, PodGroupPlan};
use gantry_tfjob::TFJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Resource;
use serde_json::json;

/// The PodGroup API of a gang scheduler; `None` when it has no PodGroup object.
pub fn api_resource(gang: GangScheduler) -> Option<ApiResource> {
    let gvk = match gang {
        GangScheduler::Volcano => {
            GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup")
        }
        GangScheduler::SchedulerPlugins => {
            GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup")
        }
        GangScheduler::None | GangScheduler::Gantry => return None,
    };
    Some(ApiResource::from_gvk_with_plural(&gvk, "podgroups"))
}

/// The PodGroup object for `plan`, owned by `job`.
///
/// Volcano's `spec` has `minMember`, `minResources`, `queue`, `priorityClassName`; scheduler-plugins'
/// has `minMember`, `minResources` and `scheduleTimeoutSeconds`. `minResources` counts GPUs set only in
/// `limits` (the planner sums them).
pub fn render(gang: GangScheduler, job: &TFJob, plan: &PodGroupPlan) -> Option<DynamicObject> {
    let resource = api_resource(gang)?;
    let mut spec = json!({
        "minMember": plan.min_member,
        "minResources": plan.min_resources,
    });
    if gang == GangScheduler::Volcano {
        spec["queue"] = json!(plan.queue);
        if let Some(priority) = &plan.priority_class {
            spec["priorityClassName"] = json!(priority);
        }
    } else if let Some(timeout) = plan.schedule_timeout_seconds {
        spec["scheduleTimeoutSeconds"] = json!(timeout);
    }
    let mut object = DynamicObject::new(&plan.name, &resource).within(job.namespace());
    object.metadata = ObjectMeta {
        owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
        ..object.metadata
    };
    object.data = json!({ "spec": spec });
    Some(object)
}

/// What the planner needs of an observed PodGroup: Volcano admits a group by moving it to `Inqueue`
/// (then `Running`); scheduler-plugins has no admission step, so its group counts as admitted.
pub fn observe(gang: GangScheduler, object: &DynamicObject) -> ObservedPodGroup {
    let phase = object
        .data
        .get("status")
        .and_then(|s| s.get("phase"))
        .and_then(|p| p.as_str())
        .unwrap_or_default();
    ObservedPodGroup {
        admitted: match gang {
            GangScheduler::Volcano => matches!(phase, "Inqueue" | "Running"),
            _ => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volcano_admission_follows_the_phase() {
        let resource = api_resource(GangScheduler::Volcano).unwrap();
        let mut group = DynamicObject::new("j", &resource);
        for (phase, admitted) in [
            ("Pending", false),
            ("Inqueue", true),
            ("Running", true),
            ("", false),
        ] {
            group.data = json!({"status": {"phase": phase}});
            assert_eq!(
                observe(GangScheduler::Volcano, &group).admitted,
                admitted,
                "{phase}"
            );
        }
        group.data = json!({});
        assert!(observe(GangScheduler::SchedulerPlugins, &group).admitted);
    }

    #[test]
    fn apis_per_scheduler() {
        assert_eq!(
            api_resource(GangScheduler::Volcano).unwrap().api_version,
            "scheduling.volcano.sh/v1beta1"
        );
        assert_eq!(
            api_resource(GangScheduler::SchedulerPlugins)
                .unwrap()
                .api_version,
            "scheduling.x-k8s.io/v1alpha1"
        );
        assert!(api_resource(GangScheduler::Gantry).is_none());
        assert!(api_resource(GangScheduler::None).is_none());
    }
}
