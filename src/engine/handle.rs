//! The engine thread and the handle the HTTP side holds: submit a request (bounded admission), cancel it,
//! shut down (drain). One thread owns the model and the KV cache; everything else talks to it through a
//! channel. A failing or panicking step aborts the sequences of that step, never the server.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::compute::compute_pool;
use super::constraint::TokenConstraint;
use super::core::EngineCore;
use super::request::{EngineEvent, EngineRequest, RequestParams};
use super::scheduler::SchedulerConfig;
use super::stats::EngineStats;
use crate::error::Result;
use crate::kv::prefix_cache::PrefixKey;
use crate::loader::LoadedModel;

enum Command {
    Submit(EngineRequest),
    Cancel(u64),
    Shutdown,
    /// Finish every request now (the drain deadline passed).
    AbortAll,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Cheap to clone; all clones talk to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    pub stats: Arc<EngineStats>,
    pub loaded: Arc<LoadedModel>,
    pub config: SchedulerConfig,
    next_id: Arc<AtomicU64>,
}

impl EngineHandle {
    /// Starts the engine thread.
    pub fn start(
        loaded: Arc<LoadedModel>,
        config: SchedulerConfig,
    ) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let stats = Arc::new(EngineStats::default());
        let mut core = EngineCore::new(loaded.clone(), config.clone(), stats.clone())?;
        let (tx, rx) = mpsc::channel();
        // Built here so a failure to start threads fails the start, not every later request.
        let pool = compute_pool()?;
        let thread = std::thread::Builder::new()
            .name("moeserve-engine".into())
            .spawn(move || pool.install(|| run(&mut core, rx)))
            .map_err(|e| crate::Error::Device(format!("cannot start the engine thread: {e}")))?;
        Ok((
            Self {
                tx,
                stats,
                loaded,
                config,
                next_id: Arc::new(AtomicU64::new(1)),
            },
            thread,
        ))
    }

    /// Queues a request; events arrive on the returned receiver.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: RequestParams,
    ) -> std::result::Result<(u64, UnboundedReceiver<EngineEvent>), SubmitError> {
        self.submit_constrained(prompt, params, None, None)
    }

    /// Queues a request whose tokens `constraint` restricts (structured outputs, tool calls).
    pub fn submit_constrained(
        &self,
        prompt: Vec<u32>,
        params: RequestParams,
        constraint: Option<Box<dyn TokenConstraint>>,
        prefix: Option<Arc<PrefixKey>>,
    ) -> std::result::Result<(u64, UnboundedReceiver<EngineEvent>), SubmitError> {
        if self.stats.shutting_down.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown);
        }
        let queued = self.stats.queued_requests.load(Ordering::Relaxed)
            + self.stats.waiting_sequences.load(Ordering::Relaxed);
        if queued >= self.config.max_waiting {
            return Err(SubmitError::QueueFull);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = unbounded_channel();
        self.stats.queued_requests.fetch_add(1, Ordering::Relaxed);
        let req = EngineRequest {
            id,
            prompt,
            params: Arc::new(params),
            events,
            constraint,
            prefix,
        };
        if self.tx.send(Command::Submit(req)).is_err() {
            self.stats.queued_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::ShuttingDown);
        }
        Ok((id, rx))
    }

    /// Cancels a request (client gone); its blocks are freed at once.
    pub fn cancel(&self, id: u64) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// Aborts every request at once (after the drain deadline: nobody is left to read them).
    pub fn abort_all(&self) {
        self.stats.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Command::AbortAll);
    }

    /// Stops admitting; the thread exits once in-flight requests are done.
    pub fn shutdown(&self) {
        self.stats.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Command::Shutdown);
    }
}

fn run(core: &mut EngineCore, rx: mpsc::Receiver<Command>) {
    let mut draining = false;
    loop {
        // Block when idle; otherwise take whatever arrived and keep stepping.
        let first = if core.has_work() {
            rx.try_recv().ok()
        } else if draining {
            break;
        } else {
            // Idle: wait for a command, waking when a cached prefix block expires (it is zeroed then).
            match core.next_expiry() {
                Some(at) => {
                    let wait = at.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(c) => Some(c),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            core.expire();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                },
            }
        };
        let mut next = first;
        while let Some(cmd) = next {
            match cmd {
                Command::Submit(req) => core.add(req),
                Command::Cancel(id) => core.cancel(id),
                Command::Shutdown => draining = true,
                Command::AbortAll => {
                    draining = true;
                    core.abort_all();
                }
            }
            next = rx.try_recv().ok();
        }
        if !core.has_work() {
            continue;
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| core.step())) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "engine step failed; aborting its sequences");
                core.fail_all("internal error in the engine");
            }
            Err(_) => {
                tracing::error!("engine step panicked; aborting its sequences");
                core.fail_all("internal error in the engine");
            }
        }
        if !core.has_work() {
            core.went_idle();
        }
    }
    core.abort_all();
    tracing::info!("engine stopped");
}
