//! The SQS listener under malformed and hostile requests, signed here with the library's
//! own Signature Version 4 code over raw HTTP/1.1: every one is answered with an SQS
//! error and the node goes on serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};
use mqd::sqs::sigv4;

use crate::common::Node;

struct Sqs {
    addr: String,
    key: String,
    secret: String,
}

/// One HTTP exchange: the status and the body.
fn exchange(addr: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading all of a huge body.
    let _ = s.write_all(body);
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

impl Sqs {
    /// A request for `target` with `body`, signed at `date` (None: now), with
    /// `authorization` replacing the real one when given.
    fn call_with(
        &self,
        target: Option<&str>,
        body: &[u8],
        date: Option<&str>,
        authorization: Option<&str>,
    ) -> (u16, String) {
        let now = date.map(str::to_string).unwrap_or_else(amz_now);
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_str(&self.addr).unwrap());
        h.insert("x-amz-date", HeaderValue::from_str(&now).unwrap());
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        let mut signed = vec![
            "content-type".to_string(),
            "host".into(),
            "x-amz-date".into(),
        ];
        if let Some(t) = target {
            h.insert("x-amz-target", HeaderValue::from_str(t).unwrap());
            signed.push("x-amz-target".into());
        }
        let auth = sigv4::Authorization {
            access_key: self.key.clone(),
            date: now[..8].to_string(),
            region: "us-east-1".into(),
            service: "sqs".into(),
            signed_headers: signed.clone(),
            signature: String::new(),
        };
        let canonical =
            sigv4::canonical_request("POST", "/", "", &h, &signed, &sigv4::sha256_hex(body))
                .unwrap();
        let to_sign = sigv4::string_to_sign(&now, &auth.scope(), &canonical);
        let sig = ring::hmac::sign(&sigv4::signing_key(&self.secret, &auth), to_sign.as_bytes());
        let authorization = authorization.map(str::to_string).unwrap_or_else(|| {
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
                self.key,
                auth.scope(),
                signed.join(";"),
                sigv4::hex(sig.as_ref())
            )
        });
        let mut head = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nX-Amz-Date: {now}\r\nContent-Type: application/x-amz-json-1.0\r\nAuthorization: {authorization}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = target {
            head.push_str(&format!("X-Amz-Target: {t}\r\n"));
        }
        head.push_str("\r\n");
        exchange(&self.addr, &head, body)
    }

    fn call(&self, op: &str, body: &[u8]) -> (u16, String) {
        self.call_with(Some(&format!("AmazonSQS.{op}")), body, None, None)
    }
}

