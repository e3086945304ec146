//! The worker runtime: runs any number of subscribers (several groups, several streams) in one
//! process.
//!
//! Subscribers are grouped by (stream, group): the handlers of one group (one per event type)
//! share one reader, one concurrency budget and one set of options. Per group:
//!
//! | module | concern |
//! |---|---|
//! | `lifecycle` | create the group, start its tasks, shut it down |
//! | `read` | the reader connection and read loop (back-pressure, read-ahead, lost reads) |
//! | `take` | taking a held entry for its next attempt (retries, reclaimed entries) |
//! | `attempt` | running one attempt and settling its typed outcome |
//! | `reclaim` | the pending-entry scanner and consumer reaping |
//! | `lease` | lease renewal and release at shutdown |
//! | `keeper` | the thread (own runtime, own connection) where leases are renewed |
//! | `blocking` | the blocking-handler mode, and noticing handlers that block a runtime thread |
//! | `state` | the held-entry table and its typed states |
//! | `fenced` | the fenced per-entry Redis scripts with typed replies |
//! | `gate` | the process-wide gate that lets a suspect run alone |
//! | `pool`, `acker` | handler tasks; batched acknowledgements |
//! | `handlers`, `outcome` | dispatch by event type; outcomes and dead-letter reasons |

mod acker;
mod attempt;
mod blocking;
mod fenced;
mod gate;
mod group;
mod handlers;
mod keeper;
mod lease;
mod lifecycle;
mod outcome;
mod pace;
mod pool;
mod read;
mod reclaim;
mod state;
mod take;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use fred::prelude::*;
use fred::types::ClientUnblockFlag;

use crate::bus::Bus;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::names::validate_name;
use crate::subscriber::{Configured, Subscriber, SubscriberOptions};
use gate::SoloGate;
use handlers::{DynHandler, HandlerSet};
use keeper::Keeper;
use lifecycle::GroupRunner;

/// A worker process's set of subscribers. Build it with [`Bus::worker`], add subscribers, then
/// [`run`](Worker::run) it (or [`start`](Worker::start) it and keep the handle).
///
/// ```no_run
/// use bus_core::{subscriber, Bus, Context, Event, HandlerError};
/// # #[derive(serde::Serialize, serde::Deserialize, Event)]
/// # #[event(stream = "orders")]
/// # struct OrderPlaced { order_id: u64 }
///
/// #[subscriber(group = "billing", concurrency = 8)]
/// async fn charge(order: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
///     tracing::info!(order = order.order_id, attempt = ctx.attempt(), "charging");
///     Ok(())
/// }
///
/// # async fn demo() -> bus_core::Result<()> {
/// let bus = Bus::connect("redis://127.0.0.1:6379").await?;
/// bus.worker()
///     .subscribe(charge::subscriber())
///     .run(bus_core::shutdown_signal())   // Ctrl-C / SIGTERM: stop reading, finish, ack
///     .await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    conn: Conn,
    subs: Vec<Arc<dyn DynHandler>>,
    consumer: Option<String>,
    settings: WorkerSettings,
}

/// Worker-wide settings shared by its subscribers.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    pub(crate) grace: Duration,
    pub(crate) reap_after: Option<Duration>,
    pub(crate) mover_interval: Duration,
    pub(crate) trim_interval: Option<Duration>,
    pub(crate) retention: crate::trim::Retention,
    pub(crate) trim_all_interval: Option<Duration>,
    /// A handler poll longer than this is reported (`None`: never).
    pub(crate) blocking_threshold: Option<Duration>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("subscribers", &self.subs.len())
            .field("consumer", &self.consumer)
            .field("settings", &self.settings)
            .finish()
    }
}

/// A unique consumer name for this process: `host:pid:random`.
pub fn default_consumer_name() -> String {
    let host: String = gethostname::gethostname()
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() || c == '{' || c == '}' {
                '-'
            } else {
                c
            }
        })
        .take(64)
        .collect();
    let host = if host.is_empty() {
        "host".to_owned()
    } else {
        host
    };
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &rand[..8])
}

impl Bus {
    /// A new worker on this bus; add subscribers and run it.
    pub fn worker(&self) -> Worker {
        Worker::new(&self.conn)
    }
}

/// How long a handler may hold a runtime thread in one poll before the worker reports it.
const DEFAULT_BLOCKING_THRESHOLD: Duration = Duration::from_millis(200);

