//! The operator writes gang labels that the scheduler extender reads: the two crates must agree.

#[test]
fn operator_and_scheduler_agree_on_gang_labels() {
    assert_eq!(
        gantry_planner::GANTRY_GROUP_LABEL,
        gantry_scheduler::schema::POD_GROUP_LABEL
    );
    assert_eq!(
        gantry_planner::GANTRY_MIN_MEMBER_LABEL,
        gantry_scheduler::schema::POD_GROUP_MIN_MEMBER_LABEL
    );
    assert_eq!(
        gantry_planner::GPU_RESOURCE,
        gantry_scheduler::schema::RESOURCE_GPU
    );
    assert_eq!(
        gantry_planner::GPU_MILLI_RESOURCE,
        gantry_scheduler::schema::RESOURCE_GPU_MILLI
    );
}