/// `X-Amz-Date` for now.
fn amz_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Civil date from days (Howard Hinnant's algorithm).
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error body {body:?}: {e}"));
    v["__type"]
        .as_str()
        .unwrap_or_default()
        .rsplit('#')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn malformed_and_hostile_requests_get_sqs_errors_and_the_node_keeps_serving() {
    let addr = crate::common::free_tcp_addr().to_string();
    let node = Node::start_with(&["--sqs-listen", &addr]);
    let token = std::fs::read_to_string(node.dir().join("admin.token")).unwrap();
    let sqs = Sqs {
        addr: addr.clone(),
        key: "admin".into(),
        secret: mqd::protocol::aws_secret_key(&token),
    };
    assert!(sigv4::parse_amz_date(&amz_now()).is_some());

    // A request signed here works: the signer is right, so refusals below are about
    // what each one changes.
    let (s, b) = sqs.call("CreateQueue", br#"{"QueueName":"abuse"}"#);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("/000000000000/abuse"), "{b}");

    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("CreateQueue", b"not json".to_vec(), 400, "SerializationException"),
        ("CreateQueue", br#"{"QueueName": 5}"#.to_vec(), 400, "SerializationException"),
        ("CreateQueue", vec![0xff, 0xfe, 0x00], 400, "SerializationException"),
        ("CreateQueue", deep.into_bytes(), 400, "SerializationException"),
        (
            "ReceiveMessage",
            br#"{"QueueUrl":"abuse","MaxNumberOfMessages":1e40}"#.to_vec(),
            400,
            "SerializationException",
        ),
        (
            "ReceiveMessage",
            br#"{"QueueUrl":"abuse","MaxNumberOfMessages":-1}"#.to_vec(),
            400,
            "InvalidParameterValue",
        ),
        (
            "ChangeMessageVisibility",
            br#"{"QueueUrl":"abuse","ReceiptHandle":"00","VisibilityTimeout":9223372036854775807}"#
                .to_vec(),
            400,
            "ReceiptHandleIsInvalid",
        ),
        (
            "SendMessage",
            br#"{"QueueUrl":"abuse","MessageBody":"x","DelaySeconds":-5}"#.to_vec(),
            400,
            "InvalidParameterValue",
        ),
        (
            "SendMessage",
            br#"{"QueueUrl":"http://x/../../etc/passwd","MessageBody":"x"}"#.to_vec(),
            400,
            "QueueDoesNotExist",
        ),
        (
            "SendMessage",
            br#"{"QueueUrl":"abuse","MessageBody":"x","MessageAttributes":{"a":{"DataType":"Binary","BinaryValue":"!!!"}}}"#.to_vec(),
            400,
            "InvalidParameterValue",
        ),
        ("SendMessage", br#"{"QueueUrl":"abuse"}"#.to_vec(), 400, "MissingParameter"),
        ("DeleteQueue", b"{}".to_vec(), 400, "MissingParameter"),
        ("NoSuchThing", b"{}".to_vec(), 400, "UnknownOperationException"),
    ];
    for (op, body, status, want) in &cases {
        let (s, b) = sqs.call(op, body);
        assert_eq!((s, code(&b)), (*status, want.to_string()), "{op} {b}");
    }

    // No target; a date from an hour ago; a garbled and a forged Authorization.
    let (s, b) = sqs.call_with(None, b"{}", None, None);
    assert_eq!((s, code(&b).as_str()), (400, "UnknownOperationException"));
    let (s, b) = sqs.call_with(
        Some("AmazonSQS.ListQueues"),
        b"{}",
        Some("20200101T000000Z"),
        None,
    );
    assert_eq!((s, code(&b).as_str()), (400, "RequestExpired"), "{b}");
    let (s, b) = sqs.call_with(Some("AmazonSQS.ListQueues"), b"{}", None, Some("Bearer x"));
    assert_eq!((s, code(&b).as_str()), (400, "IncompleteSignature"));
    let forged = format!(
        "AWS4-HMAC-SHA256 Credential=admin/{}/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
        &amz_now()[..8],
        "ab".repeat(32)
    );
    let (s, b) = sqs.call_with(Some("AmazonSQS.ListQueues"), b"{}", None, Some(&forged));
    assert_eq!((s, code(&b).as_str()), (403, "SignatureDoesNotMatch"));

    // Not POST; a body over the limit.
    let (s, b) = exchange(
        &addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        b"",
    );
    assert_eq!((s, code(&b).as_str()), (400, "UnsupportedOperation"));
    let big = vec![b' '; mqd::sqs::MAX_BODY + 1];
    let (s, b) = sqs.call("ListQueues", &big);
    assert_eq!((s, code(&b).as_str()), (413, "RequestEntityTooLarge"));
    // Garbage that is not HTTP at all.
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    drop(raw);

    // Still serving, and nothing was created or sent by any of it.
    let (s, b) = sqs.call("ListQueues", b"{}");
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["QueueUrls"].as_array().map(Vec::len), Some(1), "{b}");
    let (s, b) = sqs.call(
        "GetQueueAttributes",
        br#"{"QueueUrl":"abuse","AttributeNames":["ApproximateNumberOfMessages"]}"#,
    );
    assert_eq!(s, 200);
    assert!(b.contains(r#""ApproximateNumberOfMessages":"0""#), "{b}");
    assert!(
        !node.log().contains("panicked"),
        "the node panicked:\n{}",
        node.log()
    );
}
