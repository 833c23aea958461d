//! AWS Signature Version 4, verified: the `Authorization` header of a request is parsed,
//! the canonical request rebuilt from what arrived, and the signature recomputed with the
//! secret of the access key it names. Only the header form is accepted (no presigned
//! query strings, no session tokens); SDKs sign SQS requests that way.

use hyper::HeaderMap;
use ring::hmac;

/// The one algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's `X-Amz-Date` may be from this node's clock.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// Why a request's signature was refused; each maps to one of SQS's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    /// No `Authorization` header at all.
    Missing,
    /// The header or a required part of the request is malformed or missing.
    Incomplete(String),
    /// `X-Amz-Date` is too far from the node's clock.
    Expired(String),
    /// The signature does not match.
    Mismatch(String),
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id (an mqd user name).
    pub access_key: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// Region of the scope (any is accepted; it is part of the signature).
    pub region: String,
    /// Service of the scope; must be `sqs`.
    pub service: String,
    /// Lower-case names of the signed headers, in the order given.
    pub signed_headers: Vec<String>,
    /// The signature, 64 hex digits.
    pub signature: String,
}

impl Authorization {
    /// The credential scope: `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

fn incomplete(msg: impl Into<String>) -> SigError {
    SigError::Incomplete(msg.into())
}

/// Parses the `Authorization` header.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let rest = value.trim().strip_prefix(ALGORITHM).ok_or_else(|| {
        incomplete(format!(
            "the Authorization header must use {ALGORITHM} (Signature Version 4)"
        ))
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| incomplete(format!("Authorization header part `{part}` has no `=`")))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let credential =
        credential.ok_or_else(|| incomplete("the Authorization header has no Credential= part"))?;
    let signed =
        signed.ok_or_else(|| incomplete("the Authorization header has no SignedHeaders= part"))?;
    let signature =
        signature.ok_or_else(|| incomplete("the Authorization header has no Signature= part"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminal] = scope[..] else {
        return Err(incomplete(format!(
            "Credential `{credential}` is not ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    };
    if terminal != "aws4_request"
        || access_key.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(incomplete(format!(
            "Credential `{credential}` is not ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete("Signature is not 64 hex digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(|h| h.to_ascii_lowercase()).collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(incomplete(format!(
            "SignedHeaders `{signed}` has an empty name"
        )));
    }
    Ok(Authorization {
        access_key: access_key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters as they are,
/// everything else `%XX` in upper case; `/` kept when `keep_slash`.
fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and nothing else); a malformed escape is kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let digits = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The canonical URI: the path, normalized (`.` and `..` segments and repeated slashes
/// removed), each segment percent-encoded once.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| uri_encode(&percent_decode(s), false))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if path.len() > 1 && path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical query string: every parameter encoded, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " "));
            (uri_encode(&dec(k), false), uri_encode(&dec(v), false))
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as SigV4 canonicalizes it: trimmed, inner runs of spaces made one.
fn canonical_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The canonical request of SigV4, from what arrived.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    signed_headers: &[String],
    payload_sha256_hex: &str,
) -> Result<String, SigError> {
    let mut out = format!(
        "{method}\n{}\n{}\n",
        canonical_uri(path),
        canonical_query(query)
    );
    for name in signed_headers {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| canonical_value(v.as_bytes()))
            .collect();
        if values.is_empty() {
            return Err(incomplete(format!(
                "header `{name}` is listed in SignedHeaders but is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_sha256_hex);
    Ok(out)
}

/// The string to sign for `canonical` at `amz_date` in `scope`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The signing key derived from `secret` for the scope's date, region and service.
pub fn signing_key(secret: &str, auth: &Authorization) -> hmac::Key {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), auth.region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), auth.service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Seconds since the Unix epoch of an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Everything needed to check one request.
pub struct Signed<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path as it arrived (still percent-encoded).
    pub path: &'a str,
    /// Query string as it arrived, without `?`.
    pub query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

impl Signed<'_> {
    /// The request's `X-Amz-Date`, checked against `now_secs`, and its parsed
    /// `Authorization`.
    pub fn authorization(&self, now_secs: i64) -> Result<(Authorization, String), SigError> {
        let header = self
            .headers
            .get(hyper::header::AUTHORIZATION)
            .ok_or(SigError::Missing)?;
        let auth = parse_authorization(
            header
                .to_str()
                .map_err(|_| incomplete("the Authorization header is not ASCII"))?,
        )?;
        if auth.service != "sqs" {
            return Err(incomplete(format!(
                "the credential scope names service `{}`; this endpoint is `sqs`",
                auth.service
            )));
        }
        if !auth.signed_headers.iter().any(|h| h == "host") {
            return Err(incomplete("the Host header must be signed"));
        }
        let amz_date = self
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| incomplete("the request has no X-Amz-Date header"))?
            .to_string();
        let at = parse_amz_date(&amz_date).ok_or_else(|| {
            incomplete(format!(
                "X-Amz-Date `{amz_date}` is not in the form YYYYMMDDTHHMMSSZ"
            ))
        })?;
        if !amz_date.starts_with(&auth.date) {
            return Err(SigError::Mismatch(format!(
                "the credential scope's date {} is not the date of X-Amz-Date {amz_date}",
                auth.date
            )));
        }
        if (at - now_secs).abs() > MAX_SKEW_SECS {
            return Err(SigError::Expired(format!(
                "X-Amz-Date {amz_date} is more than 15 minutes from this node's clock; check the client's clock"
            )));
        }
        Ok((auth, amz_date))
    }

    /// Checks the signature against `secret`.
    pub fn verify(
        &self,
        auth: &Authorization,
        amz_date: &str,
        secret: &str,
    ) -> Result<(), SigError> {
        let payload = sha256_hex(self.body);
        if let Some(claimed) = self.headers.get("x-amz-content-sha256") {
            if claimed.as_bytes() != payload.as_bytes() && claimed.as_bytes() != b"UNSIGNED-PAYLOAD"
            {
                return Err(SigError::Mismatch(
                    "X-Amz-Content-SHA256 is not the SHA-256 of the body".into(),
                ));
            }
        }
        let canonical = canonical_request(
            self.method,
            self.path,
            self.query,
            self.headers,
            &auth.signed_headers,
            &payload,
        )?;
        let to_sign = string_to_sign(amz_date, &auth.scope(), &canonical);
        let mut given = [0u8; 32];
        for (i, out) in given.iter_mut().enumerate() {
            *out = u8::from_str_radix(&auth.signature[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        hmac::verify(&signing_key(secret, auth), to_sign.as_bytes(), &given).map_err(|_| {
            SigError::Mismatch(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";
    const BODY: &[u8] = br#"{"QueueName": "jobs"}"#;

    /// A request botocore 1.44.8 signed (`SigV4Auth(creds, "sqs", "eu-west-1")` with the
    /// clock fixed at 2026-11-30 14:15:16 UTC).
    fn botocore_request() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:4566".parse().unwrap());
        h.insert("x-amz-target", "AmazonSQS.CreateQueue".parse().unwrap());
        h.insert(
            "content-type",
            "application/x-amz-json-1.0".parse().unwrap(),
        );
        h.insert("x-amz-date", "20261130T141516Z".parse().unwrap());
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=alice/20261130/eu-west-1/sqs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=b0aba339173470344e36cf0befb0b83eacc115217b549b54d80e399145a63f18"
                .parse()
                .unwrap(),
        );
        h
    }

    fn check(h: &HeaderMap, body: &[u8], now: i64, secret: &str) -> Result<String, SigError> {
        let s = Signed {
            method: "POST",
            path: "/",
            query: "",
            headers: h,
            body,
        };
        let (auth, date) = s.authorization(now)?;
        s.verify(&auth, &date, secret)?;
        Ok(auth.access_key)
    }

    fn at() -> i64 {
        parse_amz_date("20261130T141516Z").unwrap()
    }

    #[test]
    fn a_request_signed_by_botocore_verifies() {
        assert_eq!(
            check(&botocore_request(), BODY, at(), SECRET).unwrap(),
            "alice"
        );
        // Within the allowed skew either way.
        assert!(check(&botocore_request(), BODY, at() + 14 * 60, SECRET).is_ok());
        assert!(check(&botocore_request(), BODY, at() - 14 * 60, SECRET).is_ok());
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let h = botocore_request();
        let other_secret = SECRET.replace("f00d", "0000");
        assert!(matches!(
            check(&h, BODY, at(), &other_secret),
            Err(SigError::Mismatch(_))
        ));
        assert!(matches!(
            check(&h, br#"{"QueueName": "jobz"}"#, at(), SECRET),
            Err(SigError::Mismatch(_))
        ));
        let mut t = h.clone();
        t.insert("x-amz-target", "AmazonSQS.DeleteQueue".parse().unwrap());
        assert!(matches!(
            check(&t, BODY, at(), SECRET),
            Err(SigError::Mismatch(_))
        ));
        let mut d = h.clone();
        d.insert("x-amz-date", "20261130T141517Z".parse().unwrap());
        assert!(matches!(
            check(&d, BODY, at(), SECRET),
            Err(SigError::Mismatch(_))
        ));
    }

    #[test]
    fn old_missing_and_malformed_signatures_are_told_apart() {
        let h = botocore_request();
        assert!(matches!(
            check(&h, BODY, at() + 16 * 60, SECRET),
            Err(SigError::Expired(_))
        ));
        let mut none = h.clone();
        none.remove("authorization");
        assert_eq!(check(&none, BODY, at(), SECRET), Err(SigError::Missing));
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/20261130/r/sqs/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/2026/r/sqs/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/20261130/r/s3/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20261130/r/sqs/aws4_request, SignedHeaders=x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let mut b = h.clone();
            b.insert("authorization", bad.parse().unwrap());
            assert!(
                matches!(check(&b, BODY, at(), SECRET), Err(SigError::Incomplete(_))),
                "{bad}"
            );
        }
        let mut unsigned_header = h.clone();
        unsigned_header.remove("x-amz-target");
        assert!(matches!(
            check(&unsigned_header, BODY, at(), SECRET),
            Err(SigError::Incomplete(m)) if m.contains("x-amz-target")
        ));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(canonical_uri("/a%20b"), "/a%20b");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("x=a+b&y=%7e"), "x=a%20b&y=~");
        assert_eq!(canonical_value(b"  a   b "), "a b");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20000301T000000Z"), Some(951_868_800));
        assert_eq!(parse_amz_date("2000-03-01"), None);
    }
}
