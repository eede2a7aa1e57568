//! `weft-demo-app`: the services of weft's demo mesh.
//!
//! - `serve --name books --port 8080 [--upstream URL]... [--call URL --rps N] [--fail-rate F]`
//!   serves HTTP/1.1 and HTTP/2 on every address; each request waits a little
//!   (`--latency`), calls every `--upstream` and answers with who served it. With
//!   `--call`, it also sends `--rps` requests per second to each URL (the demo's built-in
//!   load) and prints a line of totals every `--report` interval.
//!   With `--grpc-port`, it also listens there; every port answers both HTTP and the
//!   gRPC service `weft.demo.Authors/Lookup`, and `--grpc-upstream` calls that service
//!   on another server for every request served.
//! - `get URL [--count N] [-H 'Name: value']... [-i]`: GETs the URL and prints each
//!   answer (a curl for pods; `-i` also prints the response headers, redirects are not
//!   followed).
//! - `echo --name N [--port P]...`: answers every request with JSON describing it, as
//!   the Gateway API conformance suite's echo server does (see `echo.rs`).
//! - `lookup URL [--book B] [--count N]`: calls `weft.demo.Authors/Lookup` (a grpcurl
//!   for pods).
//!
//! Faults can change while a server runs, for scenarios: `--fault-file PATH` is re-read
//! when it changes (`delay=50ms fail_rate=1`; `{pod}`, `{zone}`, `{name}` in the path
//! are filled in, so one file can steer a whole zone), and `POST /admin/fault` with the
//! same text sets the fault directly (`GET /admin/fault` shows it).
//!
//! Names resolve with the system resolver, so inside a weft pod
//! `http://books.default.svc:8080` works through the pod's `/etc/hosts`. With
//! `HTTP_PROXY` (or `http_proxy`) set, as `weft up` does in loopback mode, http:// calls
//! go through that proxy instead (absolute-form requests; the proxy resolves the name),
//! except to hosts `NO_PROXY` lists (`*`, names with their subdomains, IPs, CIDRs). gRPC
//! calls go to the same proxy in cleartext HTTP/2 with the upstream as `:authority`.
//! `serve` listens on `WEFT_LISTEN_ADDR` when it is set (loopback mode: the pod's own
//! address, as pods share the machine's ports), else on every address.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;

mod echo;
mod grpc;

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
    /// Call the gRPC method weft.demo.Authors/Lookup and print the answers.
    Lookup(LookupArgs),
    /// Answer every request with JSON describing it (path, host, method, headers,
    /// namespace, pod), as the Gateway API conformance suite's echo server does.
    Echo(echo::EchoArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The service's name, in answers and logs.
    #[arg(long)]
    name: String,
    /// Port to listen on (on $WEFT_LISTEN_ADDR when set, else on all addresses). It
    /// answers HTTP/1.1, HTTP/2 and the gRPC service weft.demo.Authors/Lookup.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// A second port to listen on, for gRPC clients (it answers the same as --port).
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Called for every request served; the answer includes theirs.
    #[arg(long = "upstream")]
    upstreams: Vec<Uri>,
    /// A gRPC server (`http://authors:9090`) whose weft.demo.Authors/Lookup is called
    /// for every HTTP request served, with the request's last path segment as the book;
    /// the answer includes its reply or status.
    #[arg(long = "grpc-upstream")]
    grpc_upstreams: Vec<Uri>,
    /// Called `--rps` times per second each, whether or not anyone calls us.
    #[arg(long = "call")]
    calls: Vec<Uri>,
    /// Requests per second to each `--call` URL.
    #[arg(long, default_value_t = 10.0)]
    rps: f64,
    /// Share of requests answered with 500 (gRPC: UNAVAILABLE), 0..=1.
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
    /// Faults to apply while this file exists, re-read within 100 ms of a change:
    /// `delay=50ms` (added to every request) and `fail_rate=0.5` (replaces
    /// --fail-rate), separated by spaces, newlines or `&`. `{pod}`, `{zone}` and
    /// `{name}` in the path become this pod's, zone's and --name's values, so one file
    /// per zone steers all of its servers. A relative path is from the working
    /// directory (the mesh directory under `weft up`).
    #[arg(long)]
    fault_file: Option<String>,
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
    /// A request header, `Name: value` (repeatable; `Host: NAME` replaces the URL's).
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Print each answer's response headers first, one `< name: value` line each.
    #[arg(long, short)]
    include: bool,
}

