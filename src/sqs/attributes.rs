//! Message attributes between SQS and mqd, and the MD5 digests SQS answers with.
//!
//! An mqd attribute is a name and bytes. An SQS attribute also has a data type (`String`,
//! `Number`, `Binary`, each with an optional `.label`). A `String` attribute is stored as
//! it is, so `mqctl` shows it and a `mqctl send --attr k=v` arrives through SQS as a
//! `String`. Any other type is recorded in one extra attribute, [`TYPES`], which holds
//! `name:type` lines; its name has a colon, which SQS names cannot, so it never collides.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::SqsError;
use crate::protocol::Attribute;

/// The mqd attribute that keeps the data types other than `String`.
pub const TYPES: &str = "sqs:types";
/// At most this many attributes per SQS message.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// One message attribute as SQS's JSON carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Value {
    /// `String`, `Number` or `Binary`, optionally followed by `.label`.
    pub data_type: String,
    /// The value of a `String` or `Number`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// The value of a `Binary`, base64 in JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
}

/// Whether `name` is a valid SQS message attribute name.
fn check_name(name: &str) -> Result<(), SqsError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.to_ascii_lowercase().starts_with("aws.")
        && !name.to_ascii_lowercase().starts_with("amazon.");
    if ok {
        Ok(())
    } else {
        Err(SqsError::invalid(format!(
            "Message attribute name `{name}` is invalid: use 1 to 256 letters, digits, `_`, `-` and `.`, not starting or ending with `.`, no `..`, and no `AWS.` or `Amazon.` prefix."
        )))
    }
}

/// The base type of a data type (`String`, `Number`, `Binary`), or an error.
fn base_type(name: &str, data_type: &str) -> Result<&'static str, SqsError> {
    let (base, label) = data_type.split_once('.').unwrap_or((data_type, ""));
    let base = match base {
        "String" => "String",
        "Number" => "Number",
        "Binary" => "Binary",
        _ => {
            return Err(SqsError::invalid(format!(
                "Message attribute `{name}` has data type `{data_type}`; it must be String, Number or Binary, optionally followed by `.label`."
            )))
        }
    };
    if data_type.len() > 256
        || (data_type.contains('.')
            && (label.is_empty()
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))))
    {
        return Err(SqsError::invalid(format!(
            "Message attribute `{name}` has data type `{data_type}`, whose label is not letters, digits, `_`, `-` and `.`."
        )));
    }
    Ok(base)
}

/// Whether `s` is a number as SQS accepts it: an optional sign, digits with at most one
/// `.`, an optional exponent.
fn is_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let digits = mantissa.bytes().filter(|b| b.is_ascii_digit()).count();
    let dots = mantissa.bytes().filter(|&b| b == b'.').count();
    let mantissa_ok = digits > 0 && digits + dots == mantissa.len() && dots <= 1;
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exp_ok && digits <= 38
}

/// A value's bytes, checked against its type.
fn value_bytes(name: &str, v: &Value) -> Result<(Vec<u8>, &'static str), SqsError> {
    let base = base_type(name, &v.data_type)?;
    let bytes = match base {
        "Binary" => {
            let b64 = v.binary_value.as_deref().ok_or_else(|| {
                SqsError::invalid(format!(
                    "Message attribute `{name}` of type Binary must have a BinaryValue."
                ))
            })?;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    SqsError::invalid(format!(
                        "Message attribute `{name}`: BinaryValue is not base64 ({e})."
                    ))
                })?
        }
        _ => {
            let s = v.string_value.as_deref().ok_or_else(|| {
                SqsError::invalid(format!(
                    "Message attribute `{name}` of type {base} must have a StringValue."
                ))
            })?;
            if base == "Number" && !is_number(s) {
                return Err(SqsError::invalid(format!(
                    "Message attribute `{name}` of type Number has value `{s}`, which is not a number of at most 38 digits."
                )));
            }
            s.as_bytes().to_vec()
        }
    };
    if bytes.is_empty() {
        return Err(SqsError::invalid(format!(
            "Message attribute `{name}` must have a non-empty value."
        )));
    }
    Ok((bytes, base))
}

/// SQS attributes as mqd attributes (sorted by name, [`TYPES`] last when needed).
pub fn to_mqd(attrs: &HashMap<String, Value>) -> Result<Vec<Attribute>, SqsError> {
    if attrs.len() > MAX_MESSAGE_ATTRIBUTES {
        return Err(SqsError::invalid(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MAX_MESSAGE_ATTRIBUTES}].",
            attrs.len()
        )));
    }
    let sorted: BTreeMap<&String, &Value> = attrs.iter().collect();
    let mut out = Vec::with_capacity(sorted.len() + 1);
    let mut types = String::new();
    for (name, v) in sorted {
        check_name(name)?;
        let (bytes, _) = value_bytes(name, v)?;
        if v.data_type != "String" {
            types.push_str(&format!("{name}:{}\n", v.data_type));
        }
        out.push((name.clone(), Bytes::from(bytes)));
    }
    if !types.is_empty() {
        out.push((TYPES.to_string(), Bytes::from(types)));
    }
    Ok(out)
}

