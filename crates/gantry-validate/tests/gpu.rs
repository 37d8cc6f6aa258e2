// Integration tests: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gantry_validate::{validate, Error, ValidateConfig};

/// Runs everywhere: without a driver the answer is a clear error (never a cudarc panic); with one,
/// every GPU must pass.
#[test]
fn validate_answers_without_panicking() {
    let config = ValidateConfig {
        elements: 1 << 20,
        repeats: 2,
        devices: None,
    };
    match validate(&config) {
        Err(err @ Error::NoCudaDriver { .. }) => {
            let text = err.to_string();
            assert!(text.contains("libcuda.so"), "{text}");
            assert!(text.contains("no NVIDIA GPU driver"), "{text}");
        }
        Ok(reports) => assert!(reports.iter().all(|r| r.passed), "{reports:?}"),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn vector_add_on_every_gpu() {
    let reports = validate(&ValidateConfig::default()).unwrap();
    assert!(!reports.is_empty());
    for report in reports {
        assert!(report.passed, "{report:?}");
        assert!(report.achieved_gb_per_s > 0.0);
    }
}