impl Worker {
    pub(crate) fn new(conn: &Conn) -> Self {
        Self {
            conn: conn.clone(),
            subs: Vec::new(),
            consumer: None,
            settings: WorkerSettings {
                grace: Duration::from_secs(30),
                reap_after: Some(Duration::from_secs(3600)),
                mover_interval: Duration::from_millis(500),
                trim_interval: Some(Duration::from_secs(30)),
                retention: crate::trim::Retention::default(),
                trim_all_interval: None,
                blocking_threshold: Some(DEFAULT_BLOCKING_THRESHOLD),
            },
        }
    }

    /// Adds a subscriber (from `#[subscriber]`: `handler::subscriber()`, or [`subscriber_fn`](crate::subscriber_fn)).
    #[must_use]
    pub fn subscribe<S: Subscriber>(mut self, subscriber: S) -> Self {
        self.subs.push(Arc::new(subscriber));
        self
    }

    /// Adds a subscriber with some of its options changed (for example the concurrency from
    /// configuration).
    #[must_use]
    pub fn subscribe_with<S: Subscriber>(
        self,
        subscriber: S,
        change: impl FnOnce(SubscriberOptions) -> SubscriberOptions,
    ) -> Self {
        let options = change(subscriber.options());
        self.subscribe(Configured {
            inner: subscriber,
            options,
        })
    }