/// mqd attributes as SQS attributes. A value that is not UTF-8 and has no recorded type
/// comes back as `Binary`.
pub fn from_mqd(attrs: &[Attribute]) -> BTreeMap<String, Value> {
    let types: HashMap<&str, &str> = attrs
        .iter()
        .find(|(k, _)| k == TYPES)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(|t| t.lines().filter_map(|l| l.split_once(':')).collect())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, value) in attrs {
        if name == TYPES {
            continue;
        }
        let text = std::str::from_utf8(value).ok();
        let data_type = match (types.get(name.as_str()), text) {
            (Some(t), Some(_)) => t.to_string(),
            (Some(t), None) if t.starts_with("Binary") => t.to_string(),
            (None, Some(_)) => "String".to_string(),
            _ => "Binary".to_string(),
        };
        let v = if data_type.starts_with("Binary") {
            Value {
                data_type,
                string_value: None,
                binary_value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            }
        } else {
            Value {
                data_type,
                string_value: text.map(str::to_string),
                binary_value: None,
            }
        };
        out.insert(name.clone(), v);
    }
    out
}

/// Whether attribute `name` is asked for by `MessageAttributeNames` (`All`, `.*`, a name,
/// or a prefix ending in `.*`).
pub fn wanted(names: &[String], name: &str) -> bool {
    names.iter().any(|n| {
        n == "All"
            || n == ".*"
            || n == name
            || n.strip_suffix(".*")
                .is_some_and(|p| name.starts_with(p) && name[p.len()..].starts_with('.'))
    })
}

/// Lower-case hex MD5.
pub fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", md5::compute(data))
}

/// SQS's `MD5OfMessageAttributes`: over the attributes sorted by name, each as length-
/// prefixed name, length-prefixed data type, a transport byte (1 for String and Number, 2
/// for Binary) and the length-prefixed value. `None` when there is no attribute.
pub fn md5_of_attributes(attrs: &BTreeMap<String, Value>) -> Option<String> {
    if attrs.is_empty() {
        return None;
    }
    let mut buf = Vec::new();
    let put = |b: &[u8], buf: &mut Vec<u8>| {
        buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
        buf.extend_from_slice(b);
    };
    for (name, v) in attrs {
        put(name.as_bytes(), &mut buf);
        put(v.data_type.as_bytes(), &mut buf);
        if v.data_type.starts_with("Binary") {
            buf.push(2);
            let raw = v
                .binary_value
                .as_deref()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            put(&raw, &mut buf);
        } else {
            buf.push(1);
            put(v.string_value.as_deref().unwrap_or("").as_bytes(), &mut buf);
        }
    }
    Some(md5_hex(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str, v: &str) -> Value {
        Value {
            data_type: t.into(),
            string_value: Some(v.into()),
            binary_value: None,
        }
    }

    #[test]
    fn types_other_than_string_survive_the_round_trip_and_strings_stay_plain() {
        let mut a = HashMap::new();
        a.insert("plain".to_string(), s("String", "x"));
        a.insert("n".to_string(), s("Number.int", "42"));
        a.insert(
            "b".to_string(),
            Value {
                data_type: "Binary".into(),
                string_value: None,
                binary_value: Some("AAEC".into()),
            },
        );
        let m = to_mqd(&a).unwrap();
        assert_eq!(m[2], ("plain".to_string(), Bytes::from_static(b"x")));
        assert_eq!(m[0].1, Bytes::from_static(&[0, 1, 2]));
        assert_eq!(m[3].0, TYPES);
        let back = from_mqd(&m);
        assert_eq!(back.len(), 3);
        assert_eq!(back["n"], s("Number.int", "42"));
        assert_eq!(back["b"].binary_value.as_deref(), Some("AAEC"));
        assert_eq!(back["plain"], s("String", "x"));
    }

    #[test]
    fn an_attribute_sent_by_mqctl_reads_as_a_string_or_binary() {
        let m = vec![
            ("k".to_string(), Bytes::from_static(b"v")),
            ("raw".to_string(), Bytes::from_static(&[0xff, 0])),
        ];
        let back = from_mqd(&m);
        assert_eq!(back["k"], s("String", "v"));
        assert_eq!(back["raw"].data_type, "Binary");
    }

    #[test]
    fn bad_attributes_are_refused_with_their_name() {
        for (name, v) in [
            ("AWS.x", s("String", "v")),
            ("a..b", s("String", "v")),
            ("ok", s("Float", "1")),
            ("ok", s("Number", "12abc")),
            ("ok", s("String", "")),
            ("ok", s("String.", "v")),
        ] {
            let mut a = HashMap::new();
            a.insert(name.to_string(), v);
            let e = to_mqd(&a).unwrap_err();
            assert_eq!(e.code, "InvalidParameterValue", "{name}");
        }
        assert!(is_number("-1.5e10") && is_number("7") && !is_number("1.2.3") && !is_number("e5"));
    }

    #[test]
    fn attribute_selection() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wanted(&n(&["All"]), "x"));
        assert!(wanted(&n(&["a.*"]), "a.b"));
        assert!(!wanted(&n(&["a.*"]), "ab"));
        assert!(!wanted(&n(&["x"]), "y"));
    }

    /// The attributes and digest of a ReceiveMessage answer in LocalStack's serializer
    /// tests (which are checked against SQS); the body digest is RFC 1321's.
    #[test]
    fn digests_match_sqs() {
        assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
        let mut a = BTreeMap::new();
        a.insert("Hello".to_string(), s("String", "There"));
        a.insert("General".to_string(), s("String", "Kenobi"));
        assert_eq!(
            md5_of_attributes(&a).as_deref(),
            Some("fca026605781cb4126a1e9044df24232")
        );
        assert_eq!(md5_of_attributes(&BTreeMap::new()), None);
    }
}
