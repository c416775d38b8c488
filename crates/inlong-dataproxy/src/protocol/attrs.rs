//! Validation of everything that ends up in the `k=v&k=v` attribute string, and the add-columns.
//!
//! The server parses attributes strictly (`PROTOCOL.md` §3.4): a chunk without exactly one `=`, or
//! a duplicate key, fails the whole batch with code 109. The Go SDK checks nothing (§6.13 #4), so
//! one bad stream ID or add-column fails every batch. Here every such value is refused up front
//! with a typed error.

use crate::error::{Error, Field};

/// Attribute keys the SDK writes itself or that change how the server treats a frame or reads its
/// reply. An add-column may not use any of them (compared without regard to ASCII case).
pub const RESERVED_ATTR_KEYS: &[&str] = &[
    // Written by the SDK on every batch (§2.4).
    "groupId",
    "streamId",
    "dt",
    "mid",
    "sid",
    "wid",
    "cnt",
    "cp",
    // Change the server's behaviour (§3.5): no reply at all, or rewritten times.
    "isAck",
    "syncSend",
    "proxySend",
    "rt",
    "rtms",
    "mt",
    // Keys of the reply (§3.7): an echoed copy would be read as the server's own.
    "dpIp",
    "errCode",
    "errMsg",
];

/// The longest group or stream ID, in bytes.
///
/// A DataProxy node echoes a batch's whole attribute string in its reply, twice for some error
/// codes (96, 109, 123 copy it into `errMsg`), and a client reads replies of at most 64 KiB
/// (`MAX_REPLY_FRAME_LEN`). Attributes of unbounded size would make every reply unreadable: the
/// batch would be sent again and again and fail as a lost connection. With IDs and add-columns
/// within these limits, the attribute string stays under 19 KiB and every reply fits. (InLong's
/// Manager itself allows far shorter IDs.)
pub const MAX_ID_LEN: usize = 1024;
/// The longest encoded add-columns (`&k1=v1&k2=v2…`), in bytes (see [`MAX_ID_LEN`]).
pub const MAX_ADD_COLUMNS_LEN: usize = 16 * 1024;

/// How much of a refused value an error quotes: enough to recognise it, not a 64 KiB copy.
const QUOTED_PREFIX: usize = 64;

/// The value as an error quotes it: whole when short, else its first [`QUOTED_PREFIX`] bytes
/// (at a character boundary), `…` and its length.
pub(crate) fn quoted(value: &str) -> String {
    if value.len() <= QUOTED_PREFIX {
        return value.to_owned();
    }
    let mut end = QUOTED_PREFIX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &value[..end], value.len())
}

/// Checks a group or stream ID: non-empty, at most [`MAX_ID_LEN`] bytes, no whitespace, no `&`
/// or `=`. A group ID is also a path segment of the Manager lookup URL: it may not contain `/`,
/// `\`, `?` or `#`, nor be `.` or `..` (the one rule set for group IDs, static endpoints or not).
pub fn validate_id(field: Field, value: &str) -> Result<(), Error> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_ID_LEN {
        "must be at most 1024 bytes long"
    } else if value.chars().any(char::is_whitespace) {
        "must not contain whitespace"
    } else if value.contains(['&', '=']) {
        "must not contain '&' or '='"
    } else if field == Field::GroupId && value.contains(['/', '\\', '?', '#']) {
        "must not contain '/', '\\', '?' or '#' (it is a path segment of the Manager lookup)"
    } else if field == Field::GroupId && (value == "." || value == "..") {
        "must not be '.' or '..' (it is a path segment of the Manager lookup)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidField { field, value: quoted(value), reason })
}

/// Checks a record payload: not empty, and not a lone `"\n"` (which the trailing-newline rule
/// would turn into an empty entry that makes the server drop the rest of the batch, §2.2).
pub fn validate_payload(payload: &[u8]) -> Result<(), Error> {
    match payload {
        [] => Err(Error::InvalidPayload { reason: "payload is empty" }),
        [b'\n'] => Err(Error::InvalidPayload {
            reason: "payload is a lone \"\\n\", which would be sent as an empty entry",
        }),
        _ => Ok(()),
    }
}