/// `Name: value` as a header.
fn parse_header(text: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not `Name: value`"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("{text:?}: header name {:?}: {e}", name.trim()))?;
    let value = http::HeaderValue::from_str(value.trim())
        .map_err(|e| format!("{text:?}: header value: {e}"))?;
    Ok((name, value))
}

#[derive(clap::Args)]
struct LookupArgs {
    /// The gRPC server, `http://HOST:PORT`.
    url: Uri,
    /// The book to look up.
    #[arg(long, default_value = "dune")]
    book: String,
    /// Number of calls (one after the other).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Per-call time limit.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

type HttpClient = Client<ProxyConnector, Full<Bytes>>;

fn client() -> HttpClient {
    client_via(env_proxies())
}

/// The proxies the environment sets (`HTTP_PROXY`/`http_proxy`, `NO_PROXY`/`no_proxy`).
fn env_proxies() -> Matcher {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok())
            .unwrap_or_default()
    };
    proxies(
        &var(["HTTP_PROXY", "http_proxy"]),
        &var(["NO_PROXY", "no_proxy"]),
    )
}

/// The proxy for http:// calls (`http`, e.g. `http://127.18.0.2:4140`) and the hosts
/// that bypass it (`no`: comma-separated names, which include their subdomains, IPs,
/// CIDRs, or `*` for every host).
fn proxies(http: &str, no: &str) -> Matcher {
    if no.split(',').any(|entry| entry.trim() == "*") {
        // hyper-util's matcher applies `*` to names only; curl's applies it to IPs too.
        return Matcher::builder().build();
    }
    Matcher::builder().http(http).no(no).build()
}

/// A client that sends http:// requests through the proxies `proxies` names.
fn client_via(proxies: Matcher) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    // Idle connections go within 300 ms: the pool also keeps connections it opened for
    // a request that then went out on another one, and a connection that stays silent
    // past the proxy's --detect-timeout (1 s) is forwarded as opaque TCP to a single
    // endpoint, unbalanced and out of the HTTP metrics.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(300))
        .build(ProxyConnector {
            inner: connector,
            proxies: Arc::new(proxies),
        })
}

/// Connects to the destination, or to the HTTP proxy the environment names for it
/// (`HTTP_PROXY`/`http_proxy`, `NO_PROXY`/`no_proxy`): connections to a proxy say so,
/// and the client then sends absolute-form requests (`GET http://books:8080/ HTTP/1.1`).
#[derive(Clone)]
struct ProxyConnector {
    inner: HttpConnector,
    proxies: Arc<Matcher>,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = Proxied;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Proxied, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = self.proxies.intercept(&dst).map(|i| i.uri().clone());
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let Some(proxy) = proxy else {
                return Ok(Proxied {
                    io: inner.call(dst).await?,
                    proxied: false,
                });
            };
            if proxy.scheme_str() != Some("http") {
                return Err(
                    format!("HTTP_PROXY {proxy}: only http:// proxies are supported").into(),
                );
            }
            let io = inner
                .call(proxy.clone())
                .await
                .map_err(|e| format!("cannot connect to the HTTP proxy {proxy}: {e}"))?;
            Ok(Proxied { io, proxied: true })
        })
    }
}

/// A client connection, straight or to a proxy.
struct Proxied {
    io: TokioIo<tokio::net::TcpStream>,
    proxied: bool,
}

