//! The access log: one line per client request (docs/proxy.md, "Logs"),
//! off by default, optionally sampled. A line is a tracing event of target
//! `tether::access` at INFO, so it follows the process's log format (text
//! or JSON) and filter. It never holds a token: the subject is a keyed
//! hash (or the id, or nothing, by `log.access_subject`), and the path is
//! logged without its query.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest;

/// `[log]` of the proxy config, validated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `log.access = "on"`.
    pub access: bool,
    /// `log.access_sample`: the fraction of requests logged, 0 < s <= 1.
    pub access_sample: f64,
    pub access_subject: SubjectInLog,
    /// `log.format`; `TETHER_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: false,
            access_sample: 1.0,
            access_subject: SubjectInLog::Hash,
            format: LogFormat::Text,
        }
    }
}

/// How the verified subject appears in an access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectInLog {
    /// 16 hex digits of SHA-256 over a cluster-wide key and the subject:
    /// the same user gives the same value on every proxy, and the value
    /// does not give the user id back.
    Hash,
    /// The subject as verified.
    Id,
    /// Left out.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The `[log] format` of a proxy config file, read leniently (for the
/// logging set-up, which runs before the config is validated); `None`
/// when the file or key is missing or unreadable.
pub fn format_in_file(path: &std::path::Path) -> Option<LogFormat> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    LogFormat::parse(table.get("log")?.get("format")?.as_str()?)
}

/// The access logger of one proxy.
pub struct AccessLog {
    cfg: LogConfig,
    key: [u8; 32],
    seen: AtomicU64,
}

/// What one request did, as the access line tells it.
pub struct Line<'a> {
    pub client: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub subject: Option<&'a [u8]>,
    pub upstream_seconds: Option<f64>,
    /// The server that answered: this one, or the peer in forward mode.
    pub server: &'a str,
}

impl AccessLog {
    /// `key`: a cluster-wide secret for the subject hash.
    pub fn new(cfg: LogConfig, cluster_secret: &[u8]) -> AccessLog {
        let mut h = sha2::Sha256::new();
        h.update(b"tether access log subject v1\0");
        h.update(cluster_secret);
        AccessLog {
            cfg,
            key: h.finalize().into(),
            seen: AtomicU64::new(0),
        }
    }

    /// Whether access lines are written at all.
    pub fn enabled(&self) -> bool {
        self.cfg.access
    }

    /// Whether this request is logged: every request at a sample of 1,
    /// else an even spread (request n is logged when n·s crosses an
    /// integer).
    pub fn sample(&self) -> bool {
        if !self.cfg.access {
            return false;
        }
        let s = self.cfg.access_sample;
        if s >= 1.0 {
            return true;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * s).floor() > (n * s).floor()
    }

    /// The subject as it appears in the line.
    pub fn subject(&self, sub: Option<&[u8]>) -> Option<String> {
        let sub = sub?;
        match self.cfg.access_subject {
            SubjectInLog::None => None,
            SubjectInLog::Id => Some(String::from_utf8_lossy(sub).into_owned()),
            SubjectInLog::Hash => {
                let mut h = sha2::Sha256::new();
                h.update(self.key);
                h.update(sub);
                let d = h.finalize();
                Some(d[..8].iter().map(|b| format!("{b:02x}")).collect())
            }
        }
    }

    /// Writes one access line.
    pub fn write(&self, line: &Line<'_>) {
        let subject = self.subject(line.subject);
        let client = line.client.map(|ip| ip.to_string());
        tracing::info!(
            target: "tether::access",
            client = client.as_deref().unwrap_or("-"),
            method = line.method,
            path = line.path,
            status = line.status,
            outcome = line.outcome,
            subject = subject.as_deref().unwrap_or("-"),
            upstream_ms = line.upstream_seconds.map(|s| (s * 1e6).round() / 1e3),
            server = line.server,
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(sample: f64, subject: SubjectInLog) -> AccessLog {
        AccessLog::new(
            LogConfig {
                access: true,
                access_sample: sample,
                access_subject: subject,
                format: LogFormat::Text,
            },
            b"cluster secret",
        )
    }

    #[test]
    fn sampling_spreads_evenly() {
        let l = log(0.25, SubjectInLog::Hash);
        let logged = (0..1000).filter(|_| l.sample()).count();
        assert_eq!(logged, 250);
        let all = log(1.0, SubjectInLog::Hash);
        assert!((0..10).all(|_| all.sample()));
        let off = AccessLog::new(LogConfig::default(), b"k");
        assert!(!off.sample());
    }

    #[test]
    fn the_subject_is_hashed_with_the_cluster_key() {
        let a = log(1.0, SubjectInLog::Hash)
            .subject(Some(b"alice"))
            .unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, "alice");
        // Stable for one key, different for another.
        assert_eq!(
            Some(a.clone()),
            log(1.0, SubjectInLog::Hash).subject(Some(b"alice"))
        );
        let other = AccessLog::new(
            LogConfig {
                access: true,
                ..LogConfig::default()
            },
            b"another cluster",
        );
        assert_ne!(Some(a), other.subject(Some(b"alice")));
        assert_eq!(
            log(1.0, SubjectInLog::Id)
                .subject(Some(b"alice"))
                .as_deref(),
            Some("alice")
        );
        assert_eq!(log(1.0, SubjectInLog::None).subject(Some(b"alice")), None);
    }
}
