//! Connections: the accept loop, over plain TCP or TLS, with the limits that keep one client from holding
//! the server — a cap on open connections (more are answered 503 and closed at once), a TLS handshake
//! deadline, a request-head deadline (hyper's header read timeout; on a kept-alive connection its clock
//! starts when the previous response is done, so it is also the idle keep-alive timeout), and on
//! SIGINT/SIGTERM a drain: stop accepting, let in-flight requests finish, and after the drain deadline
//! close whatever is left. Request bodies get their own deadline in the router (see `limits`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::AppState;
use crate::engine::EngineHandle;

/// Connection-level limits (flags of `serve`).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time to receive a whole request head (and, between requests, the idle keep-alive time).
    pub header_timeout: Duration,
    /// Time for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// After a shutdown signal, time for in-flight requests to finish before connections are closed.
    pub drain_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Largest request head hyper buffers. Our own limits (see `limits`) are below it, so that requests over
/// them get an OpenAI error body; beyond this hyper answers 431 itself, with an empty body.
const MAX_HEAD_BUFFER: usize = 256 * 1024;

/// The reply to a connection over the cap (503, OpenAI's error shape), written without a task or a wait
/// (a fresh socket's send buffer holds it); then the socket is closed.
fn over_capacity_reply() -> Vec<u8> {
    let body = super::error::ApiError::too_many_connections()
        .body()
        .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
         retry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let engine = state.engine.clone();
    let metrics = state.metrics.clone();
    let app = super::router(state);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let over_capacity = over_capacity_reply();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors (or a reset before accept): back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    metrics.record_refused_connection();
                    let _ = tcp.try_write(&over_capacity);
                    continue;
                };
                let conn = Connection {
                    app: app.clone(),
                    limits: limits.clone(),
                    stop: stop_rx.clone(),
                };
                let tls = tls.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    match tls {
                        None => conn.run(tcp).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(
                                conn.limits.tls_handshake_timeout,
                                acceptor.accept(tcp),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => conn.run(stream).await,
                                Ok(Err(_)) | Err(_) => {
                                    tracing::debug!("TLS handshake failed or timed out");
                                }
                            }
                        }
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = tasks.len(),
        "shutdown requested: draining in-flight requests"
    );
    engine.shutdown();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            drain_timeout_s = limits.drain_timeout.as_secs_f64(),
            "drain deadline passed: closing the remaining connections"
        );
        tasks.shutdown().await;
        abort_engine(&engine);
    }
    Ok(())
}

/// After the drain deadline nobody is left to read what the engine makes: it stops at once.
fn abort_engine(engine: &EngineHandle) {
    engine.abort_all();
}

/// One accepted connection.
struct Connection {
    app: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.app);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(MAX_HEAD_BUFFER)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = self.stop.wait_for(|s| *s) => {}
        }
        // Draining: finish the request in flight (if any), then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
