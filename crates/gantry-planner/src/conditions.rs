//! Job conditions, updated exactly as Kubeflow's `UpdateJobConditions` does.

use gantry_tfjob::{ConditionStatus, JobCondition, JobConditionType, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Sets a condition:
///
/// - nothing changes once the job has a `Failed=True` condition;
/// - nothing changes when the condition already has this status and reason;
/// - the transition time is kept when only the reason changes;
/// - `Running` and `Restarting` replace each other; `Succeeded`/`Failed` turn `Running` to `False`.
pub(crate) fn set(
    status: &mut JobStatus,
    kind: JobConditionType,
    value: ConditionStatus,
    reason: &str,
    message: String,
    now: &Time,
) {
    if status.is(JobConditionType::Failed) {
        return;
    }
    let current = status.condition(kind);
    if current.is_some_and(|c| c.status == value && c.reason == reason) {
        return;
    }
    let transition = match current {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    let condition = JobCondition {
        type_: kind,
        status: value,
        reason: reason.to_string(),
        message,
        last_update_time: Some(now.clone()),
        last_transition_time: transition,
    };
    let mut kept = Vec::with_capacity(status.conditions.len() + 1);
    for mut c in std::mem::take(&mut status.conditions) {
        use JobConditionType::{Failed, Restarting, Running, Succeeded};
        if c.type_ == kind
            || (kind == Restarting && c.type_ == Running)
            || (kind == Running && c.type_ == Restarting)
        {
            continue;
        }
        if matches!(kind, Failed | Succeeded) && c.type_ == Running {
            c.status = ConditionStatus::False;
        }
        kept.push(c);
    }
    kept.push(condition);
    status.conditions = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn types(status: &JobStatus) -> Vec<(JobConditionType, ConditionStatus)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_, c.status))
            .collect()
    }

    #[test]
    fn running_and_restarting_replace_each_other() {
        use ConditionStatus::{False, True};
        use JobConditionType::*;
        let mut s = JobStatus::default();
        set(&mut s, Created, True, "TFJobCreated", "c".into(), &at(1));
        set(&mut s, Running, True, "TFJobRunning", "r".into(), &at(2));
        set(
            &mut s,
            Restarting,
            True,
            "TFJobRestarting",
            "x".into(),
            &at(3),
        );
        assert_eq!(types(&s), [(Created, True), (Restarting, True)]);
        set(&mut s, Running, True, "TFJobRunning", "r".into(), &at(4));
        assert_eq!(types(&s), [(Created, True), (Running, True)]);
        set(
            &mut s,
            Succeeded,
            True,
            "TFJobSucceeded",
            "s".into(),
            &at(5),
        );
        assert_eq!(
            types(&s),
            [(Created, True), (Running, False), (Succeeded, True)]
        );
    }

    #[test]
    fn an_unchanged_condition_keeps_its_times_and_failed_is_final() {
        use ConditionStatus::True;
        use JobConditionType::*;
        let mut s = JobStatus::default();
        set(&mut s, Running, True, "TFJobRunning", "r".into(), &at(1));
        let before = s.clone();
        set(
            &mut s,
            Running,
            True,
            "TFJobRunning",
            "other message".into(),
            &at(9),
        );
        assert_eq!(s, before);
        set(&mut s, Failed, True, "TFJobFailed", "f".into(), &at(10));
        let failed = s.clone();
        set(
            &mut s,
            Succeeded,
            True,
            "TFJobSucceeded",
            "s".into(),
            &at(11),
        );
        assert_eq!(s, failed);
    }
}
