//! mqctl without a server: help, completions and argument errors. (Its tests against a real
//! node live in the workspace's tests/ directory.) Having this file also makes cargo build
//! the mqctl binary when the workspace's tests run.

use std::process::Command;

fn mqctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mqctl"))
}

#[test]
fn help_documents_exit_codes_and_lookup_order() {
    let out = mqctl().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["Exit codes:", "not found", "MQ_TOKEN", "admin.token"] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = mqctl().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("mqctl"));
    }
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let out = mqctl()
        .args(["queue", "create", "q", "--max-size", "huge"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));
}
