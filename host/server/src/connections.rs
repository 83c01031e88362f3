//! The accept loop: HTTP/1.1 connections with a header read timeout and a cap on how many are
//! open at once, so that slow or idle clients cannot hold the server's sockets.
//!
//! Why not `axum::serve`: it sets no timer on hyper's connection builder, so a client that opens
//! a connection and sends nothing (or half a header) keeps it forever, and it accepts without
//! limit until the process runs out of file descriptors. Here each connection is served by
//! hyper's own HTTP/1 builder with `header_read_timeout` (which also closes idle keep-alive
//! connections: the timer runs while hyper waits for the next request's head), and the loop
//! stops accepting while `max_connections` are open: further clients wait in the kernel's listen
//! backlog and are served as soon as a connection closes. The body read timeout is the router's
//! (see `read_body_in_time` in lib.rs), since hyper has none.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

/// Per-connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's head, counted from when the server starts waiting
    /// for it (a new connection, or the end of the previous answer on a kept-alive one).
    pub header_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the requests in flight finish
/// (idle connections close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS) as u32;
    let open = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take a connection slot before accepting, so that a full server leaves new clients in
        // the backlog instead of accepting and dropping them.
        let slot = tokio::select! {
            slot = open.clone().acquire_owned() => slot?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and similar: wait a little rather than spin.
                    eprintln!("warning: accepting a connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        // A Router is always ready, so calling it without `poll_ready` is fine.
        let service = hyper::service::service_fn(move |request: Request<Incoming>| app.clone().call(request.map(Body::new)));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection task holds a slot until it ends.
    let _all = open.acquire_many(max).await?;
    Ok(())
}
