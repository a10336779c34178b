//! `genie serve`: the generator behind HTTP + JSON, filling a cache that training jobs in other
//! processes (or on other machines) read.

use anyhow::Result;
use clap::Args;

use super::{parse_size, ModelArgs};

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The cache to fill, shared with the training jobs: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// Address to listen on: loopback by default; 0.0.0.0:PORT exposes it (there is no
    /// authentication or TLS: put it behind a proxy that has them). Port 0 picks a free one;
    /// the chosen address is printed.
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: String,
    /// Most levels waiting per priority; more are answered `dropped`.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    queue_capacity: u64,
    /// Most jobs one engine call runs together.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// Largest request body (e.g. 64MiB); larger ones get 413.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    body_limit: u64,
    /// Sources whose pixels the server keeps, so that clients can send only their hash.
    #[arg(long, default_value_t = 4096)]
    remembered_sources: usize,
}

#[cfg(not(feature = "serve"))]
pub(crate) fn serve(_: ServeArgs) -> Result<()> {
    anyhow::bail!(
        "this genie was built without the `serve` feature: build it with `--features serve`"
    )
}

#[cfg(feature = "serve")]
pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    use anyhow::Context;
    use genie::cache::Cache;
    use genie::factory::SdEngineFactory;
    use genie::generator::{Generator, GeneratorConfig};
    use genie::remote::server::{self, ServeConfig};

    let factory = std::sync::Arc::new(SdEngineFactory::new(
        super::model_source(&args.model)?,
        super::engine_options(&args.model)?,
    )?);
    let model = factory.plan().fingerprint.model.clone();
    let cache = std::sync::Arc::new(Cache::open(&args.cache, 64 << 20)?);
    let mut config = GeneratorConfig::default();
    config.devices = args.model.device.clone();
    config.queue_capacity = usize::try_from(args.queue_capacity).unwrap_or(usize::MAX);
    config.max_batch = usize::try_from(args.max_batch).unwrap_or(usize::MAX);
    config.load_at_start = true;
    let mut serve_config = ServeConfig::default();
    serve_config.body_limit = usize::try_from(args.body_limit).unwrap_or(usize::MAX);
    serve_config.remembered_sources = args.remembered_sources;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stats = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let generator = Generator::start(factory, cache, config)?;
        // The one line on stdout: scripts (and the tests) read the address from it.
        println!("genie serve: listening on http://{addr} (engine {model})");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        anyhow::Ok(server::serve(generator, listener, serve_config, stop_signal()).await?)
    })?;
    eprintln!(
        "genie serve: stopped after {} images ({} failed, {} dropped)",
        stats.done, stats.failed, stats.dropped
    );
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes, Slurm) or Ctrl-C.
#[cfg(feature = "serve")]
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
