//! The SQS-compatible API against real nodes, through the AWS SDK for Python (boto3) and
//! the aws CLI, installed from PyPI into a virtual environment under `target/` by the
//! first test that needs it (`tests/sqs/requirements.txt` pins the versions).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{free_tcp_addr, mqctl_bin, ok, Node};

fn sqs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sqs")
}

/// The virtual environment with boto3 and the aws CLI, created (under a lock, since tests
/// run in parallel) when missing or when the requirements changed.
fn python_env() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = base.join("sqs-venv");
    let reqs = sqs_dir().join("requirements.txt");
    let script = r#"
        set -e
        if ! cmp -s "$REQS" "$VENV/requirements.txt"; then
            rm -rf "$VENV"
            python3 -m venv "$VENV"
            "$VENV/bin/pip" install --quiet --disable-pip-version-check --retries 5 -r "$REQS"
            cp "$REQS" "$VENV/requirements.txt"
        fi
    "#;
    let out = Command::new("flock")
        .arg(base.join("sqs-venv.lock"))
        .args(["sh", "-c", script])
        .env("REQS", &reqs)
        .env("VENV", &venv)
        .output()
        .expect("run flock (util-linux) and python3");
    assert!(
        out.status.success(),
        "installing boto3 and the aws CLI from PyPI failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    venv
}

/// The secret access key of the node's admin (from its `admin.token`).
fn admin_secret(node: &Node) -> String {
    let token = std::fs::read_to_string(node.dir().join("admin.token")).expect("admin.token");
    mqd::protocol::aws_secret_key(&token)
}

fn check(what: &str, out: Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    eprintln!("{text}");
}

#[test]
fn boto3_suite_passes_against_a_real_node() {
    let venv = python_env();
    let addr = free_tcp_addr().to_string();
    let node = Node::start_with(&["--sqs-listen", &addr]);
    // A user who may only send to queues named `limited-*`.
    let created: serde_json::Value = serde_json::from_str(&ok(
        &node.mqctl(&["user", "create", "limited", "-o", "json"])
    ))
    .expect("user create JSON");
    let token = created["token"].as_str().expect("token");
    ok(&node.mqctl(&["grant", "limited", "limited-*", "send"]));
    // mqctl prints the same secret the suite signs with.
    let printed: serde_json::Value = serde_json::from_str(&ok(&node.mqctl(&[
        "--token",
        token,
        "aws-credentials",
        "-o",
        "json",
    ])))
    .expect("aws-credentials JSON");
    assert_eq!(printed["aws_access_key_id"], "limited");
    let limited_secret = mqd::protocol::aws_secret_key(token);
    assert_eq!(printed["aws_secret_access_key"], limited_secret.as_str());

    let out = Command::new(venv.join("bin/python"))
        .arg(sqs_dir().join("test_boto3.py"))
        .env("MQD_SQS_ENDPOINT", format!("http://{addr}"))
        .env("MQD_SQS_KEY", "admin")
        .env("MQD_SQS_SECRET", admin_secret(&node))
        .env("MQD_SQS_LIMITED_KEY", "limited")
        .env("MQD_SQS_LIMITED_SECRET", &limited_secret)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run the boto3 suite");
    check("the boto3 suite", out);
}

#[test]
fn aws_cli_flows_and_messages_crossing_to_mqctl() {
    let venv = python_env();
    let addr = free_tcp_addr().to_string();
    let node = Node::start_with(&["--sqs-listen", &addr]);
    let out = Command::new("bash")
        .arg(sqs_dir().join("test_aws_cli.sh"))
        .env("AWS", venv.join("bin/aws"))
        .env("PY", venv.join("bin/python"))
        .env("MQCTL", mqctl_bin())
        .env("MQ_DATA_DIR", node.dir())
        .env("MQ_CONFIG", "/dev/null")
        .env_remove("MQ_SERVER")
        .env_remove("MQ_TOKEN")
        .env_remove("MQ_CA")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("ENDPOINT", format!("http://{addr}"))
        .env("AWS_ACCESS_KEY_ID", "admin")
        .env("AWS_SECRET_ACCESS_KEY", admin_secret(&node))
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run the aws CLI script");
    check("the aws CLI flows", out);
}

#[test]
fn every_node_of_a_cluster_serves_the_sqs_api() {
    let venv = python_env();
    let addrs: Vec<String> = (0..3).map(|_| free_tcp_addr().to_string()).collect();
    let nodes =
        Node::start_cluster_with(3, 4, |i| vec!["--sqs-listen".to_string(), addrs[i].clone()]);
    let out = Command::new(venv.join("bin/python"))
        .arg(sqs_dir().join("cluster_check.py"))
        .env(
            "MQD_SQS_ENDPOINTS",
            addrs
                .iter()
                .map(|a| format!("http://{a}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("MQD_SQS_KEY", "admin")
        .env("MQD_SQS_SECRET", admin_secret(&nodes[0]))
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run the cluster check");
    check("the cluster check", out);
}

#[test]
fn a_bad_sqs_address_is_refused_by_check_config() {
    let out = Command::new(crate::common::mqd_bin())
        .args(["--sqs-listen", "localhost", "--check-config"])
        .env("MQD_CONFIG", "/dev/null")
        .output()
        .expect("run mqd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sqs_listen `localhost`"), "{err}");
}
