//! `weft-demo-app`: the services of weft's demo mesh.
//!
//! - `serve --name books --port 8080 [--upstream URL]... [--call URL --rps N] [--fail-rate F]`
//!   serves HTTP/1.1 and HTTP/2 on every address; each request waits a little
//!   (`--latency`), calls every `--upstream` and answers with who served it. With
//!   `--call`, it also sends `--rps` requests per second to each URL (the demo's built-in
//!   load) and prints a line of totals every `--report` interval.
//! - `get URL [--count N]`: GETs the URL and prints each answer (a curl for pods).
//!
//! Names resolve with the system resolver, so inside a weft pod
//! `http://books.default.svc:8080` works through the pod's `/etc/hosts`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;

#[derive(Parser)]
#[command(name = "weft-demo-app", version, about = "weft's demo service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP, call upstreams per request, and optionally generate steady load.
    Serve(ServeArgs),
    /// GET a URL and print the answers.
    Get(GetArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The service's name, in answers and logs.
    #[arg(long)]
    name: String,
    /// Port to listen on (all addresses).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Called for every request served; the answer includes theirs.
    #[arg(long = "upstream")]
    upstreams: Vec<Uri>,
    /// Called `--rps` times per second each, whether or not anyone calls us.
    #[arg(long = "call")]
    calls: Vec<Uri>,
    /// Requests per second to each `--call` URL.
    #[arg(long, default_value_t = 10.0)]
    rps: f64,
    /// Share of requests answered with 500, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Work per request: a delay drawn uniformly from 0..=2×this.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Wait this long before the first `--call` (the services called may still be
    /// starting).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    call_delay: Duration,
    /// How often the load generator prints its totals.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    report: Duration,
}

#[derive(clap::Args)]
struct GetArgs {
    url: Uri,
    /// Number of requests (one after the other).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Per-request time limit.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print only the status lines.
    #[arg(long, short)]
    quiet: bool,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// GETs `uri`; the status and body, or the error.
async fn get(
    client: &HttpClient,
    uri: &Uri,
    limit: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let req = Request::get(uri.clone()).body(Full::new(Bytes::new()))?;
    let work = async {
        let rsp = client.request(req).await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("GET {uri}: no answer within {limit:?}"))?
        .with_context(|| format!("GET {uri}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Get(args) => get_cmd(args).await,
        }
    })
}

async fn get_cmd(args: GetArgs) -> anyhow::Result<()> {
    let client = client();
    let mut failed = 0;
    for _ in 0..args.count {
        match get(&client, &args.url, args.timeout).await {
            Ok((status, body)) => {
                if !status.is_success() {
                    failed += 1;
                }
                if args.quiet {
                    println!("{}", status.as_u16());
                } else {
                    println!(
                        "{} {}",
                        status.as_u16(),
                        String::from_utf8_lossy(&body).trim_end()
                    );
                }
            }
            Err(e) => {
                failed += 1;
                println!("error: {e:#}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} requests failed", args.count);
    Ok(())
}

/// Who this process is, from the environment `weft up` sets.
struct Me {
    name: String,
    pod: String,
    zone: String,
}

struct Counters {
    served: AtomicU64,
    calls_ok: AtomicU64,
    calls_failed: AtomicU64,
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate),
        "--fail-rate is between 0 and 1"
    );
    anyhow::ensure!(
        args.rps > 0.0 && args.rps <= 10_000.0,
        "--rps is in (0, 10000]"
    );
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let me = Arc::new(Me {
        name: args.name.clone(),
        pod: env("WEFT_POD"),
        zone: env("WEFT_ZONE"),
    });
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
        .await
        .with_context(|| format!("cannot listen on port {}", args.port))?;
    println!(
        "{} ({}, zone {}) serving on :{}; upstreams {:?}; calling {:?} at {} rps",
        me.name,
        me.pod,
        me.zone,
        args.port,
        args.upstreams
            .iter()
            .map(Uri::to_string)
            .collect::<Vec<_>>(),
        args.calls.iter().map(Uri::to_string).collect::<Vec<_>>(),
        args.rps
    );
    let client = client();
    let counters = Arc::new(Counters {
        served: AtomicU64::new(0),
        calls_ok: AtomicU64::new(0),
        calls_failed: AtomicU64::new(0),
    });
    for uri in &args.calls {
        tokio::spawn(load(
            client.clone(),
            uri.clone(),
            args.rps,
            counters.clone(),
        ));
    }
    if !args.calls.is_empty() || !args.upstreams.is_empty() {
        tokio::spawn(report(args.report, me.clone(), counters.clone()));
    }
    let handler = Arc::new(Handler {
        me,
        client,
        upstreams: args.upstreams,
        fail_rate: args.fail_rate,
        latency: args.latency,
        counters,
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = socket.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}

struct Handler {
    me: Arc<Me>,
    client: HttpClient,
    upstreams: Vec<Uri>,
    fail_rate: f64,
    latency: Duration,
    counters: Arc<Counters>,
}

impl Handler {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        let (delay, fail) = {
            let mut rng = rand::rng();
            let max = self.latency.as_micros() as u64 * 2;
            let delay = if max > 0 {
                rng.random_range(0..=max)
            } else {
                0
            };
            (delay, rng.random_bool(self.fail_rate))
        };
        tokio::time::sleep(Duration::from_micros(delay)).await;
        let mut text = format!(
            "{} {} (pod {}, zone {})",
            self.me.name,
            req.uri().path(),
            self.me.pod,
            self.me.zone
        );
        let mut status = StatusCode::OK;
        for uri in &self.upstreams {
            match get(&self.client, uri, Duration::from_secs(5)).await {
                Ok((s, body)) => {
                    if !s.is_success() {
                        status = StatusCode::BAD_GATEWAY;
                    }
                    text.push_str(&format!(
                        " <- [{} {}]",
                        s.as_u16(),
                        String::from_utf8_lossy(&body).trim_end()
                    ));
                }
                Err(e) => {
                    status = StatusCode::BAD_GATEWAY;
                    text.push_str(&format!(" <- [error: {e:#}]"));
                }
            }
        }
        if fail {
            status = StatusCode::INTERNAL_SERVER_ERROR;
            text.push_str(" (failed on purpose)");
        }
        text.push('\n');
        let mut rsp = Response::new(Full::new(Bytes::from(text)));
        *rsp.status_mut() = status;
        rsp
    }
}

/// Sends `rps` GETs per second to `uri`, each in its own task (open loop).
async fn load(client: HttpClient, uri: Uri, rps: f64, counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(AtomicU64::new(0));
    loop {
        tick.tick().await;
        // Bounded: a stuck upstream does not pile up tasks without end.
        if in_flight.load(Ordering::Relaxed) > 1000 {
            counters.calls_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, uri, counters, in_flight) = (
            client.clone(),
            uri.clone(),
            counters.clone(),
            in_flight.clone(),
        );
        tokio::spawn(async move {
            match get(&client, &uri, Duration::from_secs(5)).await {
                Ok((s, _)) if s.is_success() => counters.calls_ok.fetch_add(1, Ordering::Relaxed),
                _ => counters.calls_failed.fetch_add(1, Ordering::Relaxed),
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn report(every: Duration, me: Arc<Me>, counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        println!(
            "{}: served {}, calls ok {}, calls failed {}",
            me.pod,
            counters.served.load(Ordering::Relaxed),
            counters.calls_ok.load(Ordering::Relaxed),
            counters.calls_failed.load(Ordering::Relaxed)
        );
    }
}
