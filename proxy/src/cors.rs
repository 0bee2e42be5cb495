//! CORS for web apps (docs/design.md §10): a page served from one origin
//! calls its locked server at another, so the browser first sends a
//! preflight (`OPTIONS` without a token) and then hides every response
//! header a script did not get permission to read.
//!
//! - [`is_preflight`] + [`answer_preflight`]: the proxy answers preflights
//!   itself, without a token, before any routing (`service.rs` calls them
//!   right after the request is settled). An allowed origin gets `204`
//!   with the allowed methods, headers and max age; any other origin gets
//!   a bare `204` the browser will refuse.
//! - [`CorsModule`]: a Pingora downstream module, so it sees every answer
//!   the proxy writes, its own (`401`, `421`, `503`, `/auth/*`,
//!   `/closestToMe`) and the app's alike. For an allowed origin it drops
//!   the app's own `Access-Control-*` headers (keeping the names the app
//!   exposes) and sets the proxy's: the exact origin (never `*`, never
//!   `Allow-Credentials`: tokens travel in `Authorization`, not cookies),
//!   and the `Tether-*` headers exposed. For an origin that is not listed
//!   it leaves the app's headers alone. Every answer says `Vary: Origin`.
//!
//! With no `allowed_origins` the feature is off: no module, no preflight
//! handling, every request goes through as before.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue, ORIGIN, VARY};
use http::Method;
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Response headers a page may read: the login and refresh answers, the
/// relock hint, the idempotent replay marker and `Retry-After`.
pub const EXPOSE_HEADERS: &str = "Tether-Access-Token, Tether-Refresh-Token, Tether-Expires-In, \
     Tether-Server-Id, Tether-Server-Url, Tether-Server-Region, Tether-Relock, \
     Idempotent-Replayed, Retry-After";

/// Methods a preflight allows.
pub const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// Request headers a preflight allows unless `[cors] allow_headers` says
/// otherwise.
pub const DEFAULT_ALLOW_HEADERS: [&str; 3] = ["Authorization", "Content-Type", "Idempotency-Key"];

/// `[cors]`, validated.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`, lower case, no default port).
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
    /// The `Access-Control-Allow-Headers` value.
    pub allow_headers: String,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age: Duration::from_secs(600),
            allow_headers: DEFAULT_ALLOW_HEADERS.join(", "),
        }
    }
}

impl CorsConfig {
    pub fn enabled(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    /// An exact, byte-for-byte match: the browser serialises origins in
    /// one canonical form, so anything else (case, a trailing slash, a
    /// path, `null`, a suffix) is another origin.
    pub fn allows(&self, origin: &[u8]) -> bool {
        self.allowed_origins.iter().any(|o| o.as_bytes() == origin)
    }
}

/// Checks one configured origin. `Err`: what is allowed, for the config
/// error.
pub fn check_origin(v: &str) -> Result<(), &'static str> {
    const ALLOWED: &str = "an exact origin, scheme://host[:port] (http or https, lower case, \
                           no path or trailing slash, no default port); \"*\" and \"null\" are refused";
    let rest = v
        .strip_prefix("https://")
        .map(|r| (r, "443"))
        .or_else(|| v.strip_prefix("http://").map(|r| (r, "80")));
    let Some((rest, default_port)) = rest else {
        return Err(ALLOWED);
    };
    if rest.is_empty() || rest != rest.to_ascii_lowercase() {
        return Err(ALLOWED);
    }
    // Split host and port; a bracketed IPv6 host keeps its colons.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let Some(end) = inner.find(']') else {
            return Err(ALLOWED);
        };
        let host = &inner[..end];
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(ALLOWED);
        }
        match &inner[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or(ALLOWED)?)),
        }
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(ALLOWED);
        }
        (host, port)
    };
    let _ = host;
    if let Some(port) = port {
        let valid = !port.is_empty()
            && !port.starts_with('0')
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u16>().is_ok();
        if !valid || port == default_port {
            return Err(ALLOWED);
        }
    }
    Ok(())
}

/// Checks `[cors] allow_headers` entries: header names (RFC 9110 tokens).
pub fn check_header_name(v: &str) -> bool {
    HeaderName::from_bytes(v.as_bytes()).is_ok()
}

/// A CORS preflight the proxy answers itself: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`, when CORS is configured.
pub fn is_preflight(cfg: &CorsConfig, req: &RequestHeader) -> bool {
    cfg.enabled()
        && req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `204` to a preflight. The CORS headers themselves are added by
/// [`CorsModule`], and only for an allowed origin.
pub async fn answer_preflight(session: &mut Session) -> pingora_error::Result<()> {
    let mut resp = ResponseHeader::build(204, Some(2))?;
    resp.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(resp), true).await
}

/// Registers the module when CORS is configured (the `ProxyHttp`'s
/// `init_downstream_modules` calls this).
pub fn add_module(cfg: &CorsConfig, modules: &mut HttpModules) {
    if cfg.enabled() {
        modules.add_module(Box::new(CorsModuleBuilder {
            cfg: Arc::new(cfg.clone()),
        }));
    }
}

