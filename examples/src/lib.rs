//! Shared pieces of the Streambus examples: the demo's event types and the Redis bootstrap.

use std::time::Duration;

use bus_core::testing::{redis_server_available, RedisServer};
use bus_core::{Bus, Error, Event};
use serde::{Deserialize, Serialize};

/// An order was placed (published by the orders service).
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders")]
pub struct OrderPlaced {
    pub order_id: u64,
    pub customer: String,
    pub cents: u64,
}

/// Where the examples' Redis came from.
#[derive(Debug)]
pub struct Redis {
    pub url: String,
    /// Set when the example started its own throwaway server (killed on drop).
    pub server: Option<RedisServer>,
}

/// Connects to `REDIS_URL` (default `redis://127.0.0.1:6379`). If nothing answers there and
/// `spawn_if_missing` is set, starts a throwaway `redis-server` from `PATH` (the helper the test
/// harness uses) and says so; if there is none, explains how to get one and exits.
pub async fn connect(prefix: &str, spawn_if_missing: bool) -> (Bus, Redis) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let attempt = Bus::builder()
        .prefix(prefix)
        .connect_timeout(Duration::from_secs(2))
        .connect(&url)
        .await;
    match attempt {
        Ok(bus) => (bus, Redis { url, server: None }),
        Err(Error::Unreachable { reason, .. }) if spawn_if_missing => {
            println!(
                "No Redis answered at {} ({reason}).",
                bus_core::redact_url(&url)
            );
            if !redis_server_available() {
                eprintln!(
                    "No redis-server on PATH either. Install one (Debian/Ubuntu: `apt-get install redis-server`, \
                     macOS: `brew install redis`) or set REDIS_URL to a Redis 6.2+ server."
                );
                std::process::exit(2);
            }
            let server = match RedisServer::start() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("Could not start redis-server: {e}");
                    std::process::exit(2);
                }
            };
            println!(
                "Started a throwaway redis-server at {} for this run.",
                server.url()
            );
            let url = server.url();
            match Bus::builder().prefix(prefix).connect(&url).await {
                Ok(bus) => (
                    bus,
                    Redis {
                        url,
                        server: Some(server),
                    },
                ),
                Err(e) => {
                    eprintln!("Could not connect to the throwaway redis-server: {e}");
                    std::process::exit(2);
                }
            }
        }
        Err(e) => {
            eprintln!("Cannot use Redis at {}: {e}", bus_core::redact_url(&url));
            std::process::exit(2);
        }
    }
}

/// Reads `--name value` from the command line.
pub fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_owned());
        }
    }
    None
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info` for the bus, `warn` for the rest).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
