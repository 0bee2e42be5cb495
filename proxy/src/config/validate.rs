//! The validation layer: every key of the file checked, one function per
//! `[section]`, into the typed layer. Ranges go through one helper
//! ([`Validator::range`]), so every range error reads the same.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_protocol::validate::FieldError;

use super::file::{
    FileConfig, FileCors, FileDiscovery, FileLimits, FileLogin, FileRouting, FileServer,
    FileSource, FileTokens, FileUpstream,
};
use super::typed::{
    DiscoveryClientConfig, ForeignLock, Limits, LoginConfig, ProxyConfig, RoutingConfig,
    ServerIdentity, Source, TlsFiles, UpstreamConfig,
};
use super::{ConfigError, ACCESS_TTL_RANGE, MAX_EXTEND_RANGE, MAX_LEEWAY, REFRESH_TTL_RANGE};
use crate::tokens::{DownPolicy, KeyRing, TokenConfig};

pub(super) struct Validator<'a> {
    pub(super) path: String,
    pub(super) base: &'a Path,
}

impl Validator<'_> {
    pub(super) fn validate(self, f: FileConfig) -> Result<ProxyConfig, ConfigError> {
        let (server, listen, admin_listen, worker_threads) = self.server(&f.server)?;
        let upstream = self.upstream(f.upstream)?;
        let discovery = self.discovery(&f.discovery)?;
        let tokens = self.tokens(&f.tokens)?;
        let login = self.login(&f.login)?;
        let routing = self.routing(&f.routing)?;
        let limits = self.limits(&f.limits)?;
        let tls = self.tls(&f.server)?;
        let idempotency = crate::idempotency::config::validate(&f.idempotency)
            .map_err(|e| self.bad(e.key, e.value, e.allowed))?;
        let cors = self.cors(&f.cors)?;
        let lifecycle = self.lifecycle(&f.server)?;
        let log = self.log(&f.log)?;
        Ok(ProxyConfig {
            server,
            listen,
            tls,
            admin_listen,
            worker_threads,
            upstream,
            discovery,
            tokens,
            login,
            routing,
            limits,
            idempotency,
            cors,
            lifecycle,
            log,
        })
    }

    /// `[server]` shutdown and upgrade keys (docs/design.md §11).
    fn lifecycle(&self, s: &FileServer) -> Result<super::lifecycle::LifecycleConfig, ConfigError> {
        let grace = self.range(
            "server.shutdown_grace_seconds",
            s.shutdown_grace_seconds,
            (0, 600),
            " (seconds)",
        )?;
        let timeout = self.range(
            "server.shutdown_timeout_seconds",
            s.shutdown_timeout_seconds,
            (1, 600),
            " (seconds)",
        )?;
        if !s.upgrade_socket.starts_with('/') || s.upgrade_socket.len() > 100 {
            return Err(self.bad(
                "server.upgrade_socket",
                format!("{:?}", s.upgrade_socket),
                "an absolute path of at most 100 bytes (a Unix socket path)",
            ));
        }
        Ok(super::lifecycle::LifecycleConfig {
            shutdown_grace: Duration::from_secs(grace),
            shutdown_timeout: Duration::from_secs(timeout),
            upgrade_socket: PathBuf::from(&s.upgrade_socket),
        })
    }

    /// `[log]`: the access log (`crate::access`) and the log format.
    fn log(&self, l: &super::file::FileLog) -> Result<crate::access::LogConfig, ConfigError> {
        use crate::access::{LogConfig, LogFormat, SubjectInLog};
        let access = match l.access.as_str() {
            "on" => true,
            "off" => false,
            other => {
                return Err(self.bad(
                    "log.access",
                    format!("{other:?}"),
                    "must be \"on\" or \"off\"",
                ))
            }
        };
        if !(l.access_sample > 0.0 && l.access_sample <= 1.0) {
            return Err(self.bad(
                "log.access_sample",
                l.access_sample.to_string(),
                "must be a fraction in (0, 1]: 1 logs every request, 0.01 one in a hundred",
            ));
        }
        let access_subject = match l.access_subject.as_str() {
            "hash" => SubjectInLog::Hash,
            "id" => SubjectInLog::Id,
            "none" => SubjectInLog::None,
            other => {
                return Err(self.bad(
                    "log.access_subject",
                    format!("{other:?}"),
                    "must be \"hash\", \"id\" or \"none\"",
                ))
            }
        };
        let format = LogFormat::parse(&l.format).ok_or_else(|| {
            self.bad(
                "log.format",
                format!("{:?}", l.format),
                "must be \"text\" or \"json\"",
            )
        })?;
        Ok(LogConfig {
            access,
            access_sample: l.access_sample,
            access_subject,
            format,
        })
    }

    // ------------------------------------------------------------ sections

    /// `[server]`: identity, listeners, threads (TLS: [`Validator::tls`]).
    fn server(
        &self,
        s: &FileServer,
    ) -> Result<(ServerIdentity, SocketAddr, SocketAddr, NonZeroUsize), ConfigError> {
        let field = |key: &'static str, r: Result<(), FieldError>, v: &str| {
            r.map_err(|e| self.bad(key, format!("{v:?}"), e.message))
        };
        field(
            "server.id",
            tether_protocol::validate::server_id("id", &s.id),
            &s.id,
        )?;
        field(
            "server.region",
            tether_protocol::validate::region("region", &s.region),
            &s.region,
        )?;
        let public_url = self.base_url("server.public_url", &s.public_url)?;
        let listen = self.addr("server.listen", &s.listen)?;
        let admin_listen = self.addr("server.admin_listen", &s.admin_listen)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(self.bad(
                "server.admin_listen",
                &s.admin_listen,
                "must differ from server.listen",
            ));
        }
        let threads = self.range("server.worker_threads", s.worker_threads, (1, 256), "")?;
        let worker_threads = NonZeroUsize::new(threads).unwrap_or(NonZeroUsize::MIN);
        let identity = ServerIdentity {
            id: s.id.clone(),
            region: s.region.clone(),
            public_url,
        };
        Ok((identity, listen, admin_listen, worker_threads))
    }

    /// `[upstream]`: the local pool and its health check.
    fn upstream(&self, u: FileUpstream) -> Result<UpstreamConfig, ConfigError> {
        if u.addresses.is_empty() {
            return Err(self.bad(
                "upstream.addresses",
                "[]",
                "list at least one upstream IP:PORT",
            ));
        }
        let addresses = u
            .addresses
            .iter()
            .map(|a| {
                crate::resolve::UpstreamAddr::parse(a).ok_or_else(|| {
                    self.bad(
                        "upstream.addresses",
                        format!("{a:?}"),
                        "must be IP:PORT or HOST:PORT, e.g. \"127.0.0.1:3001\" or \"app.internal:3001\"",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !u.health_path.starts_with('/') {
            return Err(self.bad(
                "upstream.health_path",
                format!("{:?}", u.health_path),
                "must start with '/'",
            ));
        }
        Ok(UpstreamConfig {
            addresses,
            health_interval: self.ms(
                "upstream.health_interval_ms",
                u.health_interval_ms,
                100,
                60_000,
            )?,
            connect_timeout: self.ms(
                "upstream.connect_timeout_ms",
                u.connect_timeout_ms,
                10,
                60_000,
            )?,
            read_timeout: self.ms("upstream.read_timeout_ms", u.read_timeout_ms, 100, 600_000)?,
            idle_timeout: self.ms("upstream.idle_timeout_ms", u.idle_timeout_ms, 100, 600_000)?,
            resolve_interval: self.ms(
                "upstream.resolve_interval_ms",
                u.resolve_interval_ms,
                100,
                3_600_000,
            )?,
            health_path: u.health_path,
        })
    }

    /// `[discovery]`: where discovery is, the cluster token, the timings.
    fn discovery(&self, d: &FileDiscovery) -> Result<DiscoveryClientConfig, ConfigError> {
        Ok(DiscoveryClientConfig {
            urls: self.discovery_urls(d)?,
            cluster_token: self.secret(
                "discovery.cluster_token_file",
                d.cluster_token_file.as_deref(),
                d.cluster_token_env.as_deref(),
            )?,
            heartbeat_interval: self.ms(
                "discovery.heartbeat_interval_ms",
                d.heartbeat_interval_ms,
                100,
                60_000,
            )?,
            poll_wait: Duration::from_secs(self.range(
                "discovery.poll_wait_seconds",
                d.poll_wait_seconds,
                (0, 60),
                "",
            )?),
            min_poll_interval: self.ms(
                "discovery.min_poll_interval_ms",
                d.min_poll_interval_ms,
                10,
                60_000,
            )?,
            implausible_accept_after: Duration::from_secs(d.implausible_accept_after_seconds),
        })
    }

    /// `discovery.urls` (at least one, no repeats) or the single
    /// `discovery.url`: exactly one of the two, each URL checked like
    /// `server.public_url`.
    fn discovery_urls(&self, d: &FileDiscovery) -> Result<Vec<String>, ConfigError> {
        match (&d.url, &d.urls) {
            (Some(url), None) => Ok(vec![self.base_url("discovery.url", url)?]),
            (None, Some(urls)) => {
                if urls.is_empty() {
                    return Err(self.bad(
                        "discovery.urls",
                        "[]",
                        "list at least one discovery URL, e.g. [\"http://127.0.0.1:7070\"]",
                    ));
                }
                let mut out: Vec<String> = Vec::with_capacity(urls.len());
                for u in urls {
                    let u = self.base_url("discovery.urls", u)?;
                    if out.contains(&u) {
                        return Err(self.bad(
                            "discovery.urls",
                            format!("{u:?}"),
                            "is listed twice; list each discovery node once",
                        ));
                    }
                    out.push(u);
                }
                Ok(out)
            }
            (Some(_), Some(_)) => Err(self.bad(
                "discovery.urls",
                "(both url and urls)",
                "set exactly one of discovery.url and discovery.urls",
            )),
            (None, None) => Err(self.bad(
                "discovery.urls",
                "(missing)",
                "set discovery.urls = [\"http://...\", ...] (or the single discovery.url)",
            )),
        }
    }

    /// `[tokens]`: issuer, audience, lifetimes, the key ring (read and
    /// checked by [`KeyRing::load`]), the refresh policy, the cache.
    fn tokens(&self, t: &FileTokens) -> Result<TokenConfig, ConfigError> {
        if t.issuer.is_empty() {
            return Err(self.bad("tokens.issuer", "\"\"", "must not be empty"));
        }
        if t.audience.is_empty() {
            return Err(self.bad("tokens.audience", "\"\"", "must not be empty"));
        }
        let access_ttl = self.range(
            "tokens.access_ttl_seconds",
            t.access_ttl_seconds,
            ACCESS_TTL_RANGE,
            " seconds",
        )?;
        let refresh_ttl = self.range(
            "tokens.refresh_ttl_days",
            t.refresh_ttl_days,
            REFRESH_TTL_RANGE,
            " days",
        )?;
        let leeway = self.range(
            "tokens.leeway_seconds",
            t.leeway_seconds,
            (0, MAX_LEEWAY),
            "",
        )?;
        let keyring_path = self.resolve(&t.keyring_file);
        let keyring = KeyRing::load(&keyring_path).map_err(|source| ConfigError::KeyRing {
            path: self.path.clone(),
            key: "tokens.keyring_file",
            source,
        })?;
        let when_discovery_down = match t.refresh_when_discovery_down.as_str() {
            "extend" => DownPolicy::Extend,
            "fail_closed" => DownPolicy::FailClosed,
            "fail_open" => DownPolicy::FailOpen,
            other => {
                return Err(self.bad(
                    "tokens.refresh_when_discovery_down",
                    format!("{other:?}"),
                    "must be \"extend\", \"fail_closed\" or \"fail_open\"",
                ))
            }
        };
        let max_extend = self.range(
            "tokens.max_extend_seconds",
            t.max_extend_seconds,
            MAX_EXTEND_RANGE,
            " seconds",
        )?;
        let verified_cache_entries = self.range(
            "tokens.verified_cache_entries",
            t.verified_cache_entries,
            (0, 1_000_000),
            "",
        )?;
        Ok(TokenConfig {
            verified_cache_entries,
            refresh_rotation: t.refresh_rotation,
            when_discovery_down,
            max_extend: Duration::from_secs(max_extend),
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            access_ttl: Duration::from_secs(access_ttl),
            refresh_ttl: Duration::from_secs(refresh_ttl * 86_400),
            leeway: Duration::from_secs(leeway),
            keyring_path,
            keyring,
        })
    }

    /// `[login]`: the upstream login path and where its answer names the
    /// subject and the home region.
    fn login(&self, l: &FileLogin) -> Result<LoginConfig, ConfigError> {
        if !l.upstream_path.starts_with('/') {
            return Err(self.bad(
                "login.upstream_path",
                format!("{:?}", l.upstream_path),
                "must start with '/'",
            ));
        }
        Ok(LoginConfig {
            upstream_path: l.upstream_path.clone(),
            subject: self.source("login.subject", &l.subject)?,
            home_region: l
                .home_region
                .as_ref()
                .map(|s| self.source("login.home_region", s))
                .transpose()?,
        })
    }

    /// `[routing]`: public paths, foreign-lock mode, hysteresis, probes,
    /// trusted proxies.
    fn routing(&self, r: &FileRouting) -> Result<RoutingConfig, ConfigError> {
        for p in &r.public_prefixes {
            if !p.starts_with('/') || p.starts_with("/auth/") || p == "/" {
                return Err(self.bad(
                    "routing.public_prefixes",
                    format!("{p:?}"),
                    "each prefix starts with '/', is not '/' and is not under /auth/",
                ));
            }
        }
        let foreign_lock = match r.foreign_lock.as_str() {
            "redirect" => ForeignLock::Redirect,
            "forward" => ForeignLock::Forward,
            other => {
                return Err(self.bad(
                    "routing.foreign_lock",
                    format!("{other:?}"),
                    "must be \"redirect\" or \"forward\"",
                ))
            }
        };
        // Not finite (NaN, infinity) is out of any range.
        let ratio = self.range(
            "routing.hysteresis_ratio",
            r.hysteresis_ratio,
            (0.0, 10.0),
            "",
        )?;
        if !(r.hysteresis_absolute.is_finite() && r.hysteresis_absolute >= 0.0) {
            return Err(self.bad(
                "routing.hysteresis_absolute",
                r.hysteresis_absolute,
                "must be a number >= 0",
            ));
        }
        Ok(RoutingConfig {
            public_prefixes: r.public_prefixes.clone(),
            foreign_lock,
            hysteresis: tether_protocol::placement::Hysteresis {
                ratio,
                absolute: r.hysteresis_absolute,
            },
            probe_timeout: self.ms("routing.probe_timeout_ms", r.probe_timeout_ms, 10, 10_000)?,
            fast_failover: r.fast_failover,
            peer_ca_file: match &r.peer_ca_file {
                None => None,
                Some(f) => {
                    let path = self.resolve(f);
                    crate::tls::check_ca(&path)
                        .map_err(|m| self.bad("routing.peer_ca_file", path.display(), m))?;
                    Some(path)
                }
            },
            trusted_proxies: r
                .trusted_proxies
                .iter()
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            self.bad(
                                "routing.trusted_proxies",
                                format!("{n:?}"),
                                "each entry is an IP or a CIDR network, e.g. \"10.0.0.0/8\"",
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// `[cors]`: exact origins, preflight max age, allowed request headers.
    fn cors(&self, c: &FileCors) -> Result<crate::cors::CorsConfig, ConfigError> {
        for o in &c.allowed_origins {
            crate::cors::check_origin(o)
                .map_err(|m| self.bad("cors.allowed_origins", format!("{o:?}"), m))?;
        }
        let max_age = self.range(
            "cors.max_age_seconds",
            c.max_age_seconds,
            (0, 86_400),
            " seconds",
        )?;
        let mut cfg = crate::cors::CorsConfig {
            allowed_origins: c.allowed_origins.clone(),
            max_age: Duration::from_secs(max_age),
            ..crate::cors::CorsConfig::default()
        };
        if let Some(names) = &c.allow_headers {
            if let Some(n) = names.iter().find(|n| !crate::cors::check_header_name(n)) {
                return Err(self.bad(
                    "cors.allow_headers",
                    format!("{n:?}"),
                    "each entry is a header name, e.g. \"X-Request-Id\"",
                ));
            }
            cfg.allow_headers = names.join(", ");
        }
        Ok(cfg)
    }

    /// `[limits]`: body, header and connection caps.
    fn limits(&self, l: &FileLimits) -> Result<Limits, ConfigError> {
        Ok(Limits {
            reserved_body_bytes: self.range(
                "limits.reserved_body_bytes",
                l.reserved_body_bytes,
                (256, 1_048_576),
                "",
            )?,
            login_answer_bytes: self.range(
                "limits.login_answer_bytes",
                l.login_answer_bytes,
                (1024, 16_777_216),
                "",
            )?,
            max_request_header_bytes: self.range(
                "limits.max_request_header_bytes",
                l.max_request_header_bytes,
                (1024, 1_048_576),
                "",
            )?,
            max_request_headers: self.range(
                "limits.max_request_headers",
                l.max_request_headers,
                (8, 256),
                " (Pingora reads at most 256)",
            )?,
            header_read_timeout: Duration::from_millis(self.range(
                "limits.header_read_timeout_ms",
                l.header_read_timeout_ms,
                (100, 600_000),
                "",
            )?),
            body_read_timeout: Duration::from_millis(self.range(
                "limits.body_read_timeout_ms",
                l.body_read_timeout_ms,
                (100, 600_000),
                "",
            )?),
            h2_idle_timeout: Duration::from_millis(self.range(
                "limits.h2_idle_timeout_ms",
                l.h2_idle_timeout_ms,
                (100, 3_600_000),
                "",
            )?),
            max_connections: self.range(
                "limits.max_connections",
                l.max_connections,
                (1, 1_000_000),
                "",
            )?,
            max_connections_per_ip: if l.max_connections_per_ip <= l.max_connections {
                l.max_connections_per_ip
            } else {
                return Err(self.bad(
                    "limits.max_connections_per_ip",
                    l.max_connections_per_ip,
                    "must be at most limits.max_connections (0: no per-IP cap)",
                ));
            },
        })
    }

    // ------------------------------------------------------------- helpers

    fn bad(
        &self,
        key: &'static str,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn addr(&self, key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
        v.parse().map_err(|_| {
            self.bad(
                key,
                format!("{v:?}"),
                "must be IP:PORT, e.g. \"127.0.0.1:8081\"",
            )
        })
    }

    fn base_url(&self, key: &'static str, v: &str) -> Result<String, ConfigError> {
        tether_protocol::validate::server_url(key, v)
            .map_err(|e| self.bad(key, format!("{v:?}"), e.message))?;
        Ok(v.trim_end_matches('/').to_owned())
    }

    /// The one range check: `v` within `min..=max`, else an error that
    /// says so, with `unit` after the bounds (" seconds", say).
    fn range<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        key: &'static str,
        v: T,
        (min, max): (T, T),
        unit: &str,
    ) -> Result<T, ConfigError> {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(self.bad(key, v, format!("must be between {min} and {max}{unit}")))
        }
    }

    /// A `_ms` key: a range in milliseconds, as a duration.
    fn ms(&self, key: &'static str, v: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.range(key, v, (min, max), " (milliseconds)")
            .map(Duration::from_millis)
    }

    fn secret(
        &self,
        file_key: &'static str,
        file: Option<&str>,
        env: Option<&str>,
    ) -> Result<String, ConfigError> {
        let value = match (file, env) {
            (Some(f), None) => {
                let p = self.resolve(f);
                std::fs::read_to_string(&p).map_err(|e| {
                    self.bad(
                        file_key,
                        format!("{f:?}"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?
            }
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                self.bad(
                    file_key,
                    "(unset)",
                    format!("environment variable {var} (named by the _env key) is not set"),
                )
            })?,
            _ => {
                return Err(self.bad(
                    file_key,
                    "(both or neither)",
                    "set exactly one of cluster_token_file and cluster_token_env",
                ))
            }
        };
        let value = value.trim().to_owned();
        if value.len() < 16 {
            return Err(self.bad(
                file_key,
                "(secret)",
                "the cluster token must be at least 16 characters",
            ));
        }
        Ok(value)
    }

    fn source(&self, key: &'static str, s: &FileSource) -> Result<Source, ConfigError> {
        match (&s.json_pointer, &s.header) {
            (Some(p), None) => {
                if !(p.is_empty() || p.starts_with('/')) {
                    return Err(self.bad(
                        key,
                        format!("{p:?}"),
                        "a JSON pointer is empty or starts with '/', e.g. \"/userId\"",
                    ));
                }
                Ok(Source::JsonPointer(p.clone()))
            }
            (None, Some(h)) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(self.bad(
                        key,
                        format!("{h:?}"),
                        "must be a valid HTTP header name",
                    ));
                }
                Ok(Source::Header(h.to_ascii_lowercase()))
            }
            _ => Err(self.bad(
                key,
                "(both or neither)",
                "set exactly one of json_pointer and header",
            )),
        }
    }

    /// `server.tls_cert_file` + `server.tls_key_file`: both or neither;
    /// both readable PEM, the key matching the certificate, so a bad file
    /// is a config error here rather than a failure at start.
    /// `server.tls_http2` only means something with them (HTTP/2 in clear
    /// text, h2c, is not offered).
    fn tls(&self, s: &FileServer) -> Result<Option<TlsFiles>, ConfigError> {
        let (cert, key) = match (&s.tls_cert_file, &s.tls_key_file) {
            (None, None) => {
                if let Some(on) = s.tls_http2 {
                    return Err(self.bad(
                        "server.tls_http2",
                        on,
                        "HTTP/2 is offered over TLS only: set server.tls_cert_file and \
                         server.tls_key_file, or remove the key",
                    ));
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (self.resolve(c), self.resolve(k)),
            (Some(_), None) => {
                return Err(self.bad(
                    "server.tls_key_file",
                    "(missing)",
                    "set it with server.tls_cert_file, or remove both for plain HTTP",
                ))
            }
            (None, Some(_)) => {
                return Err(self.bad(
                    "server.tls_cert_file",
                    "(missing)",
                    "set it with server.tls_key_file, or remove both for plain HTTP",
                ))
            }
        };
        crate::tls::check_pair(&cert, &key).map_err(|(key_name, message)| {
            let shown = if key_name == "server.tls_key_file" {
                &key
            } else {
                &cert
            };
            self.bad(key_name, shown.display(), message)
        })?;
        Ok(Some(TlsFiles {
            cert,
            key,
            http2: s.tls_http2.unwrap_or(true),
        }))
    }
}