fn validate_add_column(key: &str, value: &str) -> Result<(), Error> {
    let invalid = |field, value: &str, reason| {
        Err(Error::InvalidField { field, value: quoted(value), reason })
    };
    if key.is_empty() {
        return invalid(Field::AddColumnKey, key, "must not be empty");
    }
    if key.contains(['&', '=']) {
        return invalid(Field::AddColumnKey, key, "must not contain '&' or '='");
    }
    if key.starts_with(char::is_whitespace) || key.ends_with(char::is_whitespace) {
        return invalid(Field::AddColumnKey, key, "must not start or end with whitespace");
    }
    if RESERVED_ATTR_KEYS.iter().any(|reserved| reserved.eq_ignore_ascii_case(key)) {
        return invalid(Field::AddColumnKey, key, "collides with a built-in attribute");
    }
    if value.contains(['&', '=']) {
        return invalid(Field::AddColumnValue, value, "must not contain '&' or '='");
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return invalid(Field::AddColumnValue, value, "must not start or end with whitespace");
    }
    Ok(())
}

/// The add-columns appended to every batch's attributes, encoded once.
///
/// Unlike the Go SDK (Go map order, random per process), the columns are written sorted by key,
/// so the same configuration always produces the same bytes. A value that is exactly `{{ip}}` is
/// replaced by the host IP given to [`AddColumns::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddColumns {
    encoded: String,
}

