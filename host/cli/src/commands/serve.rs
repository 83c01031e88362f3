//! `sigmaforge serve`: the reward server for other trainers (TRL, verl, OpenRLHF).
//!
//! ```text
//! sigmaforge serve --plugins sigma.wasm [--data DIR] [--addr 127.0.0.1:8765]
//! ```
//! Prints `listening on http://ADDR` on stderr once it accepts connections (with port 0 the
//! address shows the port picked), and stops gracefully on Ctrl-C or SIGTERM. The HTTP API is
//! documented in docs/serve.md and in the sigmaforge-server crate.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use sigmaforge_server::{ServerOptions, bind, router, serve, shutdown_signal};

use super::plugin::PluginSource;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: PluginSource,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8765")]
    addr: SocketAddr,
    /// Batches scored at once; more wait in the queue.
    #[arg(long, default_value_t = 4)]
    max_concurrent: usize,
    /// Batches allowed to wait; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Seconds from a request's arrival to its answer before it gets 504.
    #[arg(long, default_value_t = 60.0)]
    request_timeout: f64,
    /// Most items in one batch.
    #[arg(long, default_value_t = 4096)]
    max_batch: usize,
    /// Seconds a client has to send a request's head; idle connections close after it too.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a client has to send a request's body once its head arrived (else 408).
    #[arg(long, default_value_t = 30.0)]
    body_timeout: f64,
    /// Connections open at once; more wait in the listen backlog until one closes.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let set = args.source.load()?;
    let plugin = PluginSource::task_plugin(&set, &args.source.plugins)?;
    let options = ServerOptions {
        max_concurrent: args.max_concurrent.max(1),
        max_queue: args.max_queue,
        request_timeout: Duration::from_secs_f64(args.request_timeout.max(0.001)),
        max_batch: args.max_batch.max(1),
        header_timeout: Duration::from_secs_f64(args.header_timeout.max(0.001)),
        body_timeout: Duration::from_secs_f64(args.body_timeout.max(0.001)),
        max_connections: args.max_connections.max(1),
        ..ServerOptions::default()
    };
    let limits = options.connection_limits();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (listener, local) = bind(args.addr).await?;
        eprintln!("listening on http://{local} (plugin {}; POST /v1/score, GET /health, GET /metrics)", plugin.name());
        let app = router(plugin, options);
        serve(listener, app, limits, shutdown_signal()).await?;
        eprintln!("server stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
