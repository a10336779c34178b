//! `genie serve`: the generator behind HTTP + JSON, filling a cache that training jobs in other
//! processes (or on other machines) read.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::model_args::ModelArgs;
use crate::parse::{parse_age, parse_size};

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The cache to fill, shared with the training jobs: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// Address to listen on: loopback by default; 0.0.0.0:PORT exposes it (then a token is
    /// needed, or --no-auth). Port 0 picks a free one; the chosen address is printed.
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: String,
    /// A file holding the bearer token every call but /healthz and /readyz must send
    /// (`Authorization: Bearer TOKEN`). Without it, GENIE_TOKEN holds the token itself.
    #[arg(long, env = "GENIE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve without a token on an address other machines can reach (a proxy in front
    /// authenticates). A loopback address needs no token.
    #[arg(long)]
    no_auth: bool,
    /// Serve /metrics without the token (for a Prometheus that does not hold it).
    #[arg(long)]
    open_metrics: bool,
    /// A Host name requests may carry besides the listen address (and localhost on loopback):
    /// a proxy's, an ingress's, a Service's. Repeatable.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Most levels (images) waiting per priority; more are answered `dropped`.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    queue_capacity: u64,
    /// The share of the queue one client (its X-Genie-Client name, else its address) may hold.
    #[arg(long, default_value_t = 0.5, value_parser = parse_share)]
    client_share: f64,
    /// Most jobs one engine call runs together.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// Largest request body (e.g. 64MiB); larger ones get 413.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    body_limit: u64,
    /// Sources whose pixels the server keeps, so that clients can send only their hash.
    #[arg(long, default_value_t = 4096)]
    remembered_sources: usize,
    /// Longest a connection may take to send a request head, and stay idle between requests.
    #[arg(long, default_value = "10s", value_parser = parse_age)]
    header_timeout: Duration,
    /// Most connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// After SIGTERM, how long /readyz says `draining` before the listener closes.
    #[arg(long, default_value = "2s", value_parser = parse_age)]
    unready_delay: Duration,
    /// Longest the stop may take from SIGTERM: then what is queued or in flight is cancelled
    /// and the server exits 0. Keep it below the grace period (Kubernetes' default is 30 s).
    #[arg(long, default_value = "25s", value_parser = parse_age)]
    drain_timeout: Duration,
    /// Keep a folder cache at most this large while serving (oldest entries go first), e.g.
    /// 200GiB; an s3:// cache is bounded by the bucket's lifecycle rules instead.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_cache_bytes: Option<u64>,
    /// How often the cache bound is applied.
    #[arg(long, default_value = "10s", value_parser = parse_age)]
    gc_every: Duration,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("{s:?} is not a share in (0, 1]")),
    }
}

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    use anyhow::Context;
    use genie::cache::{Cache, DiskStore, GcLoop, GcPolicy};
    use genie::factory::SdEngineFactory;
    use genie::generator::{Generator, GeneratorConfig};
    use genie::remote::server::{self, ServeConfig};
    use genie::remote::Token;

    let factory = std::sync::Arc::new(SdEngineFactory::new(
        crate::model_args::model_source(&args.model)?,
        crate::model_args::engine_options(&args.model)?,
    )?);
    let model = factory.plan().fingerprint.model.clone();
    let token = if args.no_auth {
        None
    } else {
        match &args.token_file {
            Some(path) => Some(Token::from_file(path)?),
            None => Token::from_env()?,
        }
    };
    let cache = std::sync::Arc::new(Cache::open(&args.cache, 64 << 20)?);
    let _gc = match args.max_cache_bytes {
        None => None,
        Some(max) => {
            if args.cache.starts_with("s3://") {
                anyhow::bail!(
                    "--max-cache-bytes bounds a folder cache; bound {} with the bucket's lifecycle rules",
                    args.cache
                );
            }
            let store = std::sync::Arc::new(DiskStore::open_existing(&args.cache)?);
            let policy = GcPolicy {
                max_bytes: Some(max),
                max_age: None,
            };
            Some(GcLoop::start(store, policy, args.gc_every).context("cannot start the cache gc")?)
        }
    };
    let mut config = GeneratorConfig::default();
    config.devices = args.model.device.clone();
    config.queue_capacity = usize::try_from(args.queue_capacity).unwrap_or(usize::MAX);
    config.max_batch = usize::try_from(args.max_batch).unwrap_or(usize::MAX);
    config.load_at_start = true;
    let mut serve_config = ServeConfig::default();
    serve_config.body_limit = usize::try_from(args.body_limit).unwrap_or(usize::MAX);
    serve_config.remembered_sources = args.remembered_sources;
    serve_config.token = token;
    serve_config.no_auth = args.no_auth;
    serve_config.open_metrics = args.open_metrics;
    serve_config.allowed_hosts = args.allowed_hosts.clone();
    serve_config.header_timeout = args.header_timeout;
    serve_config.max_connections = room_for_connections(args.max_connections);
    serve_config.unready_delay = args.unready_delay;
    serve_config.drain_timeout = args.drain_timeout;
    serve_config.client_share = args.client_share;
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
        // Before the model loads: a refusal should not take a minute to arrive.
        serve_config.check_listen(addr)?;
        let generator = Generator::start(factory, cache, config)?;
        // The one line on stdout: scripts (and the tests) read the address from it.
        println!("{}", server::listening_line(addr, &model));
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

/// `wanted` connections, if the open-files limit has room for them (raising the soft limit
/// toward the hard one, as servers do); else as many as it has, with a warning.
fn room_for_connections(wanted: u64) -> usize {
    // Files the engine, the cache and the runtime keep open besides the connections.
    const SPARE: libc::rlim_t = 256;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return usize::try_from(wanted).unwrap_or(usize::MAX);
    }
    let needed = wanted.saturating_add(SPARE);
    if limit.rlim_cur < needed {
        let raised = libc::rlimit {
            rlim_cur: needed.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let room = limit.rlim_cur.saturating_sub(SPARE).max(1);
    if room < wanted {
        tracing::warn!(
            wanted,
            room,
            "the open-files limit (ulimit -n) allows fewer connections than --max-connections"
        );
    }
    usize::try_from(room.min(wanted)).unwrap_or(usize::MAX)
}

/// Resolves on SIGTERM (Kubernetes, Slurm) or Ctrl-C.
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
