//! The lease keeper: a thread of its own, with a small Tokio runtime and its own Redis
//! connection, where lease renewals and the blocking-handler watch run. (Acknowledgements stay on
//! the application's runtime, for speed; an entry stays leased until its ack was sent.)
//!
//! Handlers share the application's runtime threads with everything else of the worker. A handler
//! that blocks its thread (a synchronous driver, CPU-heavy work, `std::thread::sleep`) without
//! `spawn_blocking` holds one of them; once handlers hold all of them, no other task of the
//! process runs. If lease renewals were such tasks, the leases of the very handlers that are busy
//! would run out, and another worker would take their entries over while they still run. On the
//! keeper's thread, renewals go on whatever the handlers do; they stop only with the process
//! (killed, or frozen by SIGSTOP or a debugger), which is exactly when another worker should take
//! over.

use std::thread;

use fred::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::conn::Conn;
use crate::error::{ClientResult, Error, Result};

/// A handle on the keeper thread: spawns tasks on its runtime, and lends its connection. The
/// thread ends (and its connection closes) once every handle is dropped.
#[derive(Clone)]
pub(crate) struct Keeper {
    runtime: tokio::runtime::Handle,
    client: Client,
    /// Never sent on: the thread runs until every clone is dropped.
    _alive: mpsc::Sender<()>,
}

impl Keeper {
    /// Starts the keeper thread and connects its client (a new connection configured like the
    /// bus's: same server, credentials, TLS and timeouts).
    pub(crate) async fn start(conn: &Conn) -> Result<Keeper> {
        let client = conn.client.clone_new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let thread_client = client.clone();
        thread::Builder::new()
            .name("streambus-lease".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Internal(format!(
                            "cannot build the lease keeper's runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Connected from this runtime, so the connection's own tasks run here too.
                    if let Err(e) = thread_client.init().await.client_err() {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    let _ = ready_tx.send(Ok(tokio::runtime::Handle::current()));
                    while alive_rx.recv().await.is_some() {}
                    let _ = thread_client.quit().await;
                });
            })
            .map_err(|e| Error::Internal(format!("cannot start the lease keeper thread: {e}")))?;
        let runtime = ready_rx
            .await
            .map_err(|_| Error::Internal("the lease keeper thread ended at start".into()))??;
        Ok(Keeper {
            runtime,
            client,
            _alive: alive_tx,
        })
    }

    /// The keeper's own connection; use it only from tasks spawned on the keeper.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a task on the keeper's thread.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(task)
    }
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").finish_non_exhaustive()
    }
}
