//! `gantry validate` on this machine: with no GPU it must say so clearly and exit non-zero.
// Integration tests: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn validate_without_a_gpu_exits_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["validate", "--elements", "1024", "--repeats", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // A machine with a GPU: every GPU passed, and the table says so.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("PASS") && !text.contains("FAIL"), "{text}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no CUDA driver library could be loaded"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