struct CorsModuleBuilder {
    cfg: Arc<CorsConfig>,
}

impl HttpModuleBuilder for CorsModuleBuilder {
    fn init(&self) -> Module {
        Box::new(CorsModule {
            cfg: self.cfg.clone(),
            origin: None,
            preflight: false,
        })
    }
}

/// Per request: the allowed origin it came from, if any.
pub struct CorsModule {
    cfg: Arc<CorsConfig>,
    origin: Option<HeaderValue>,
    preflight: bool,
}

#[async_trait]
impl HttpModule for CorsModule {
    async fn request_header_filter(
        &mut self,
        req: &mut RequestHeader,
    ) -> pingora_error::Result<()> {
        if let Some(origin) = req.headers.get(ORIGIN) {
            if self.cfg.allows(origin.as_bytes()) {
                self.origin = Some(origin.clone());
                self.preflight = is_preflight(&self.cfg, req);
            }
        }
        Ok(())
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora_error::Result<()> {
        decorate(&self.cfg, self.origin.as_ref(), self.preflight, resp)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Adds the CORS headers to one answer (see the module docs).
fn decorate(
    cfg: &CorsConfig,
    origin: Option<&HeaderValue>,
    preflight: bool,
    resp: &mut ResponseHeader,
) -> pingora_error::Result<()> {
    let varies = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
        })
    });
    if !varies {
        resp.append_header(VARY, "Origin")?;
    }
    let Some(origin) = origin else {
        return Ok(());
    };
    // The app's own CORS headers would double or contradict ours; the
    // names it exposes are kept.
    let mut expose = EXPOSE_HEADERS.to_owned();
    for v in resp
        .headers
        .get_all(http::header::ACCESS_CONTROL_EXPOSE_HEADERS)
    {
        for name in v.to_str().unwrap_or("").split(',').map(str::trim) {
            let known = expose
                .split(',')
                .any(|e| e.trim().eq_ignore_ascii_case(name));
            if !name.is_empty() && name != "*" && check_header_name(name) && !known {
                expose.push_str(", ");
                expose.push_str(name);
            }
        }
    }
    let theirs: Vec<HeaderName> = resp
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in theirs {
        resp.remove_header(&name);
    }
    resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    resp.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, expose)?;
    if preflight {
        resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS)?;
        resp.insert_header(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            cfg.allow_headers.as_str(),
        )?;
        resp.insert_header(
            http::header::ACCESS_CONTROL_MAX_AGE,
            cfg.max_age.as_secs().to_string(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_in_config() {
        for ok in [
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:3000",
            "https://[::1]:8443",
            "https://a-b.example",
        ] {
            assert_eq!(check_origin(ok), Ok(()), "{ok}");
        }
        for bad in [
            "*",
            "null",
            "",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://App.example.com",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://app.example.com:",
            "https://user@app.example.com",
            "https://app..example.com",
            "https://-app.example.com",
            "https://",
            "https://app.example.com?x",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    fn cfg() -> CorsConfig {
        CorsConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..CorsConfig::default()
        }
    }

    #[test]
    fn exact_match_only() {
        let c = cfg();
        assert!(c.allows(b"https://app.example.com"));
        for other in [
            &b"null"[..],
            b"https://app.example.com/",
            b"https://APP.example.com",
            b"https://app.example.com.evil.com",
            b"https://evil.com.app.example.com",
            b"http://app.example.com",
            b"https://app.example.com:443",
        ] {
            assert!(!c.allows(other));
        }
    }

    #[test]
    fn app_headers_replaced_and_exposes_merged() {
        let c = cfg();
        let origin = HeaderValue::from_static("https://app.example.com");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-origin", "*")
            .unwrap();
        resp.insert_header("access-control-allow-credentials", "true")
            .unwrap();
        resp.insert_header("access-control-expose-headers", "X-App-Region, retry-after")
            .unwrap();
        resp.insert_header("vary", "Accept-Encoding").unwrap();
        decorate(&c, Some(&origin), false, &mut resp).unwrap();
        let all = |n: &str| -> Vec<String> {
            resp.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            all("access-control-allow-origin"),
            ["https://app.example.com"]
        );
        assert!(all("access-control-allow-credentials").is_empty());
        let expose = all("access-control-expose-headers");
        assert_eq!(expose.len(), 1);
        assert!(expose[0].contains("Tether-Access-Token"));
        assert!(expose[0].ends_with(", X-App-Region"), "{}", expose[0]);
        assert_eq!(expose[0].matches("Retry-After").count(), 1);
        assert_eq!(all("vary"), ["Accept-Encoding", "Origin"]);
        assert!(all("access-control-max-age").is_empty());
    }

    #[test]
    fn other_origins_keep_the_apps_headers() {
        let c = cfg();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-origin", "*")
            .unwrap();
        resp.insert_header("vary", "origin").unwrap();
        decorate(&c, None, false, &mut resp).unwrap();
        assert_eq!(
            resp.headers
                .get_all("access-control-allow-origin")
                .iter()
                .count(),
            1
        );
        assert_eq!(resp.headers.get_all("vary").iter().count(), 1);
    }
}