impl Connection for Proxied {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Proxied {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Proxied {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// GETs `uri`; the status and body, or the error.
async fn get(
    client: &HttpClient,
    uri: &Uri,
    limit: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let (status, _, body) = get_with(client, uri, &[], limit).await?;
    Ok((status, body))
}

/// GETs `uri` with `headers`; the status, response headers and body, or the error.
async fn get_with(
    client: &HttpClient,
    uri: &Uri,
    headers: &[(http::HeaderName, http::HeaderValue)],
    limit: Duration,
) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
    let mut req = Request::get(uri.clone()).body(Full::new(Bytes::new()))?;
    for (name, value) in headers {
        req.headers_mut().append(name.clone(), value.clone());
    }
    let work = async {
        let rsp = client.request(req).await?;
        let status = rsp.status();
        let headers = rsp.headers().clone();
        let body = rsp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, headers, body))
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
            Command::Lookup(args) => lookup_cmd(args).await,
            Command::Echo(args) => echo::run(args).await,
        }
    })
}

async fn get_cmd(args: GetArgs) -> anyhow::Result<()> {
    let client = client();
    let mut failed = 0;
    for _ in 0..args.count {
        match get_with(&client, &args.url, &args.headers, args.timeout).await {
            Ok((status, headers, body)) => {
                if !(status.is_success() || args.include && status.is_redirection()) {
                    failed += 1;
                }
                if args.include {
                    for (name, value) in &headers {
                        println!("< {name}: {}", String::from_utf8_lossy(value.as_bytes()));
                    }
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

async fn lookup_cmd(args: LookupArgs) -> anyhow::Result<()> {
    let upstream = grpc::Upstream::new(args.url.clone(), &env_proxies())?;
    let mut failed = 0;
    for _ in 0..args.count {
        match upstream.lookup(&args.book, args.timeout).await {
            Ok(reply) => println!("OK {reply}"),
            Err(status) => {
                failed += 1;
                println!("{}", grpc::status_line(&status));
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} calls failed", args.count);
    Ok(())
}

/// A fault injected at run time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Fault {
    /// Added to every request's work.
    delay: Duration,
    /// Replaces --fail-rate when set.
    fail_rate: Option<f64>,
}

impl Fault {
    /// Parses `delay=50ms fail_rate=1` (separated by whitespace, `&` or `,`; `#` starts a
    /// comment line). Empty text is no fault.
    fn parse(text: &str) -> Result<Fault, String> {
        let mut fault = Fault::default();
        let words = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '&' || c == ','))
            .filter(|w| !w.is_empty());
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?} is not key=value (keys: delay, fail_rate)"))?;
            match key {
                "delay" => {
                    fault.delay = humantime::parse_duration(value)
                        .map_err(|e| format!("delay={value}: {e} (e.g. delay=50ms)"))?
                }
                "fail_rate" => {
                    let rate: f64 = value
                        .parse()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| format!("fail_rate={value}: a number from 0 to 1"))?;
                    fault.fail_rate = Some(rate);
                }
                other => return Err(format!("unknown key {other:?} (keys: delay, fail_rate)")),
            }
        }
        Ok(fault)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "delay={}", humantime::format_duration(self.delay))?;
        if let Some(rate) = self.fail_rate {
            write!(f, " fail_rate={rate}")?;
        }
        Ok(())
    }
}

/// The path of `--fault-file` with `{pod}`, `{zone}` and `{name}` filled in.
fn fault_path(template: &str, me: &Me) -> PathBuf {
    PathBuf::from(
        template
            .replace("{pod}", &me.pod)
            .replace("{zone}", &me.zone)
            .replace("{name}", &me.name),
    )
}