    /// Sets the consumer name (default: `host:pid:random`). Never give two live processes the same
    /// name.
    #[must_use]
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// How long shutdown waits for running handlers before it gives up on them (default 30 s);
    /// their entries are then made reclaimable at once.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.grace = grace;
        self
    }

    /// Removes other consumers of this worker's groups that have been idle this long and own no
    /// pending entries (default 1 h; `None` turns reaping off). Consumers that own entries are
    /// never removed: their entries are reclaimed first.
    #[must_use]
    pub fn reap_consumers_after(mut self, idle: Option<Duration>) -> Self {
        self.settings.reap_after = idle;
        self
    }

    /// How often this worker moves due delayed events into the streams it subscribes to (default
    /// 500 ms): a delayed event appears in its stream at most this long after it is due.
    #[must_use]
    pub fn move_delayed_every(mut self, interval: Duration) -> Self {
        self.settings.mover_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How often this worker trims the streams it subscribes to (default every 30 s; `None` turns
    /// it off). Trimming is safe: it removes only entries that every group of the stream has
    /// delivered and acknowledged.
    #[must_use]
    pub fn trim_every(mut self, interval: Option<Duration>) -> Self {
        self.settings.trim_interval = interval.map(|d| d.max(Duration::from_millis(10)));
        self
    }

    /// Also trims, every `interval`, the streams under the prefix this worker does not subscribe
    /// to (default: off). Streams that only get published to have no group, so nothing else
    /// bounds them; their entries older than [`Retention::without_groups`](crate::Retention::without_groups)
    /// go. One service enabling this is enough; `streambus trim --all` from a scheduler does the
    /// same.
    #[must_use]
    pub fn trim_all_streams(mut self, interval: Option<Duration>) -> Self {
        self.settings.trim_all_interval = interval.map(|d| d.max(Duration::from_millis(10)));
        self
    }

    /// What trimming keeps beyond what the groups still need (default: see [`Retention`](crate::Retention)).
    #[must_use]
    pub fn retention(mut self, retention: crate::trim::Retention) -> Self {
        self.settings.retention = retention;
        self
    }

    /// How long a handler may hold a runtime thread without yielding before the worker reports it
    /// (default 200 ms; `None` turns the watch off). Each such stretch is counted in
    /// `streambus_handler_blocking_total`, and a warning naming the subscriber is logged at most
    /// once a minute per group; see [`SubscriberOptions::blocking`] for the cure. Handlers in
    /// blocking mode are not watched.
    #[must_use]
    pub fn warn_blocking_after(mut self, threshold: Option<Duration>) -> Self {
        self.settings.blocking_threshold = threshold.filter(|t| !t.is_zero());
        self
    }

    /// Checks the configuration, creates the consumer groups and starts reading. Returns once every
    /// subscriber's group exists and its reader is connected.
    pub async fn start(self) -> Result<WorkerHandle> {
        let consumer = self.consumer.clone().unwrap_or_else(default_consumer_name);
        validate_name("consumer", &consumer)?;
        if self.subs.is_empty() {
            return Err(Error::Config(
                "a worker needs at least one subscriber".into(),
            ));
        }
        for sub in &self.subs {
            validate_name("stream", sub.stream())?;
            validate_name("group", sub.options().get_group())?;
        }
        let sets = HandlerSet::group_all(self.subs)?;
        for set in &sets {
            let opts = set.options();
            let what = format!("group {} on stream {}", opts.get_group(), set.stream());
            if opts.get_concurrency() == 0 {
                return Err(Error::Config(format!(
                    "{what}: concurrency must be at least 1"
                )));
            }
            if opts.get_max_attempts() == 0 {
                return Err(Error::Config(format!(
                    "{what}: max_attempts must be at least 1"
                )));
            }
            if opts.get_handler_timeout().is_some_and(|t| t.is_zero()) {
                return Err(Error::Config(format!(
                    "{what}: handler_timeout must be above zero"
                )));
            }
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        // One gate for the whole process: a suspect runs alone among every group's handlers.
        let gate = SoloGate::default();
        let consumer_name: Arc<str> = Arc::from(consumer.as_str());
        // One lease keeper (thread and connection) for the worker's groups.
        let keeper = Keeper::start(&self.conn).await?;
        let mut subs = Vec::with_capacity(sets.len());
        for set in sets {
            let prepared = GroupRunner::prepare(
                &self.conn,
                set,
                consumer_name.clone(),
                self.settings.clone(),
                gate.clone(),
                keeper.clone(),
                stop_rx.clone(),
            )
            .await;
            match prepared {
                Ok(rt) => subs.push(rt),
                Err(e) => {
                    for rt in subs {
                        rt.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let mut streams: Vec<&'static str> = subs.iter().map(|rt| rt.stream()).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut movers: Vec<JoinHandle<()>> = streams
            .iter()
            .map(|stream| {
                tokio::spawn(crate::delayed::mover_loop(
                    self.conn.clone(),
                    stream,
                    self.settings.mover_interval,
                    stop_rx.clone(),
                ))
            })
            .collect();
        if let Some(every) = self.settings.trim_interval {
            movers.extend(streams.iter().map(|stream| {
                tokio::spawn(crate::trim::trim_loop(
                    self.conn.clone(),
                    stream,
                    every,
                    self.settings.retention,
                    stop_rx.clone(),
                ))
            }));
        }
        if let Some(every) = self.settings.trim_all_interval {
            movers.push(tokio::spawn(crate::trim::trim_all_loop(
                self.conn.clone(),
                every,
                self.settings.retention,
                stop_rx.clone(),
            )));
        }
        let mut running = Vec::with_capacity(subs.len());
        for rt in subs {
            let reader = rt.reader().clone();
            let reading = rt.reading_flag();
            let task = tokio::spawn(rt.run());
            running.push(Running {
                reader,
                reading,
                task,
            });
        }
        tracing::info!(consumer = %consumer, subscribers = running.len(), "worker started");
        Ok(WorkerHandle {
            consumer,
            stop: stop_tx,
            running,
            movers,
        })
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully: stops reading, lets running
    /// handlers finish (within the grace period), flushes acknowledgements, makes unfinished
    /// entries reclaimable at once and removes this consumer from its groups if it owns nothing.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let handle = self.start().await?;
        shutdown.await;
        handle.shutdown().await
    }
}

struct Running {
    reader: Client,
    reading: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// A started worker; [`shutdown`](WorkerHandle::shutdown) stops it gracefully.
#[derive()]
pub struct WorkerHandle {
    consumer: String,
    stop: watch::Sender<bool>,
    running: Vec<Running>,
    movers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("consumer", &self.consumer)
            .field("subscribers", &self.running.len())
            .finish()
    }
}

impl WorkerHandle {
    /// This worker's consumer name.
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// Graceful shutdown; see [`Worker::run`].
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        // Interrupt blocked reads (CLIENT UNBLOCK … TIMEOUT: the read returns empty, nothing is
        // delivered). Repeat until each reader has seen the stop flag, since an unblock sent just
        // before a read starts has nothing to interrupt.
        let unblock = self.running.iter().map(|r| async move {
            while r.reading.load(Ordering::Acquire) {
                let _ = r
                    .reader
                    .unblock_self(Some(ClientUnblockFlag::Timeout))
                    .await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        futures::future::join_all(unblock).await;
        let mut result = Ok(());
        for m in self.movers {
            let _ = m.await;
        }
        for r in self.running {
            if let Err(e) = r.task.await {
                tracing::error!(error = %e, "subscriber task failed");
                result = Err(Error::Internal(format!("subscriber task failed: {e}")));
            }
        }
        tracing::info!(consumer = %self.consumer, "worker stopped");
        result
    }
}
