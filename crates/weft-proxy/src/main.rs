use anyhow::Context as _;
use clap::Parser;
use weft_proxy::config::LogFormat;
use weft_proxy::{Args, Proxy};

/// jemalloc rather than glibc's malloc, for memory to come back after a burst: once
/// 10,000 idle connections closed (`tests/idle_scale.rs`, release build), glibc still
/// held all of it (RSS 342 MB, 8.8 MB idle before) because a few allocations that live
/// on, made during the burst, pin the top of its heap, and it only returns the top.
/// jemalloc's background thread returns unused pages within its decay time (10 s): RSS
/// 14-15 MB after the same burst (11 MB idle). What stays is jemalloc's metadata for the
/// peak, which it never returns: a 128-byte descriptor for each of the 28,000 extents
/// alive at once and its page map for the pages the peak used, 1.1-1.5 % of the peak.
/// Its defaults are kept: larger slabs, one arena, no retained mappings or the
/// hugepage allocator gave back at most 0.8 MB more, or less (docs/reliability.md).
/// Costs: +1.2 MB idle, +1-2 % instructions per request (bench/instructions), 0.5 MB of
/// binary. Built without the `jemalloc` feature, the binary uses the system's malloc
/// (for heap profiles: bench/heap).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // `weft-proxy init`: the pod's iptables rules (Kubernetes' init container), not a proxy.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return weft_proxy::init::main(std::env::args_os().skip(1));
    }
    // Not dumpable: no other process of this UID (a local mesh runs every pod's proxy
    // as UID 2102) can ptrace this one or read its memory, environment or descriptors,
    // where its private key and identity token are. Only root can.
    nix::sys::prctl::set_dumpable(false).context("cannot make the proxy non-dumpable")?;
    let args = Args::parse();
    init_tracing(&args.log, args.log_format)?;
    raise_open_file_limit();
    let workers = args.worker_threads;
    let config = args.into_config()?;

    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;

    runtime.block_on(async {
        // Listened for before the listeners open: a SIGTERM right after start drains
        // the proxy instead of killing it with the default action.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let proxy = Proxy::start(config).await?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = proxy.closed() => {}
        }
        proxy.shutdown();
        proxy.closed().await;
        anyhow::Ok(())
    })?;
    // Connections still open after the grace period end with the process.
    runtime.shutdown_background();
    Ok(())
}

/// Every proxied connection holds two descriptors: the soft limit (often 1,024) is
/// raised to the hard one, so that the connection cap (derived from it) and not the
/// file table is what bounds connections.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open file limit raised"),
            Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the open file limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open file limit"),
    }
}

fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    // Lines stderr cannot take are dropped and counted (`log_lines_dropped`), never a
    // panic; colour only on a terminal (log files stay plain text).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_writer(|| weft_core::log::LossyStderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
