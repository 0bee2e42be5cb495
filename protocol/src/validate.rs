//! Input checks shared by every service: each failure names the field.

use serde::de::DeserializeOwned;

/// Longest accepted server id.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted region code.
pub const MAX_REGION_LEN: usize = 64;
/// Longest accepted server URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest accepted token, in bytes. Real tokens are well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A request field that failed a check. `field` is a JSON path such as
/// `load` or `servers[3].url`; the message says what is wrong and what is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a JSON body, reporting a shape error (missing field, wrong type,
/// unknown field, bad syntax) against the path of the field that failed
/// (`serde_path_to_error` tracks it). Bodies that are not JSON at all are
/// reported against the field `body`.
/// Every body of the contract is a JSON object; anything else (an array,
/// which serde would read as the fields in order, a string, a number) is
/// refused as a whole.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(FieldError::new(
                "body",
                "is empty; a JSON object is expected",
            ))
        }
        Some(_) => return Err(FieldError::new("body", "must be a JSON object")),
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        let message = strip_position(&inner.to_string());
        let path = e.path().to_string();
        let field = if inner.is_syntax() || inner.is_eof() {
            "body".to_owned()
        } else if let Some(name) = quoted_field(&message, "missing field `") {
            // serde reports a missing field at the enclosing object.
            join_path(&path, &name)
        } else if path == "." || path.starts_with('[') {
            // The body is not an object at all.
            "body".to_owned()
        } else {
            path
        };
        FieldError::new(field, message)
    })?;
    de.end().map_err(|e| {
        FieldError::new(
            "body",
            format!(
                "trailing data after the JSON value: {}",
                strip_position(&e.to_string())
            ),
        )
    })?;
    Ok(value)
}

fn quoted_field(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "." {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Server ids and region codes: 1..=max chars of `[A-Za-z0-9._-]`. The
/// narrow alphabet keeps ids out of URLs, headers and log injection.
fn token_like(field: &str, value: &str, max: usize, what: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(
            field,
            format!("must not be empty: a {what} is 1-{max} characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} characters; a {what} is at most {max}", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(FieldError::new(
            field,
            format!("{value:?} contains {c:?}; a {what} is made of A-Z a-z 0-9 . _ -"),
        ));
    }
    // "." and ".." would be path segments in URLs such as
    // /v1/servers/{id}/drain.
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(FieldError::new(
            field,
            format!("{value:?}: a {what} starts with a letter or a digit"),
        ));
    }
    Ok(())
}

pub fn server_id(field: &str, value: &str) -> Result<(), FieldError> {
    token_like(field, value, MAX_ID_LEN, "server id")
}

pub fn region(field: &str, value: &str) -> Result<(), FieldError> {
    token_like(field, value, MAX_REGION_LEN, "region code")
}

/// An absolute http(s) URL with a host and nothing after the path (no
/// query, fragment or credentials): servers are addressed by base URL.
pub fn server_url(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > MAX_URL_LEN {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {} allowed", value.len(), MAX_URL_LEN),
        ));
    }
    // The URL parser quietly drops tabs and newlines and turns `\` into
    // `/`; a stored URL must be exactly what was checked (it ends up in
    // response headers), so such characters are refused outright.
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '\\' || !c.is_ascii())
    {
        return Err(FieldError::new(
            field,
            format!("{value:?} contains {c:?}; a server URL is plain ASCII with no whitespace, control characters or backslashes (write international host names in punycode)"),
        ));
    }
    let url = url::Url::parse(value).map_err(|e| {
        FieldError::new(
            field,
            format!("{value:?} is not a URL ({e}); expected http://host:port"),
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(FieldError::new(
            field,
            format!(
                "{value:?} has scheme {:?}; only http and https are allowed",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new(field, format!("{value:?} has no host")));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(FieldError::new(
            field,
            format!("{value:?}: credentials, query and fragment are not allowed in a server URL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Heartbeat;

    #[test]
    fn names_missing_and_unknown_fields() {
        let e =
            parse_json::<Heartbeat>(br#"{"id":"a","region":"eu","url":"http://h","healthy":true}"#)
                .unwrap_err();
        assert_eq!(e.field, "load");
        let e = parse_json::<Heartbeat>(
            br#"{"id":"a","region":"eu","url":"http://h","load":1,"healthy":true,"color":1}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "color");
    }

    #[test]
    fn names_wrong_typed_fields() {
        let e = parse_json::<Heartbeat>(
            br#"{"id":"a","region":"eu","url":"http://h","load":"x","healthy":true}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "load");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = parse_json::<Heartbeat>(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.field, "body");
    }

    #[test]
    fn syntax_errors_blame_the_body() {
        let e = parse_json::<Heartbeat>(b"{not json").unwrap_err();
        assert_eq!(e.field, "body");
        let e = parse_json::<Heartbeat>(b"").unwrap_err();
        assert_eq!(e.field, "body");
    }
}
