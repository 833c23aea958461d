//! The SQS-compatible HTTP API: the JSON protocol current AWS SDKs and the aws CLI speak
//! (`POST /`, `X-Amz-Target: AmazonSQS.<Operation>`, `application/x-amz-json-1.0`),
//! signed with Signature Version 4. The access key id is an mqd user name and the secret
//! key is derived from that user's token ([`crate::protocol::aws_secret_key`]). Each
//! operation becomes mqd requests run through the [`Frontend`] as that user, so grants,
//! quotas, the audit log and forwarding to the shard leaders apply as on QUIC.
//! `docs/SQS.md` says what is supported and what differs from SQS.

pub mod attributes;
pub mod error;
pub mod ops;
pub mod queue_attrs;
pub mod sigv4;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::frontend::{Frontend, Session};
use error::SqsError;

/// Largest request body: ten messages of SQS's 1 MiB limit would not fit, but SQS also
/// caps a batch at 1 MiB; the rest is room for JSON and attributes.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long a connection may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

/// A request id for `x-amzn-RequestId`: unique within the process, UUID-shaped.
fn request_id() -> String {
    let n = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    let started = START.get_or_init(crate::store::now_ms);
    ops::uuid_shaped(((started & 0xffff_ffff) << 32) | (pid & 0xffff_ffff), n)
}

static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn reply(
    status: u16,
    body: Vec<u8>,
    extra: Option<(&'static str, String)>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Ok(v) = request_id().parse() {
        h.insert("x-amzn-requestid", v);
    }
    if let Some((name, value)) = extra {
        if let Ok(v) = value.parse() {
            h.insert(name, v);
        }
    }
    r
}

fn error_reply(e: &SqsError) -> Response<Full<Bytes>> {
    reply(
        e.http,
        e.body(),
        Some(("x-amzn-query-error", e.query_header())),
    )
}

/// Authenticates a request: the user it is signed by and the region of its scope.
async fn authenticate(
    fe: &Frontend,
    remote: SocketAddr,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<([u8; 32], String, String), SqsError> {
    let signed = sigv4::Signed {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let sig_err = |e: sigv4::SigError| match e {
        sigv4::SigError::Missing => SqsError::missing_auth(),
        sigv4::SigError::Incomplete(m) => SqsError::incomplete_signature(m),
        sigv4::SigError::Expired(m) => SqsError::expired(m),
        sigv4::SigError::Mismatch(m) => SqsError::signature_mismatch(m),
    };
    let (auth, amz_date) = signed.authorization(now).map_err(sig_err)?;
    let hash = fe
        .token_sha256_of(&auth.access_key, remote.ip())
        .await
        .map_err(SqsError::from_failure)?
        .ok_or_else(|| SqsError::unknown_key(&auth.access_key))?;
    let secret = crate::protocol::aws_secret_key_of_hash(&hash);
    signed.verify(&auth, &amz_date, &secret).map_err(sig_err)?;
    Ok((hash, auth.region, auth.access_key))
}

async fn answer(
    fe: Arc<Frontend>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Ok(error_reply(&SqsError::unsupported(format!(
            "{} is not served: SQS's JSON protocol is POST / with X-Amz-Target: AmazonSQS.<Operation>",
            parts.method
        ))));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Ok(error_reply(&SqsError::too_large(MAX_BODY)));
            }
            tracing::debug!(%remote, error = %e, "SQS request body not read");
            return Ok(error_reply(&SqsError::serialization(
                "the request body could not be read",
            )));
        }
    };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(op) = target.strip_prefix("AmazonSQS.") else {
        return Ok(error_reply(&SqsError::unknown_operation(&target)));
    };
    let (hash, region, user) = match authenticate(&fe, remote, &parts, &body).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%remote, op, code = e.code, "SQS request refused: {}", e.message);
            return Ok(error_reply(&e));
        }
    };
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let ctx = ops::Ctx {
        fe: &fe,
        session: Session::with_token_hash(remote, hash),
        host,
        region,
    };
    match ops::run(&ctx, op, &body).await {
        Ok(json) => Ok(reply(
            200,
            serde_json::to_vec(&json).unwrap_or_default(),
            None,
        )),
        Err(e) => {
            tracing::debug!(%remote, op, %user, code = e.code, "SQS request failed: {}", e.message);
            Ok(error_reply(&e))
        }
    }
}

/// Binds `addr` and serves the SQS API until `shutdown` turns true; connections then
/// finish the request in progress and close. At most `max_connections` connections are
/// served at once; more are closed at once. Returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    fe: Arc<Frontend>,
    max_connections: u32,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let places = Arc::new(tokio::sync::Semaphore::new(max_connections as usize));
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "SQS listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let Ok(place) = places.clone().try_acquire_owned() else {
                tracing::warn!(%remote, "SQS listener: max_connections reached; connection refused");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let fe = fe.clone();
            let mut stop = shutdown.clone();
            conns.spawn(async move {
                let _place = place;
                let service =
                    hyper::service::service_fn(move |req| answer(fe.clone(), remote, req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%remote, error = %e, "SQS connection ended");
                        }
                    }
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
            // Reap finished connections so the set does not grow.
            while conns.try_join_next().is_some() {}
        }
        // Long polls end within their 20 s wait; give them that long.
        let _ = tokio::time::timeout(Duration::from_secs(25), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
    });
    Ok((bound, task))
}
