//! `weft load`: an open-loop, fixed-rate HTTP/1.1 load generator. A request that had
//! to wait for the previous one on its connection counts its latency from when it was
//! due, so a slow server cannot hide its queueing (no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::time::Instant;

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// Target URL, e.g. http://127.0.0.1:4140/ (the host must be an IP address and port).
    pub url: String,
    /// Requests per second across all connections.
    #[arg(long, default_value_t = 1000)]
    pub rps: u32,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Keep-alive connections to spread the requests over.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Host header to send (defaults to the URL's authority).
    #[arg(long)]
    pub host: Option<String>,
    /// Give up on a request after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// With --json: also the latency histogram, `histogram_us: [[µs, count], ...]` (3
    /// significant digits), so runs in several places can be merged into one.
    #[arg(long, requires = "json")]
    pub histogram: bool,
}

/// What a load run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// `[latency µs, count]` for every latency recorded (with --histogram).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram_us: Option<Vec<[u64; 2]>>,
}

struct Target {
    addr: SocketAddr,
    path: String,
    host: String,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let report = generate(&args, None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sent {} in {:?} ({:.0} req/s): {} ok, {} failed\nlatency p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms",
            report.sent, args.duration, report.rps, report.ok, report.failed, report.p50_ms, report.p90_ms, report.p99_ms, report.p999_ms, report.max_ms
        );
    }
    anyhow::ensure!(report.sent > 0, "no request was sent");
    Ok(())
}

/// Runs the load; `paths` (if given) are cycled through instead of the URL's path.
pub async fn generate(args: &LoadArgs, paths: Option<Arc<Vec<String>>>) -> anyhow::Result<Report> {
    let uri: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("invalid URL {:?}", args.url))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported: {}",
        args.url
    );
    let authority = uri.authority().context("the URL needs host:port")?;
    let addr: SocketAddr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    )
    .parse()
    .with_context(|| format!("the URL's host must be an IP address: {}", authority))?;
    anyhow::ensure!(args.rps > 0, "--rps must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let target = Arc::new(Target {
        addr,
        path: uri.path_and_query().map_or("/".into(), |p| p.to_string()),
        host: args.host.clone().unwrap_or_else(|| authority.to_string()),
    });

    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let mut histogram = new_histogram()?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rps));
    let total = (args.duration.as_secs_f64() * f64::from(args.rps)).round() as u64;
    let start = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..u64::from(args.connections) {
        let target = target.clone();
        let mut histogram = new_histogram()?;
        let paths = paths.clone();
        let (step, timeout) = (u64::from(args.connections), args.timeout);
        workers.push(tokio::spawn(async move {
            let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut i = worker;
            let mut previous_done = start;
            while i < total {
                let due = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due).await;
                // Waiting behind a slow previous request is the server's latency and
                // counts from the due time; waking late from the (1 ms) timer is ours
                // and does not.
                let began = if previous_done > due {
                    due
                } else {
                    Instant::now()
                };
                let path = paths
                    .as_ref()
                    .map_or(target.path.as_str(), |p| p[i as usize % p.len()].as_str());
                match tokio::time::timeout(timeout, send(&mut sender, &target, path)).await {
                    Ok(Ok(status)) if status < 500 => ok += 1,
                    _ => {
                        failed += 1;
                        sender = None;
                    }
                }
                previous_done = Instant::now();
                let micros = previous_done.duration_since(began).as_micros().max(1) as u64;
                histogram.saturating_record(micros);
                i += step;
            }
            (ok, failed, histogram)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f, h) = w.await?;
        ok += o;
        failed += f;
        histogram.add(h)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = histogram;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        sent: ok + failed,
        ok,
        failed,
        rps: (ok + failed) as f64 / elapsed,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        histogram_us: args.histogram.then(|| {
            h.iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect()
        }),
    })
}

async fn send(
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    target: &Target,
    path: &str,
) -> anyhow::Result<u16> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let io = tokio::net::TcpStream::connect(target.addr).await?;
        io.set_nodelay(true)?;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await?;
    let req = http::Request::get(path)
        .header(http::header::HOST, &target.host)
        .body(Empty::new())?;
    let rsp = s.send_request(req).await?;
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await?;
    Ok(status)
}