impl AddColumns {
    /// Validates and encodes `columns` as `&k1=v1&k2=v2…`, sorted by key.
    ///
    /// Fails on an empty key, a key or value containing `&` or `=` or surrounded by whitespace
    /// (the server trims it), a key that collides with [`RESERVED_ATTR_KEYS`], or a key given
    /// twice.
    pub fn new<K, V>(
        columns: impl IntoIterator<Item = (K, V)>,
        host_ip: &str,
    ) -> Result<AddColumns, Error>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in columns {
            let (key, value) = (key.as_ref(), value.as_ref());
            let value = if value == "{{ip}}" { host_ip } else { value };
            validate_add_column(key, value)?;
            pairs.push((key.to_owned(), value.to_owned()));
        }
        pairs.sort();
        if let Some(pair) = pairs.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(Error::InvalidField {
                field: Field::AddColumnKey,
                value: pair[0].0.clone(),
                reason: "given more than once",
            });
        }
        let mut encoded = String::new();
        for (key, value) in &pairs {
            encoded.push('&');
            encoded.push_str(key);
            encoded.push('=');
            encoded.push_str(value);
        }
        if encoded.len() > MAX_ADD_COLUMNS_LEN {
            return Err(Error::InvalidField {
                field: Field::AddColumnValue,
                value: quoted(&encoded[1..]),
                reason: "add-columns must be at most 16384 bytes in all",
            });
        }
        Ok(AddColumns { encoded })
    }

    /// The encoded columns, `""` or `&k1=v1&k2=v2…`.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    /// True when there are no add-columns.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id(Field::GroupId, "test_group").is_ok());
        for bad in ["a/b", "a?b", "a#b", "a\\b", ".", ".."] {
            let err = validate_id(Field::GroupId, bad).unwrap_err();
            assert!(matches!(err, Error::InvalidField { field: Field::GroupId, .. }), "{bad:?}");
            assert!(validate_id(Field::StreamId, bad).is_ok(), "{bad:?} is a valid stream id");
        }
        for bad in ["", "a b", "a\tb", "a&b", "a=b", " lead", "trail\n"] {
            let err = validate_id(Field::StreamId, bad).unwrap_err();
            assert_eq!(err.code(), 10010, "{bad:?}");
            assert!(matches!(err, Error::InvalidField { field: Field::StreamId, .. }));
        }
    }

    #[test]
    fn ids_and_add_columns_have_length_limits_and_errors_quote_a_prefix() {
        let longest = "s".repeat(MAX_ID_LEN);
        assert!(validate_id(Field::StreamId, &longest).is_ok());
        let huge = "é".repeat(40_000);
        let err = validate_id(Field::StreamId, &huge).unwrap_err();
        assert_eq!(err.code(), 10010);
        let Error::InvalidField { value, reason, .. } = &err else { panic!("{err:?}") };
        assert!(value.len() < 100 && value.ends_with("… (80000 bytes)"), "{value}");
        assert!(reason.contains("1024"));
        let value = "v".repeat(MAX_ADD_COLUMNS_LEN / 2);
        assert!(AddColumns::new([("a", value.as_str())], "ip").is_ok());
        let err = AddColumns::new([("a", value.as_str()), ("b", value.as_str())], "ip");
        assert!(matches!(err, Err(Error::InvalidField { field: Field::AddColumnValue, .. })));
    }

    #[test]
    fn the_longest_attributes_leave_every_reply_readable() {
        // The attribute string at its largest: IDs and add-columns at their limits, plus what
        // the SDK writes (`dt`, `mid`, `sid`, `wid`, `cnt`, `cp`; generously 300 bytes).
        let attrs = 2 * MAX_ID_LEN + MAX_ADD_COLUMNS_LEN + 300;
        // The worst reply: header, body, `dpIp`, `rt`/`rtms`, an `errCode`, an `errMsg` quoting
        // the attributes, and the echoed attributes themselves.
        let reply = 13 + 1 + 200 + 2 * attrs;
        assert!(reply <= crate::protocol::MAX_REPLY_FRAME_LEN, "{reply}");
    }

    #[test]
    fn payloads_are_checked() {
        assert!(validate_payload(b"x").is_ok());
        assert!(validate_payload(b"\n\n").is_ok(), "only one newline is stripped");
        assert!(validate_payload(b"\r\n").is_ok());
        assert_eq!(validate_payload(b"").unwrap_err().code(), 10010);
        assert_eq!(validate_payload(b"\n").unwrap_err().code(), 10010);
    }

    #[test]
    fn add_columns_are_sorted_and_ip_is_substituted() {
        let cols = AddColumns::new([("__addcol2__b", "{{ip}}"), ("__addcol1__a", "x")], "10.1.2.3")
            .unwrap();
        assert_eq!(cols.as_str(), "&__addcol1__a=x&__addcol2__b=10.1.2.3");
        let none = AddColumns::new(Vec::<(&str, &str)>::new(), "10.1.2.3").unwrap();
        assert!(none.is_empty());
        let empty_value = AddColumns::new([("k", "")], "ip").unwrap();
        assert_eq!(empty_value.as_str(), "&k=");
    }

    #[test]
    fn bad_add_columns_are_refused() {
        let cases: &[(&str, &str, Field)] = &[
            ("", "v", Field::AddColumnKey),
            ("a&b", "v", Field::AddColumnKey),
            ("a=b", "v", Field::AddColumnKey),
            (" k", "v", Field::AddColumnKey),
            ("k", "a&b", Field::AddColumnValue),
            ("k", "a=b", Field::AddColumnValue),
            ("k", "v ", Field::AddColumnValue),
            ("cnt", "1", Field::AddColumnKey),
            ("ISACK", "false", Field::AddColumnKey),
            ("errCode", "0", Field::AddColumnKey),
            ("syncSend", "true", Field::AddColumnKey),
        ];
        for (key, value, field) in cases {
            match AddColumns::new([(key, value)], "ip") {
                Err(Error::InvalidField { field: got, .. }) => {
                    assert_eq!(got, *field, "{key}={value}");
                }
                other => panic!("{key}={value}: {other:?}"),
            }
        }
        let dup = AddColumns::new([("k", "1"), ("k", "2")], "ip").unwrap_err();
        assert!(dup.to_string().contains("more than once"));
    }
}