/// Re-reads the fault file whenever it appears, changes or goes away.
async fn watch_faults(path: PathBuf, fault: Arc<Mutex<Fault>>) {
    let mut seen: Option<Option<(u64, SystemTime)>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        if seen == Some(stamp) {
            continue;
        }
        seen = Some(stamp);
        let next = match stamp {
            None => Ok(Fault::default()),
            Some(_) => match std::fs::read_to_string(&path) {
                Ok(text) => Fault::parse(&text),
                // Gone between the two looks: the next tick sees it.
                Err(_) => continue,
            },
        };
        let mut current = fault.lock().unwrap_or_else(|e| e.into_inner());
        match next {
            Ok(next) => {
                *current = next;
                println!("fault file {}: {next}", path.display());
            }
            Err(e) => eprintln!("fault file {}: {e}; keeping {}", path.display(), *current),
        }
    }
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
    anyhow::ensure!(
        args.grpc_port != Some(args.port),
        "--grpc-port {} is --port already (every port answers gRPC; drop --grpc-port or pick another)",
        args.port
    );
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let me = Arc::new(Me {
        name: args.name.clone(),
        pod: env("WEFT_POD"),
        zone: env("WEFT_ZONE"),
    });
    // Under `weft up` in loopback mode pods share the machine's ports: listen on the
    // pod's own address only.
    let host = match std::env::var("WEFT_LISTEN_ADDR") {
        Ok(addr) if !addr.is_empty() => addr
            .parse::<std::net::IpAddr>()
            .with_context(|| format!("WEFT_LISTEN_ADDR {addr:?} is not an IP address"))?,
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    let mut listeners = Vec::new();
    for port in std::iter::once(args.port).chain(args.grpc_port) {
        let listen = std::net::SocketAddr::new(host, port);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        listeners.push(listener);
    }
    let proxies = env_proxies();
    let grpc_upstreams = args
        .grpc_upstreams
        .iter()
        .map(|uri| grpc::Upstream::new(uri.clone(), &proxies))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "{} ({}, zone {}) serving on {}{}; upstreams {:?}; gRPC upstreams {:?}; calling {:?} at {} rps",
        me.name,
        me.pod,
        me.zone,
        std::net::SocketAddr::new(host, args.port),
        args.grpc_port
            .map(|p| format!(" and {} (gRPC)", std::net::SocketAddr::new(host, p)))
            .unwrap_or_default(),
        args.upstreams
            .iter()
            .map(Uri::to_string)
            .collect::<Vec<_>>(),
        grpc_upstreams
            .iter()
            .map(|u| format!("{} via {}", u.uri(), u.via()))
            .collect::<Vec<_>>(),
        args.calls.iter().map(Uri::to_string).collect::<Vec<_>>(),
        args.rps
    );
    let client = client_via(proxies);
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
    if !args.calls.is_empty() || !args.upstreams.is_empty() || !grpc_upstreams.is_empty() {
        tokio::spawn(report(args.report, me.clone(), counters.clone()));
    }
    let fault = Arc::new(Mutex::new(Fault::default()));
    if let Some(template) = &args.fault_file {
        let path = fault_path(template, &me);
        println!("watching fault file {}", path.display());
        tokio::spawn(watch_faults(path, fault.clone()));
    }
    let work = Arc::new(Work {
        me,
        fail_rate: args.fail_rate,
        latency: args.latency,
        fault,
        counters,
    });
    let handler = Arc::new(Handler {
        authors: Arc::new(Authors(work.clone())),
        work,
        client,
        upstreams: args.upstreams,
        grpc_upstreams,
    });
    for listener in listeners {
        tokio::spawn(accept(listener, handler.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Serves HTTP/1.1 and HTTP/2 (gRPC included) on every connection `listener` accepts.
async fn accept(listener: tokio::net::TcpListener, handler: Arc<Handler>) {
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.serve(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}

/// What every request costs, HTTP or gRPC: the configured latency, the fault in force,
/// and the count.
struct Work {
    me: Arc<Me>,
    fail_rate: f64,
    latency: Duration,
    fault: Arc<Mutex<Fault>>,
    counters: Arc<Counters>,
}

impl Work {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the request, waits its latency plus the fault's delay, and says whether
    /// to fail it (by --fail-rate, or the fault's fail_rate).
    async fn run(&self) -> bool {
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        let fault = self.fault();
        let (delay, fail) = {
            let mut rng = rand::rng();
            let max = self.latency.as_micros() as u64 * 2;
            let delay = if max > 0 {
                rng.random_range(0..=max)
            } else {
                0
            };
            let fail_rate = fault.fail_rate.unwrap_or(self.fail_rate);
            (delay, rng.random_bool(fail_rate))
        };
        tokio::time::sleep(Duration::from_micros(delay) + fault.delay).await;
        fail
    }
}

/// The gRPC service: `Lookup` answers who wrote the book and who answered.
struct Authors(Arc<Work>);

impl grpc::Lookup for Authors {
    fn lookup(
        &self,
        book: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<grpc::LookupReply, tonic::Status>> + Send>,
    > {
        let work = self.0.clone();
        Box::pin(async move {
            if work.run().await {
                // UNAVAILABLE rather than INTERNAL: the failure is transient by design
                // (drawn per call), which is what UNAVAILABLE means to gRPC clients and
                // what retry policies (gRPC's own, the mesh's `unavailable`) act on;
                // INTERNAL says an invariant broke and is not worth retrying.
                return Err(tonic::Status::unavailable(format!(
                    "{} (pod {}) failed on purpose",
                    work.me.name, work.me.pod
                )));
            }
            Ok(grpc::LookupReply {
                author: grpc::author_of(&book).to_owned(),
                name: work.me.name.clone(),
                pod: work.me.pod.clone(),
                zone: work.me.zone.clone(),
            })
        })
    }
}

struct Handler {
    work: Arc<Work>,
    authors: Arc<dyn grpc::Lookup>,
    client: HttpClient,
    upstreams: Vec<Uri>,
    grpc_upstreams: Vec<grpc::Upstream>,
}

fn text_response(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(text)));
    *rsp.status_mut() = status;
    rsp
}

impl Handler {
    /// gRPC requests (by content type) go to the gRPC service, the rest to `handle`.
    async fn serve(&self, req: Request<hyper::body::Incoming>) -> Response<tonic::body::Body> {
        if grpc::is_grpc(&req) {
            return grpc::serve(self.authors.clone(), req).await;
        }
        self.handle(req).await.map(tonic::body::Body::new)
    }

    /// `GET /admin/fault` shows the fault in force; `POST` sets it from the body.
    async fn admin_fault(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() == http::Method::POST {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            match Fault::parse(&String::from_utf8_lossy(&body)) {
                Ok(fault) => {
                    *self.work.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
                    println!("fault set over HTTP: {fault}");
                }
                Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        } else if req.method() != http::Method::GET {
            return text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET or POST /admin/fault\n".into(),
            );
        }
        text_response(StatusCode::OK, format!("{}\n", self.work.fault()))
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/admin/fault" {
            return self.admin_fault(req).await;
        }
        // A mesh may carry HTTP/1 between its proxies over HTTP/2 with this header; the
        // receiving proxy takes it off. Arriving here, it means a proxy sent its HTTP/2
        // form straight to an application, which an HTTP/1-only one could not read.
        if req.headers().contains_key("l5d-orig-proto") {
            return text_response(
                StatusCode::MISDIRECTED_REQUEST,
                "l5d-orig-proto reached the application: a proxy sent HTTP/1 over HTTP/2 to it, not to its proxy\n".into(),
            );
        }
        let fail = self.work.run().await;
        let me = &self.work.me;
        let mut text = format!(
            "{} {} (pod {}, zone {})",
            me.name,
            req.uri().path(),
            me.pod,
            me.zone
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
        let book = req.uri().path().rsplit('/').next().unwrap_or_default();
        for upstream in &self.grpc_upstreams {
            match upstream.lookup(book, Duration::from_secs(5)).await {
                Ok(reply) => text.push_str(&format!(" <- [gRPC OK {reply}]")),
                Err(e) => {
                    status = StatusCode::BAD_GATEWAY;
                    text.push_str(&format!(
                        " <- [gRPC {} {}]",
                        upstream.uri(),
                        grpc::status_line(&e)
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `weft-demo-app` command README.md and docs/ show still parses.
    #[test]
    fn every_demo_app_command_the_docs_show_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let (checked, failed) = weft_test::docs::check_repo_docs(&root, "weft-demo-app", |args| {
            Cli::try_parse_from(
                std::iter::once("weft-demo-app".to_owned()).chain(args.iter().cloned()),
            )
            .map(|_| ())
            .map_err(|e| e.kind().to_string())
        });
        assert!(
            failed.is_empty(),
            "commands in the docs that do not parse:\n{}",
            failed.join("\n")
        );
        assert!(
            checked >= 3,
            "only {checked} weft-demo-app commands found in the docs"
        );
    }

    #[test]
    fn fault_text_parses_and_bad_text_says_what_is_wrong() {
        assert_eq!(Fault::parse("").unwrap(), Fault::default());
        let f = Fault::parse("# zone-a is slow\ndelay=50ms fail_rate=0.25\n").unwrap();
        assert_eq!(f.delay, Duration::from_millis(50));
        assert_eq!(f.fail_rate, Some(0.25));
        assert_eq!(f.to_string(), "delay=50ms fail_rate=0.25");
        assert_eq!(Fault::parse(&f.to_string()).unwrap(), f);
        assert_eq!(
            Fault::parse("delay=1s&fail_rate=1").unwrap(),
            Fault {
                delay: Duration::from_secs(1),
                fail_rate: Some(1.0)
            }
        );
        let err = Fault::parse("fail_rate=2").unwrap_err();
        assert!(err.contains("fail_rate=2: a number from 0 to 1"), "{err}");
        let err = Fault::parse("delay=soon").unwrap_err();
        assert!(err.contains("delay=soon"), "{err}");
        let err = Fault::parse("latency=5ms").unwrap_err();
        assert!(err.contains("unknown key \"latency\""), "{err}");
        let err = Fault::parse("slow").unwrap_err();
        assert!(err.contains("\"slow\" is not key=value"), "{err}");
    }

    /// A one-request-per-connection HTTP/1 server that answers `200 {name} {request
    /// line}`; returns its address.
    async fn recording_server(name: &'static str) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // Bounded: a test makes a handful of requests.
            for _ in 0..16 {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let line = head.lines().next().unwrap_or_default();
                let body = format!("{name} {line}");
                let rsp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(rsp.as_bytes()).await;
            }
        });
        addr
    }

    async fn body_of(client: &HttpClient, url: &str) -> String {
        let (status, body) = get(client, &url.parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn http_proxy_gets_absolute_form_requests_and_no_proxy_goes_direct() {
        let proxy = recording_server("proxy").await;
        let direct = recording_server("direct").await;
        let proxied = client_via(proxies(
            &format!("http://{proxy}"),
            "localhost, other.example",
        ));
        // Through the proxy: the whole URL in the request line, the name unresolved.
        assert_eq!(
            body_of(&proxied, "http://books.default.svc:8080/hello?x=1").await,
            "proxy GET http://books.default.svc:8080/hello?x=1 HTTP/1.1"
        );
        assert_eq!(
            body_of(&proxied, &format!("http://{direct}/ip")).await,
            format!("proxy GET http://{direct}/ip HTTP/1.1")
        );
        // NO_PROXY by exact host: straight to the server, origin-form.
        let direct_port = direct.port();
        assert_eq!(
            body_of(&proxied, &format!("http://localhost:{direct_port}/near")).await,
            "direct GET /near HTTP/1.1"
        );
        // `*` bypasses the proxy for every host.
        let none = client_via(proxies(&format!("http://{proxy}"), "example.org, *"));
        assert_eq!(
            body_of(&none, &format!("http://{direct}/all")).await,
            "direct GET /all HTTP/1.1"
        );
        // Without a proxy setting every call is direct.
        let plain = client_via(proxies("", ""));
        assert_eq!(
            body_of(&plain, &format!("http://{direct}/plain")).await,
            "direct GET /plain HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn an_unusable_proxy_setting_is_named_in_the_error() {
        let socks = client_via(proxies("socks5://127.0.0.1:1", ""));
        let err = get(
            &socks,
            &"http://books:8080/".parse().unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("only http:// proxies are supported"),
            "{err:#}"
        );
        // A proxy that is not there: the error names it.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let absent = client_via(proxies(&format!("http://{gone}"), ""));
        let err = get(
            &absent,
            &"http://books:8080/".parse().unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}")
                .contains(&format!("cannot connect to the HTTP proxy http://{gone}/")),
            "{err:#}"
        );
    }

    /// An HTTP/2-only (h2c) server answering `Lookup` with the `:authority` it was sent
    /// and `name` as the server's name; returns its address.
    async fn h2c_recorder(name: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // Bounded: a test opens a handful of connections.
            for _ in 0..16 {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        async move {
                            let answer: Arc<dyn grpc::Lookup> =
                                Arc::new(Fixed(format!("{name} saw {authority}")));
                            Ok::<_, Infallible>(grpc::serve(answer, req).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// Answers every lookup with this author.
    struct Fixed(String);

    impl grpc::Lookup for Fixed {
        fn lookup(
            &self,
            book: String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<grpc::LookupReply, tonic::Status>> + Send>,
        > {
            let author = self.0.clone();
            Box::pin(async move {
                Ok(grpc::LookupReply {
                    author,
                    name: book,
                    ..Default::default()
                })
            })
        }
    }

    #[tokio::test]
    async fn grpc_goes_to_the_http_proxy_in_h2c_with_the_upstream_as_authority() {
        let proxy = h2c_recorder("proxy").await;
        let direct = h2c_recorder("direct").await;
        let proxied = proxies(&format!("http://{proxy}"), "localhost");
        let limit = Duration::from_secs(5);
        // Through the proxy: the connection goes there, `:authority` names the upstream.
        let authors =
            grpc::Upstream::new("http://authors:9090".parse().unwrap(), &proxied).unwrap();
        assert_eq!(authors.via().to_string(), format!("http://{proxy}/"));
        let reply = authors.lookup("dune", limit).await.unwrap();
        assert_eq!(
            (reply.author.as_str(), reply.name.as_str()),
            ("proxy saw authors:9090", "dune")
        );
        // NO_PROXY: straight to the server.
        let port = direct.port();
        let near = grpc::Upstream::new(
            format!("http://localhost:{port}").parse().unwrap(),
            &proxied,
        )
        .unwrap();
        let reply = near.lookup("solaris", limit).await.unwrap();
        assert_eq!(reply.author, format!("direct saw localhost:{port}"));
        // No proxy set: straight to the server.
        let plain = grpc::Upstream::new(
            format!("http://{direct}").parse().unwrap(),
            &proxies("", ""),
        )
        .unwrap();
        assert_eq!(
            plain.lookup("x", limit).await.unwrap().author,
            format!("direct saw {direct}")
        );
    }

    #[tokio::test]
    async fn unusable_grpc_upstreams_are_refused_and_unreachable_ones_are_unavailable() {
        let none = proxies("", "");
        for (url, says) in [
            ("https://authors:9090", "expected http://HOST:PORT"),
            (
                "http://authors:9090/weft.demo.Authors/Lookup",
                "no path expected",
            ),
        ] {
            let err = grpc::Upstream::new(url.parse().unwrap(), &none)
                .err()
                .unwrap();
            assert!(format!("{err:#}").contains(says), "{url}: {err:#}");
        }
        let err = grpc::Upstream::new(
            "http://authors:9090".parse().unwrap(),
            &proxies("socks5://127.0.0.1:1", ""),
        )
        .err()
        .unwrap();
        assert!(
            format!("{err:#}").contains("only http:// proxies are supported"),
            "{err:#}"
        );
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let absent = grpc::Upstream::new(format!("http://{gone}").parse().unwrap(), &none).unwrap();
        let status = absent
            .lookup("dune", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            grpc::status_line(&status)
                .starts_with(&format!("UNAVAILABLE: cannot reach http://{gone}/: ")),
            "{}",
            grpc::status_line(&status)
        );
    }

    #[test]
    fn the_catalogue_reads_titles_loosely() {
        assert_eq!(grpc::author_of("dune"), "Frank Herbert");
        assert_eq!(grpc::author_of("The_Dispossessed"), "Ursula K. Le Guin");
        assert_eq!(grpc::author_of("the-dispossessed"), "Ursula K. Le Guin");
        assert_eq!(grpc::author_of(""), "various authors");
        assert_eq!(grpc::author_of("nothing"), "unknown");
    }

    #[test]
    fn fault_path_fills_in_pod_zone_and_name() {
        let me = Me {
            name: "books".into(),
            pod: "books-1".into(),
            zone: "zone-a".into(),
        };
        assert_eq!(
            fault_path("faults/{zone}/{name}-{pod}", &me),
            PathBuf::from("faults/zone-a/books-books-1")
        );
    }
}
