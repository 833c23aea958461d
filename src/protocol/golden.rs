//! Golden byte vectors. The expected bytes live in `docs/PROTOCOL.md`, in blocks marked
//! `golden: NAME`; these tests encode each value, compare with the document, decode the
//! document's bytes back, and decode every truncation of them (which must fail, not panic).
//! `cargo test -p mqd golden_dump -- --ignored --nocapture` prints the blocks afresh.

use bytes::Bytes;

use super::*;

enum Case {
    Request(Request),
    Response(Opcode, Response),
    Error(Status, &'static str),
}

fn receipt() -> Receipt {
    Receipt {
        queue_id: 1,
        seq: 7,
        delivery: 2,
    }
}

fn cases() -> Vec<(&'static str, Case)> {
    use Case::*;
    vec![
        ("ping", Request(super::Request::Ping)),
        (
            "hello",
            Request(super::Request::Hello {
                token: "tok".into(),
                client: "cli".into(),
            }),
        ),
        (
            "queue-create",
            Request(super::Request::QueueCreate {
                name: "jobs".into(),
                attributes: QueuePatch {
                    visibility_timeout_ms: Some(30_000),
                    dead_letter: Some(Some(DeadLetter {
                        queue: "dead".into(),
                        max_receives: 5,
                    })),
                    ..Default::default()
                },
            }),
        ),
        (
            "queue-delete",
            Request(super::Request::QueueDelete {
                name: "jobs".into(),
                force: true,
            }),
        ),
        (
            "queue-list",
            Request(super::Request::QueueList {
                prefix: "j".into(),
                start_after: "".into(),
                limit: 100,
            }),
        ),
        (
            "queue-describe",
            Request(super::Request::QueueDescribe {
                name: "jobs".into(),
            }),
        ),
        (
            "queue-purge",
            Request(super::Request::QueuePurge {
                name: "jobs".into(),
            }),
        ),
        (
            "queue-set",
            Request(super::Request::QueueSet {
                name: "jobs".into(),
                attributes: QueuePatch {
                    max_message_size: Some(1024),
                    dead_letter: Some(None),
                    ..Default::default()
                },
            }),
        ),
        (
            "queue-redrive",
            Request(super::Request::QueueRedrive {
                name: "dead".into(),
                to: "".into(),
                max: 0,
            }),
        ),
        (
            "queue-peek",
            Request(super::Request::QueuePeek {
                name: "jobs".into(),
                max: 10,
            }),
        ),
        (
            "queue-tag",
            Request(super::Request::QueueTag {
                name: "jobs".into(),
                set: vec![("team".into(), "billing".into())],
                remove: vec!["old".into()],
            }),
        ),
        (
            "queue-locate",
            Request(super::Request::QueueLocate {
                name: "jobs".into(),
            }),
        ),
        (
            "send",
            Request(super::Request::Send {
                queue: "jobs".into(),
                messages: vec![SendEntry {
                    delay_ms: Some(1000),
                    dedup_id: Some("o-17".into()),
                    group: None,
                    attributes: vec![("k".into(), Bytes::from_static(b"v"))],
                    body: Bytes::from_static(b"hi"),
                }],
            }),
        ),
        (
            "send-fifo",
            Request(super::Request::Send {
                queue: "jobs".into(),
                messages: vec![SendEntry {
                    delay_ms: None,
                    dedup_id: Some("o-17".into()),
                    group: Some("t7".into()),
                    attributes: vec![],
                    body: Bytes::from_static(b"hi"),
                }],
            }),
        ),
        (
            "receive",
            Request(super::Request::Receive {
                queue: "jobs".into(),
                max: 10,
                visibility_ms: None,
                wait_ms: Some(20_000),
            }),
        ),
        (
            "ack",
            Request(super::Request::Ack {
                queue: "jobs".into(),
                receipts: vec![receipt()],
            }),
        ),
        (
            "nack",
            Request(super::Request::Nack {
                queue: "jobs".into(),
                entries: vec![(receipt(), 5000)],
            }),
        ),
        (
            "change-visibility",
            Request(super::Request::ChangeVisibility {
                queue: "jobs".into(),
                entries: vec![(receipt(), 60_000)],
            }),
        ),
        (
            "hello-response",
            Response(
                Opcode::Hello,
                super::Response::Hello {
                    server_version: "0.1.0".into(),
                    max_frame: MAX_FRAME as u32,
                    max_batch: MAX_BATCH,
                },
            ),
        ),
        (
            "config-response",
            Response(
                Opcode::QueueCreate,
                super::Response::Config(QueueConfig::default()),
            ),
        ),
        (
            "count-response",
            Response(Opcode::QueuePurge, super::Response::Count(3)),
        ),
        (
            "list-response",
            Response(
                Opcode::QueueList,
                super::Response::List {
                    queues: vec![QueueSummary {
                        name: "jobs".into(),
                        messages: 2,
                    }],
                    truncated: false,
                },
            ),
        ),
        (
            "describe-response",
            Response(
                Opcode::QueueDescribe,
                super::Response::Describe(QueueDescription {
                    name: "jobs".into(),
                    id: 1,
                    created_ms: 1_700_000_000_000,
                    updated_ms: 1_700_000_000_000,
                    config: QueueConfig::default(),
                    counts: QueueCounts {
                        visible: 1,
                        in_flight: 2,
                        delayed: 3,
                    },
                    tags: vec![("team".into(), "billing".into())],
                }),
            ),
        ),
        (
            "peek-response",
            Response(
                Opcode::QueuePeek,
                super::Response::Messages(vec![Message {
                    id: 7,
                    receive_count: 0,
                    sent_ms: 1_700_000_000_000,
                    group: None,
                    attributes: vec![],
                    body: Bytes::from_static(b"hi"),
                }]),
            ),
        ),
        (
            "locate-response",
            Response(
                Opcode::QueueLocate,
                super::Response::Location(QueueLocation {
                    shard: 3,
                    leader: 2,
                    here: false,
                    address: "10.0.0.2:7400".into(),
                }),
            ),
        ),
        (
            "send-response",
            Response(Opcode::Send, super::Response::Sent(vec![7])),
        ),
        (
            "receive-response",
            Response(
                Opcode::Receive,
                super::Response::Deliveries(vec![Delivery {
                    receipt: receipt(),
                    message: Message {
                        id: 7,
                        receive_count: 2,
                        sent_ms: 1_700_000_000_000,
                        group: Some("t7".into()),
                        attributes: vec![("k".into(), Bytes::from_static(b"v"))],
                        body: Bytes::from_static(b"hi"),
                    },
                }]),
            ),
        ),
        (
            "ack-response",
            Response(
                Opcode::Ack,
                super::Response::Results(vec![Status::Ok, Status::ReceiptStale]),
            ),
        ),
        ("cluster-status", Request(super::Request::ClusterStatus)),
        (
            "node-add",
            Request(super::Request::NodeAdd {
                id: 4,
                address: "10.0.0.4:7411".into(),
            }),
        ),
        ("node-remove", Request(super::Request::NodeRemove { id: 1 })),
        (
            "user-create",
            Request(super::Request::UserCreate { name: "bob".into() }),
        ),
        (
            "grant",
            Request(super::Request::Grant {
                user: "bob".into(),
                pattern: "orders.*".into(),
                rights: crate::protocol::Rights::RECEIVE,
            }),
        ),
        (
            "token-rotate",
            Request(super::Request::TokenRotate {
                name: String::new(),
            }),
        ),
        (
            "user-limit",
            Request(super::Request::UserLimit {
                name: "bob".into(),
                rate_limit: 500,
            }),
        ),
        (
            "stats",
            Request(super::Request::Stats {
                queue: "jobs".into(),
            }),
        ),
        (
            "stats-response",
            Response(
                Opcode::Stats,
                super::Response::Stats {
                    queues: vec![(
                        "jobs".into(),
                        crate::protocol::Usage {
                            messages_in: 3,
                            bytes_in: 300,
                            messages_out: 2,
                            bytes_out: 200,
                            receives: 1,
                            acks: 2,
                            errors: 0,
                        },
                    )],
                    users: vec![],
                },
            ),
        ),
        (
            "audit",
            Request(super::Request::Audit {
                since_ms: 1_700_000_000_000,
                after_seq: 0,
                limit: 100,
            }),
        ),
        (
            "audit-response",
            Response(
                Opcode::Audit,
                super::Response::Audit {
                    entries: vec![crate::protocol::AuditEntry {
                        seq: 1,
                        at_ms: 1_700_000_000_000,
                        user: "bob".into(),
                        from: "10.0.0.9:5000".into(),
                        operation: "QUEUE_DELETE".into(),
                        target: "jobs".into(),
                        status: Status::Forbidden as u16,
                        message: "".into(),
                    }],
                    truncated: false,
                },
            ),
        ),
        (
            "token-response",
            Response(Opcode::UserCreate, super::Response::Token("0f1e".into())),
        ),
        (
            "user-response",
            Response(
                Opcode::UserDescribe,
                super::Response::User(crate::protocol::UserInfo {
                    name: "bob".into(),
                    created_ms: 1_700_000_000_000,
                    token_set_ms: 1_700_000_000_000,
                    grants: vec![crate::protocol::Grant {
                        pattern: "orders.*".into(),
                        rights: crate::protocol::Rights::SEND
                            .union(crate::protocol::Rights::RECEIVE),
                    }],
                    rate_limit: 500,
                }),
            ),
        ),
        (
            "cluster-status-response",
            Response(
                Opcode::ClusterStatus,
                super::Response::ClusterStatus(ClusterStatus {
                    node_id: 1,
                    shards: 1,
                    replicas: 2,
                    nodes: vec![
                        NodeStatus {
                            id: 1,
                            address: "10.0.0.1:7411".into(),
                            reachable: true,
                            version: "0.1.0".into(),
                            uptime_ms: 60_000,
                            error: "".into(),
                        },
                        NodeStatus {
                            id: 2,
                            address: "10.0.0.2:7411".into(),
                            reachable: false,
                            version: "".into(),
                            uptime_ms: 0,
                            error: "timeout".into(),
                        },
                    ],
                    groups: vec![GroupStatus {
                        group: 1,
                        leader: Some(1),
                        term: 3,
                        committed: 42,
                        last_log: 42,
                        moving: false,
                        replicas: vec![
                            ReplicaStatus {
                                node: 1,
                                role: ReplicaRole::Leader,
                                applied: 42,
                                matched: Some(42),
                            },
                            ReplicaStatus {
                                node: 2,
                                role: ReplicaRole::Unreachable,
                                applied: 0,
                                matched: Some(40),
                            },
                        ],
                    }],
                }),
            ),
        ),
        (
            "error-response",
            Error(Status::QueueNotFound, "no queue `x`"),
        ),
    ]
}

fn encode(case: &Case) -> Bytes {
    match case {
        Case::Request(r) => r.encode(),
        Case::Response(_, r) => r.encode(),
        Case::Error(s, m) => encode_error(*s, m),
    }
}

/// Decodes a whole frame as the case's type; `Err` if any layer refuses it.
fn decode(case: &Case, frame: &[u8]) -> Result<(), String> {
    if frame.len() < HEADER_LEN {
        return Err("short header".into());
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&frame[..HEADER_LEN]);
    let header = decode_header(&h).map_err(|e| e.to_string())?;
    let body = &frame[HEADER_LEN..];
    if body.len() != header.body_len {
        return Err("length mismatch".into());
    }
    let body = Bytes::copy_from_slice(body);
    match case {
        Case::Request(want) => {
            let got = Request::decode(header.code, body).map_err(|e| e.to_string())?;
            assert_eq!(&got, want);
        }
        Case::Response(op, want) => {
            assert_eq!(header.code, 0);
            let got = Response::decode(*op, body).map_err(|e| e.to_string())?;
            assert_eq!(&got, want);
        }
        Case::Error(s, m) => {
            assert_eq!(header.code, *s as u16);
            assert_eq!(decode_error_message(body).map_err(|e| e.to_string())?, *m);
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `golden: NAME` blocks of `docs/PROTOCOL.md`, as bytes.
fn documented() -> Vec<(String, Vec<u8>)> {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- golden: ")
            .and_then(|s| s.strip_suffix(" -->"))
        else {
            continue;
        };
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            let l = l.trim();
            if l.starts_with("```") {
                if bytes.is_empty() && l.len() > 3 || l == "```" && bytes.is_empty() {
                    continue; // opening fence
                }
                break;
            }
            for tok in l.split_whitespace() {
                bytes.push(u8::from_str_radix(tok, 16).expect("hex byte in golden block"));
            }
        }
        out.push((name.to_string(), bytes));
    }
    out
}

#[test]
fn golden_vectors_match_protocol_md() {
    let doc = documented();
    let cases = cases();
    for (name, case) in &cases {
        let (_, want) = doc
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no golden block `{name}`"));
        let got = encode(case);
        assert_eq!(
            hex(&got),
            hex(want),
            "encoding of `{name}` differs from docs/PROTOCOL.md"
        );
        decode(case, want).unwrap_or_else(|e| panic!("`{name}` does not decode: {e}"));
    }
    for (n, _) in &doc {
        assert!(
            cases.iter().any(|(c, _)| c == n),
            "docs/PROTOCOL.md block `{n}` has no test case"
        );
    }
}

#[test]
fn every_truncation_fails_cleanly() {
    for (name, case) in cases() {
        let full = encode(&case);
        for cut in 0..full.len() {
            // Keep the header's length honest so the body decoder sees the short body.
            let mut b = full[..cut].to_vec();
            if cut >= 4 {
                let len = (cut - 4) as u32;
                b[..4].copy_from_slice(&len.to_be_bytes());
            }
            let r = decode(&case, &b);
            // Empty bodies (PING) decode at the header cut; everything shorter must fail.
            if cut < full.len() && !(cut == HEADER_LEN && full.len() == HEADER_LEN) {
                assert!(
                    r.is_err(),
                    "`{name}` cut at {cut} of {} decoded",
                    full.len()
                );
            }
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut f = Request::QueueDescribe { name: "q".into() }
        .encode()
        .to_vec();
    f.push(0);
    let len = (f.len() - 4) as u32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    let err = Request::decode(
        Opcode::QueueDescribe as u16,
        Bytes::copy_from_slice(&f[HEADER_LEN..]),
    )
    .unwrap_err();
    assert_eq!(err.status(), Status::BadRequest);
}

#[test]
fn header_limits() {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&(MAX_FRAME as u32).to_be_bytes());
    h[4] = VERSION;
    assert_eq!(
        decode_header(&h).unwrap_err().status(),
        Status::FrameTooLarge
    );
    h[..4].copy_from_slice(&4u32.to_be_bytes());
    h[4] = 9;
    assert_eq!(
        decode_header(&h).unwrap_err().status(),
        Status::UnsupportedVersion
    );
    h[4] = VERSION;
    h[5] = 1;
    assert_eq!(decode_header(&h).unwrap_err().status(), Status::BadFrame);
    h[5] = 0;
    h[..4].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(decode_header(&h).unwrap_err().status(), Status::BadFrame);
}

#[test]
fn oversized_batch_is_batch_too_large() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.push(b'q');
    body.extend_from_slice(&(MAX_BATCH + 1).to_be_bytes());
    let err = Request::decode(Opcode::Send as u16, Bytes::from(body)).unwrap_err();
    assert_eq!(err.status(), Status::BatchTooLarge);
}

#[test]
fn receipt_hex_round_trip() {
    let r = receipt();
    assert_eq!(Receipt::from_hex(&r.to_hex()), Ok(r));
    assert!(Receipt::from_hex("zz").is_err());
    assert!(Receipt::from_hex(&"g".repeat(40)).is_err());
}

#[test]
#[ignore = "prints the golden blocks for docs/PROTOCOL.md"]
fn golden_dump() {
    for (name, case) in cases() {
        println!(
            "<!-- golden: {name} -->\n```text\n{}\n```\n",
            hex(&encode(&case))
        );
    }
}

#[test]
#[ignore = "writes the fuzzers' seed corpus (fuzz/corpus) from the golden cases"]
fn fuzz_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, case) in cases() {
        let frame = encode(&case);
        let (dir, bytes) = match &case {
            Case::Request(_) => ("request", frame.to_vec()),
            Case::Response(op, _) => {
                let pick = Opcode::ALL.iter().position(|o| o == op).unwrap() as u8;
                ("response", [&[pick][..], &frame].concat())
            }
            Case::Error(..) => ("response", [&[0u8][..], &frame].concat()),
        };
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
