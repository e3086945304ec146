//! Opening the Redis connection: the client's settings (timeouts, reconnect policy), clear
//! errors for an unreachable server or rejected credentials, the server check at connect, and
//! URL redaction so secrets never reach errors or logs.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{Config, ReconnectPolicy};

use crate::error::{Error, Result};

/// The oldest Redis version Streambus runs on.
pub(crate) const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

pub(crate) fn build_client(
    config: Config,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<Client> {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        // Reconnect forever with backoff: a finite policy leaves the client dead for good once it
        // is used up.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build Redis client: {}", e.details())))
}

pub(crate) fn connect_error(url: &str, e: &fred::error::Error) -> Error {
    let text = e.details().to_owned();
    let lower = text.to_ascii_lowercase();
    #[cfg(feature = "tls")]
    let tls_kind = *e.kind() == fred::error::ErrorKind::Tls;
    #[cfg(not(feature = "tls"))]
    let tls_kind = false;
    if tls_kind || lower.contains("certificate") || lower.contains("handshake") {
        return Error::Tls {
            url: url.to_owned(),
            reason: text,
        };
    }
    if *e.kind() == fred::error::ErrorKind::Auth
        || text.starts_with("WRONGPASS")
        || text.starts_with("NOAUTH")
        || text.contains("invalid username-password")
    {
        Error::Auth {
            url: url.to_owned(),
            reason: text,
        }
    } else {
        Error::Unreachable {
            url: url.to_owned(),
            reason: format!("{:?}: {text}", e.kind()),
        }
    }
}

pub(crate) async fn check_server(client: &Client, url: &str) -> Result<()> {
    let info: String = match client.info(Some(fred::types::InfoKind::Server)).await {
        Ok(info) => info,
        // A least-privilege ACL user may not run INFO: the connection works, the version just
        // cannot be checked here (an older server fails later, on the first stream command).
        Err(e) if e.details().starts_with("NOPERM") => {
            tracing::warn!(
                url,
                "INFO is not permitted for this user; cannot check that Redis is 6.2 or newer"
            );
            return Ok(());
        }
        Err(e) => return Err(connect_error(url, &e)),
    };
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    if !version_at_least(&version, MIN_REDIS_VERSION) {
        return Err(Error::UnsupportedServer {
            url: url.to_owned(),
            version: if version.is_empty() {
                "unknown".into()
            } else {
                version
            },
            required: "6.2",
        });
    }
    let policy: std::result::Result<Vec<String>, _> = client
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["GET", "maxmemory-policy"],
        )
        .await;
    match policy {
        Ok(v) if v.len() == 2 && v[1] != "noeviction" => tracing::warn!(
            policy = %v[1],
            "Redis maxmemory-policy is not noeviction: Redis may evict streams and consumer groups \
             under memory pressure, losing events"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read maxmemory-policy (CONFIG GET refused?)"),
    }
    Ok(())
}

/// `"7.0.15"` ≥ `(6, 2)`?
pub(crate) fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Removes the password from a Redis URL for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    redact_url(url)
}

/// Whether a URL's scheme asks for TLS (`rediss://`, `rediss-cluster://`, `valkeys://`, …).
pub(crate) fn requests_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// A Redis URL with its secrets replaced by `***`: the password in the user part
/// (`redis://user:***@host`) and the value of any query parameter whose name mentions a password
/// (`?sentinelPassword=***`). Use it whenever a URL is printed or logged; the bus does for every
/// error and its `Debug` output.
///
/// ```
/// assert_eq!(
///     bus_core::redact_url("rediss://app:s3cret@redis.internal:6380/0"),
///     "rediss://app:***@redis.internal:6380/0"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = base.to_owned();
    if let Some(scheme_end) = base.find("://") {
        let rest = &base[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some((user, _password)) = userinfo.split_once(':') {
                out = format!("{}{user}:***@{}", &base[..scheme_end + 3], &rest[at + 1..]);
            }
        }
    }
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("redis://user@h:1"), "redis://user@h:1");
        assert_eq!(
            redact(
                "redis-sentinel://:pw@h:26379?sentinelServiceName=m&sentinelPassword=spw&node=h2:1"
            ),
            "redis-sentinel://:***@h:26379?sentinelServiceName=m&sentinelPassword=***&node=h2:1"
        );
    }

    #[test]
    fn compares_versions() {
        assert!(version_at_least("7.0.15", (6, 2)));
        assert!(version_at_least("6.2.0", (6, 2)));
        assert!(!version_at_least("6.0.9", (6, 2)));
        assert!(!version_at_least("5.0.7", (6, 2)));
        assert!(!version_at_least("", (6, 2)));
    }
}
