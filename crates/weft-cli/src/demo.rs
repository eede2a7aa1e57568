//! `weft demo`: a demo app ("books") behind a real weft-proxy process, steady traffic
//! through the proxy, and the proxy's golden metrics printed live. It stands in for the
//! local mesh (`weft up`) until that exists.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use weft_core::prom::Scrape;

use crate::{fetch, load, stat};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The weft-proxy binary (default: next to this `weft` binary).
    #[arg(long, env = "WEFT_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// The proxy's inbound listener, where the demo traffic goes.
    #[arg(long, default_value = "127.0.0.1:4143")]
    inbound: SocketAddr,
    /// The proxy's outbound listener (unused by the demo traffic, but bound).
    #[arg(long, default_value = "127.0.0.1:4140")]
    outbound: SocketAddr,
    /// The proxy's admin server (/metrics, /ready, /live).
    #[arg(long, default_value = "127.0.0.1:4191")]
    admin: SocketAddr,
    /// Demo requests per second.
    #[arg(long, default_value_t = 50)]
    rps: u32,
    /// How often to print the live metrics.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let proxy_bin = match args.proxy_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft-proxy"),
    };
    anyhow::ensure!(
        proxy_bin.exists(),
        "weft-proxy not found at {}: build it (cargo build --release -p weft-proxy) or pass --proxy-bin",
        proxy_bin.display()
    );

    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(serve_books(app));
    println!("demo app \"books\" listening on {app_addr}");

    let mut proxy = tokio::process::Command::new(&proxy_bin)
        .args(["--mode", "explicit", "--log", "warn"])
        .args(["--inbound-forward", &app_addr.to_string()])
        .args(["--inbound-listen", &args.inbound.to_string()])
        .args(["--outbound-listen", &args.outbound.to_string()])
        .args(["--admin-listen", &args.admin.to_string()])
        .args([
            "--namespace",
            "demo",
            "--deployment",
            "books",
            "--pod",
            "books-0",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", proxy_bin.display()))?;
    wait_ready(&mut proxy, args.admin).await?;
    println!(
        "weft-proxy (pid {}) in front of it: inbound {}, admin http://{}/metrics",
        proxy.id().unwrap_or_default(),
        args.inbound,
        args.admin
    );
    println!(
        "sending {} req/s (5% to a failing endpoint); Ctrl-C to stop\n",
        args.rps
    );

    let load_args = load::LoadArgs {
        url: format!("http://{}/", args.inbound),
        rps: args.rps,
        duration: args.duration.unwrap_or(Duration::from_secs(24 * 3600)),
        connections: 4,
        host: Some("books.demo.svc:8080".into()),
        timeout: Duration::from_secs(5),
        json: false,
        histogram: false,
    };
    let mut paths: Vec<String> = vec!["/".into(); 19];
    paths.push("/fail".into());
    let traffic =
        tokio::spawn(async move { load::generate(&load_args, Some(Arc::new(paths))).await });

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut before = Scrape::parse(&fetch::get(args.admin, "/metrics").await?);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            status = proxy.wait() => anyhow::bail!("weft-proxy exited: {}", status?),
        }
        let after = Scrape::parse(&fetch::get(args.admin, "/metrics").await?);
        let rss = after.sum("process_resident_memory_bytes", &[]) / 1e6;
        println!(
            "{}proxy RSS {rss:.1} MB\n",
            stat::table(&stat::rows(&before, &after, args.interval))
        );
        before = after;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    traffic.abort();
    println!("stopping");
    // A graceful drain, as SIGTERM would ask for; the child is killed if it lingers.
    if let Err(error) = fetch::post(args.admin, "/shutdown").await {
        eprintln!("weft-proxy did not take the shutdown request: {error:#}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy.wait()).await;
    Ok(())
}

async fn wait_ready(proxy: &mut tokio::process::Child, admin: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Some(status) = proxy.try_wait()? {
            anyhow::bail!("weft-proxy exited during start-up ({status}); is a port in use? see its message above");
        }
        if fetch::get(admin, "/ready").await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("weft-proxy was not ready within 10s (admin {admin})")
}

/// The demo app: `GET /` answers after 1-20 ms; `/fail` answers 500.
async fn serve_books(listener: tokio::net::TcpListener) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let delay = rand::rng().random_range(1..=20);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut rsp =
                        http::Response::new(Full::new(Bytes::from_static(b"hello from books\n")));
                    if req.uri().path() == "/fail" {
                        *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, Infallible>(rsp)
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}
