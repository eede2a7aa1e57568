//! `weft stat`: golden metrics per workload and route, from the proxies' `/metrics`
//! read twice over a window (the maths of Prometheus's `increase` and
//! `histogram_quantile`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use serde::Serialize;
use weft_core::mesh::Mesh;
use weft_core::prom::{bucket_increase, histogram_quantile, increase, Scrape};

use crate::fetch;
use crate::local::state::State;
use crate::local::sys::is_root;
use crate::local::{scrape, LocalArgs};
use crate::observe::{parse_resource, res_kind, workload_identities, ResKind, Resource};

pub mod edge;
pub mod mesh;
pub mod route;
pub mod tcp;

/// What `weft stat` shows one row of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Deploy,
    Pod,
    Svc,
    Route,
}

const KINDS: &str =
    "deploy (deployment, deployments), po (pod, pods), svc (service, services), route (routes)";

/// `KIND[/NAME]`: what to show a row per, and optionally the one resource to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    kind: Kind,
    name: Option<String>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let (kind, name) = match s.split_once('/') {
        Some((k, n)) if !n.is_empty() && !n.contains('/') => (k, Some(n.to_owned())),
        Some(_) => return Err(format!("{s:?}: expected KIND or KIND/NAME")),
        None => (s, None),
    };
    let kind = match kind {
        "route" | "routes" => Kind::Route,
        k => match res_kind(k) {
            Some(ResKind::Deploy) => Kind::Deploy,
            Some(ResKind::Pod) => Kind::Pod,
            Some(ResKind::Svc) => Kind::Svc,
            None => return Err(format!("unknown kind {k:?}; valid kinds: {KINDS}")),
        },
    };
    Ok(Target { kind, name })
}

/// `-t`: HTTP golden metrics or TCP figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Traffic {
    Http,
    Tcp,
}

#[derive(clap::Args)]
#[command(after_help = "\
Without --admin, weft stat reads the local mesh `weft up` runs (found by its state \
file: --state-dir / WEFT_STATE_DIR) and scrapes every pod's proxy:
  deploy  one row per workload: what its pods served (their inbound proxies), and the
          cross-zone share of what they sent
  po      the same per pod
  svc     one row per Service: what its callers saw (their outbound proxies: retries' \
effects and proxy errors included)
  route   one row per HTTPRoute/GRPCRoute (BACKEND *) and one per backend Service under \
it: what the callers' outbound proxies sent through the route (routes of the mesh \
directory without traffic get rows of -)
KIND/NAME shows one resource (deploy/web, po/web-0, svc/books, route/books-canary).
--from RES: what RES sends, one row per destination of KIND (deploy, po, svc).
--to RES: what RES receives, one row per source of KIND (deploy, po); RES may be a svc.
Both come from the callers' outbound proxies.
Without --window the figures are everything the proxies counted since they started, \
printed at once; with --window, the growth over that window. --watch prints the first \
frame at once (since the proxies started), then one per window (default 10s).
In namespace mode the pods' admin ports are inside network namespaces: run it as root.")]
pub struct StatArgs {
    /// What to show a row per: deploy (default; also deployment, deployments), po (pod,
    /// pods), svc (service, services) or route (routes); KIND/NAME for one resource.
    #[arg(value_parser = parse_target)]
    kind: Option<Target>,
    /// Namespace whose rows are shown.
    // No env equivalent: WEFT_NAMESPACE is the namespace `weft up` gives each pod's
    // command, and would make `weft stat --admin` run there a conflict.
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    namespace: String,
    /// Rows of every namespace (with a NAMESPACE column).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only traffic sent by this resource (deploy[/NAME], po[/NAME]): one row per
    /// destination.
    #[arg(long, value_parser = parse_resource, conflicts_with = "to")]
    from: Option<Resource>,
    /// Namespace of the --from resource [default: -n's].
    #[arg(long, requires = "from")]
    from_namespace: Option<String>,
    /// Only traffic received by this resource (deploy[/NAME], po[/NAME], svc[/NAME]):
    /// one row per source.
    #[arg(long, value_parser = parse_resource)]
    to: Option<Resource>,
    /// Namespace of the --to resource [default: -n's].
    #[arg(long, requires = "to")]
    to_namespace: Option<String>,
    /// http (golden metrics) or tcp (connections and bytes of the inbound side).
    #[arg(short = 't', long = "type", value_enum, default_value = "http")]
    traffic: Traffic,
    /// Read these proxies instead of the local mesh: admin address (host:port) of a
    /// proxy; repeat or comma-separate for several. Prints raw rows per (workload,
    /// direction, authority).
    #[arg(
        long = "admin",
        value_delimiter = ',',
        env = "WEFT_STAT_ADMIN",
        conflicts_with_all = ["kind", "all_namespaces", "namespace", "from", "to", "traffic"]
    )]
    admins: Vec<SocketAddr>,
    /// Time window the figures cover [default: since each proxy started; 10s between
    /// --watch frames].
    #[arg(long, value_parser = humantime::parse_duration)]
    window: Option<Duration>,
    /// Output format (json: an array of rows).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// Keep printing, one window after another, until interrupted (the first frame at
    /// once, from what the proxies counted since they started).
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    local: LocalArgs,
}

/// The window between --watch frames without --window.
const WATCH_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

/// Golden metrics of one (workload, direction, authority) over a window.
#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    pub deployment: String,
    pub direction: String,
    pub authority: String,
    /// Requests over the window (a count: an integer in JSON).
    pub requests: u64,
    pub rps: f64,
    /// Share of responses classified as success, 0..=1; `None` without responses.
    pub success_rate: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Share of requests received over mTLS, 0..=1.
    pub meshed: Option<f64>,
    /// Outbound: share of the requests sent to an endpoint of another zone than the
    /// proxy's, among those whose endpoint's zone is known, 0..=1; `None` inbound,
    /// without a proxy zone, or without requests to known zones.
    pub cross_zone: Option<f64>,
}

pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    if args.admins.is_empty() {
        run_local(args).await
    } else {
        run_admin(args).await
    }
}

/// `--admin`: raw rows per proxy.
async fn run_admin(args: StatArgs) -> anyhow::Result<()> {
    let mut before = scrape_all(&args.admins).await?;
    let mut scraped = Instant::now();
    let watch_window = args.window.unwrap_or(WATCH_WINDOW);
    // The first frame at once, from what each proxy counted since it started; with a
    // --window (and no --watch), the growth over that window instead.
    let mut first = args.window.is_none() || args.watch;
    loop {
        let rows: Vec<Row> = if first {
            let now = SystemTime::now();
            before
                .iter()
                .flat_map(|a| rows(&Scrape::default(), a, mesh::uptime(a, now)))
                .collect()
        } else {
            tokio::select! {
                _ = tokio::time::sleep(watch_window) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            let after = scrape_all(&args.admins).await?;
            let elapsed = scraped.elapsed();
            scraped = Instant::now();
            let rows = before
                .iter()
                .zip(&after)
                .flat_map(|(b, a)| rows(b, a, elapsed))
                .collect();
            before = after;
            rows
        };
        first = false;
        match args.output {
            Output::Table => emit(&table(&rows)),
            Output::Json => emit_json(&rows)?,
        }
        if !args.watch {
            return Ok(());
        }
    }
}

/// The local mesh: rows per workload, pod or Service, from every pod's proxy.
async fn run_local(args: StatArgs) -> anyhow::Result<()> {
    args.local.validate()?;
    let target = args.kind.clone().unwrap_or(Target {
        kind: Kind::Deploy,
        name: None,
    });
    if target.kind == Kind::Route {
        if args.traffic == Traffic::Tcp {
            bail!("weft stat route -t tcp: routes are HTTP (HTTPRoute, GRPCRoute); `weft stat deploy -t tcp` shows TCP per workload");
        }
        if let Some(r) = args.from.as_ref().or(args.to.as_ref()) {
            bail!("weft stat route --from/--to {r}: route rows are per route and backend only; `weft stat svc --from {r}` or `weft stat deploy --to {r}` show traffic between resources");
        }
    }
    if args.traffic == Traffic::Tcp {
        if target.kind == Kind::Svc {
            bail!("weft stat svc -t tcp: the proxies' tcp metrics name no Service; `weft stat deploy -t tcp` or `po -t tcp` show TCP per workload or pod");
        }
        // TCP connections name their caller by its identity (a service account, on
        // mTLS connections), not by its pod.
        if let Some(from) = args.from.as_ref().filter(|f| f.kind != ResKind::Deploy) {
            bail!("-t tcp --from {from}: TCP connections name their caller by its identity (its workload's service account), not its pod or Service; --from takes deploy[/NAME]");
        }
        if let Some(to) = &args.to {
            if to.kind == ResKind::Svc {
                bail!("-t tcp --to {to}: the proxies' tcp metrics name no Service; --to takes deploy[/NAME] or po[/NAME]");
            }
            if target.kind != Kind::Deploy {
                bail!("-t tcp --to {to}: TCP connections name their caller by its identity, not its pod: `weft stat deploy -t tcp --to {to}`");
            }
        }
    }
    let filter = match (&args.from, &args.to) {
        (Some(from), _) => {
            if from.kind == ResKind::Svc {
                bail!("--from {from}: a Service sends nothing; --from takes deploy[/NAME] or po[/NAME]");
            }
            let ns = args
                .from_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone());
            Some(edge::Filter::From(from.clone(), ns))
        }
        (None, Some(to)) => {
            if target.kind == Kind::Svc {
                bail!("weft stat svc --to {to}: rows of Services are destinations already; `weft stat deploy --to {to}` shows who sends to it");
            }
            let ns = args
                .to_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone());
            Some(edge::Filter::To(to.clone(), ns))
        }
        (None, None) => None,
    };
    let window = args.window.unwrap_or(WATCH_WINDOW);
    let mut first = args.window.is_none() || args.watch;
    let mut state = load_state(&args.local)?;
    let mut before = scrape_mesh(&state).await?;
    let mut scraped = Instant::now();
    loop {
        let frame = if first {
            mesh::Frame::since_start(&before, SystemTime::now())
        } else {
            tokio::select! {
                _ = tokio::time::sleep(window) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            // Pods may come and go between windows (a foreground `weft up` applies
            // changes): the rows are those of the mesh as it is now.
            state = load_state(&args.local)?;
            let after = scrape_mesh(&state).await?;
            // Rates over the time measured between the scrapes, not the nominal window.
            let elapsed = scraped.elapsed();
            scraped = Instant::now();
            let frame = mesh::Frame::between(&before, &after, elapsed);
            before = after;
            frame
        };
        let silent = silent_pods(&state, &before);
        if silent > 0 {
            eprintln!(
                "warning: {silent} of {} pods' proxies did not answer (see weft up's logs in {})",
                state.pods.len(),
                args.local.state_dir().join("logs").display()
            );
        }
        let view = View {
            args: &args,
            target: &target,
            filter: filter.as_ref(),
            first,
        };
        view.print(&state, &frame)?;
        first = false;
        if !args.watch {
            return Ok(());
        }
    }
}

/// One frame's rows, as the arguments ask.
struct View<'a> {
    args: &'a StatArgs,
    target: &'a Target,
    filter: Option<&'a edge::Filter>,
    /// The figures run since each proxy started (no window yet).
    first: bool,
}

impl View<'_> {
    /// `KIND/NAME` without a row (and without --from/--to, where no traffic means no
    /// row): there is no such resource, which a script must not take for "no traffic".
    fn named_one_exists(&self, empty: bool, scope: &str) -> anyhow::Result<()> {
        match &self.target.name {
            Some(name) if empty && self.filter.is_none() => {
                let (kind, short) = match self.target.kind {
                    Kind::Deploy => ("deployment", "deploy"),
                    Kind::Pod => ("pod", "po"),
                    Kind::Route => ("route", "route"),
                    _ => ("service", "svc"),
                };
                bail!("no {kind} {name:?} {scope} (`weft stat {short}` lists them)")
            }
            _ => Ok(()),
        }
    }

    fn print(&self, state: &State, frame: &mesh::Frame) -> anyhow::Result<()> {
        let args = self.args;
        let mesh = Mesh::load(&state.mesh_dir).ok();
        let workloads: BTreeSet<(String, String)> = mesh
            .iter()
            .flat_map(|m| &m.workloads)
            .map(|w| (w.namespace.clone(), w.name.clone()))
            .collect();
        let keep = |namespace: &str, name: &str| {
            (args.all_namespaces || namespace == args.namespace)
                && self.target.name.as_deref().is_none_or(|n| n == name)
        };
        let what = match self.target.kind {
            Kind::Deploy => "deployments",
            Kind::Pod => "pods",
            _ => "services",
        };
        let mut scope = scope(args.all_namespaces, &args.namespace);
        if let Some(f) = self.filter {
            scope = match f {
                edge::Filter::From(r, _) => format!("{scope} with traffic from {r}"),
                edge::Filter::To(r, _) => format!("{scope} with traffic to {r}"),
            };
        }
        if self.first && args.output == Output::Table && args.watch {
            emit("(since each proxy started)\n");
        }
        if self.target.kind == Kind::Route {
            let known = route::known_routes(&state.mesh_dir);
            let rows: Vec<route::RouteRow> = route::route_rows(&known, &state.pods, frame)
                .into_iter()
                .filter(|r| keep(&r.namespace, &r.name))
                .collect();
            self.named_one_exists(rows.is_empty(), &scope)?;
            return match args.output {
                Output::Table => {
                    emit(&route::table(&rows, args.all_namespaces, &scope));
                    Ok(())
                }
                Output::Json => emit_json(&rows),
            };
        }
        if args.traffic == Traffic::Tcp {
            let per_pod = self.target.kind == Kind::Pod;
            let rows = match self.filter {
                None => tcp::tcp_rows(&workloads, &state.pods, frame, per_pod),
                Some(f) => {
                    let kind = if per_pod {
                        ResKind::Pod
                    } else {
                        ResKind::Deploy
                    };
                    let identities = workload_identities(mesh.as_ref());
                    tcp::tcp_edge_rows(kind, f, &state.pods, &identities, frame)
                }
            };
            let rows: Vec<tcp::TcpRow> = rows
                .into_iter()
                .filter(|r| keep(&r.namespace, &r.name))
                .collect();
            self.named_one_exists(rows.is_empty(), &scope)?;
            return match args.output {
                Output::Table => {
                    emit(&tcp::table(&rows, args.all_namespaces, &scope));
                    Ok(())
                }
                Output::Json => emit_json(&rows),
            };
        }
        let kind = match self.target.kind {
            Kind::Pod => ResKind::Pod,
            Kind::Svc => ResKind::Svc,
            _ => ResKind::Deploy,
        };
        let rows = match (self.filter, kind) {
            (Some(f), kind) => edge::edge_rows(kind, f, &state.pods, &state.services, frame),
            (None, ResKind::Deploy) => mesh::deploy_frame_rows(&workloads, &state.pods, frame),
            (None, ResKind::Pod) => mesh::pod_rows(&state.pods, frame),
            (None, ResKind::Svc) => {
                let services = mesh
                    .iter()
                    .flat_map(|m| &m.services)
                    .map(|s| (s.namespace.clone(), s.name.clone()))
                    .chain(
                        state
                            .services
                            .iter()
                            .map(|v| (v.namespace.clone(), v.name.clone())),
                    )
                    .collect();
                mesh::svc_rows(&services, &state.pods, &state.services, frame)
            }
        };
        let rows: Vec<mesh::MeshRow> = rows
            .into_iter()
            .filter(|r| keep(&r.namespace, &r.name))
            .collect();
        self.named_one_exists(rows.is_empty(), &scope)?;
        match args.output {
            Output::Table => emit(&mesh::table(
                &rows,
                args.all_namespaces,
                false,
                what,
                &scope,
            )),
            Output::Json => emit_json(&rows)?,
        }
        Ok(())
    }
}

/// The running local mesh's state, or why there is none to read.
pub(crate) fn load_state(local: &LocalArgs) -> anyhow::Result<State> {
    mesh_state(local, "start one with `weft up`, or pass --admin")
}

/// [`load_state`] with `hint` after "no local mesh is up" (commands without --admin).
pub(crate) fn mesh_state(local: &LocalArgs, hint: &str) -> anyhow::Result<State> {
    let state = local.running_mesh(hint)?;
    if !state.loopback && !is_root() {
        bail!(
            "reading pods' metrics needs root (their admin ports are inside network \
namespaces): run weft stat as root, or pass --admin from inside the hub namespace"
        );
    }
    Ok(state)
}

/// Every pod's scrape, parsed, by pod key.
pub(crate) async fn scrape_mesh(state: &State) -> anyhow::Result<HashMap<String, Scrape>> {
    let texts = scrape::pod_metrics(scrape::admin_netns(state), &state.pods)
        .await
        .context("cannot read the pods' metrics")?;
    Ok(texts
        .into_iter()
        .map(|(k, t)| (k, Scrape::parse(&t)))
        .collect())
}

async fn scrape_all(admins: &[SocketAddr]) -> anyhow::Result<Vec<Scrape>> {
    let mut scrapes = Vec::with_capacity(admins.len());
    for admin in admins {
        scrapes.push(Scrape::parse(&fetch::get(*admin, "/metrics").await?));
    }
    Ok(scrapes)
}

/// Rows for every route seen in `after`.
/// Events per second over `elapsed`: the time actually measured between the two
/// scrapes, never the nominal window (a `--window 0s` still takes the scrapes' time).
pub fn rate(count: f64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count / elapsed.as_secs_f64()
    }
}

pub fn rows(before: &Scrape, after: &Scrape, window: Duration) -> Vec<Row> {
    let keys: BTreeSet<(String, String, String)> = after
        .matching("request_total", &[])
        .map(|s| {
            (
                s.label("deployment").to_owned(),
                s.label("direction").to_owned(),
                s.label("authority").to_owned(),
            )
        })
        .collect();
    keys.into_iter()
        .map(|(deployment, direction, authority)| {
            let labels = [
                ("deployment", deployment.as_str()),
                ("direction", direction.as_str()),
                ("authority", authority.as_str()),
            ];
            let delta = |name: &str, extra: &[(&str, &str)]| {
                let mut l = labels.to_vec();
                l.extend_from_slice(extra);
                increase(before.sum(name, &l), after.sum(name, &l))
            };
            let requests = delta("request_total", &[]);
            let ok = delta("response_total", &[("classification", "success")]);
            let failed = delta("response_total", &[("classification", "failure")]);
            let tls = delta("request_total", &[("tls", "true")]);
            let buckets = bucket_increase(
                &before.buckets("response_latency_ms", &labels),
                &after.buckets("response_latency_ms", &labels),
            );
            let responses = ok + failed;
            let cross_zone = if direction == "outbound" {
                cross_zone_share(before, after, &labels)
            } else {
                None
            };
            Row {
                requests: requests.round().max(0.0) as u64,
                rps: rate(requests, window),
                success_rate: (responses > 0.0).then(|| ok / responses),
                latency_ms_p50: histogram_quantile(0.5, &buckets),
                latency_ms_p95: histogram_quantile(0.95, &buckets),
                latency_ms_p99: histogram_quantile(0.99, &buckets),
                meshed: (requests > 0.0).then(|| tls / requests),
                cross_zone,
                deployment,
                direction,
                authority,
            }
        })
        .collect()
}

/// Requests with `labels` whose `dst_zone` differs from the proxy's `zone`, as a share
/// of those with a known `dst_zone`, over the window.
fn cross_zone_share(before: &Scrape, after: &Scrape, labels: &[(&str, &str)]) -> Option<f64> {
    let (known, cross) = cross_zone_counts(before, after, labels);
    (known > 0.0).then(|| cross / known)
}

/// Requests with `labels` over the window whose endpoint's zone is known, and those
/// of them whose endpoint is in another zone than the proxy's.
fn cross_zone_counts(before: &Scrape, after: &Scrape, labels: &[(&str, &str)]) -> (f64, f64) {
    // (proxy zone, endpoint zone) pairs seen; the proxy's zone is a constant label.
    let pairs: BTreeSet<(String, String)> = after
        .matching("request_total", labels)
        .map(|s| (s.label("zone").to_owned(), s.label("dst_zone").to_owned()))
        .filter(|(zone, dst)| !zone.is_empty() && !dst.is_empty())
        .collect();
    let (mut known, mut cross) = (0.0, 0.0);
    for (zone, dst) in &pairs {
        let mut l = labels.to_vec();
        l.extend_from_slice(&[("zone", zone.as_str()), ("dst_zone", dst.as_str())]);
        let n = increase(
            before.sum("request_total", &l),
            after.sum("request_total", &l),
        );
        known += n;
        if zone != dst {
            cross += n;
        }
    }
    (known, cross)
}

/// A fixed-width table of rows.
pub fn table(rows: &[Row]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}ms"));
    let mut out = format!(
        "{:<16} {:<9} {:<32} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}\n",
        "WORKLOAD",
        "DIRECTION",
        "AUTHORITY",
        "SUCCESS",
        "RPS",
        "P50",
        "P95",
        "P99",
        "MESHED",
        "XZONE"
    );
    for r in rows {
        let workload = if r.deployment.is_empty() {
            "-"
        } else {
            &r.deployment
        };
        out.push_str(&format!(
            "{:<16} {:<9} {:<32} {:>9} {:>8.1} {:>8} {:>8} {:>8} {:>7} {:>7}\n",
            workload,
            r.direction,
            r.authority,
            pct(r.success_rate),
            r.rps,
            ms(r.latency_ms_p50),
            ms(r.latency_ms_p95),
            ms(r.latency_ms_p99),
            pct(r.meshed),
            pct(r.cross_zone),
        ));
    }
    if rows.is_empty() {
        out.push_str("(no HTTP traffic seen yet)\n");
    }
    out
}

/// Writes `text` to stdout. A reader that went away (`weft stat | head`) ends the
/// command quietly, as it would for any Unix filter, instead of a panic from `print!`.
/// Prints `value` as pretty JSON, with a final newline.
pub(crate) fn emit_json(value: &impl Serialize) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?));
    Ok(())
}

/// "in the mesh" (`-A`) or "in namespace NS": what a table's empty line speaks of.
pub(crate) fn scope(all_namespaces: bool, namespace: &str) -> String {
    if all_namespaces {
        "in the mesh".to_owned()
    } else {
        format!("in namespace {namespace}")
    }
}

/// How many of the mesh's pods have no scrape in `scrapes` (their proxies did not
/// answer).
pub(crate) fn silent_pods(state: &State, scrapes: &HashMap<String, Scrape>) -> usize {
    state
        .pods
        .iter()
        .filter(|p| !scrapes.contains_key(&p.netns))
        .count()
}

pub(crate) fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("weft stat: cannot write the output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_divide_by_the_time_measured_never_by_zero() {
        assert_eq!(rate(30.0, Duration::from_millis(1500)), 20.0);
        // `--window 0s`: the scrapes' own time is measured; nothing at all is 0/s,
        // never 30 / 1 ns.
        assert_eq!(rate(30.0, Duration::ZERO), 0.0);
        assert!(rate(30.0, Duration::from_millis(3)) < 1e5);
    }

    #[test]
    fn rows_use_increases_over_the_window() {
        let before = Scrape::parse(concat!(
            "request_total{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",tls=\"no_identity\"} 10\n",
            "response_total{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",classification=\"success\",status_code=\"200\"} 10\n",
            "response_latency_ms_bucket{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",le=\"10.0\"} 10\n",
            "response_latency_ms_bucket{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",le=\"100.0\"} 10\n",
            "response_latency_ms_bucket{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",le=\"+Inf\"} 10\n",
        ));
        let after = Scrape::parse(concat!(
            "request_total{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",tls=\"no_identity\"} 30\n",
            "response_total{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",classification=\"success\",status_code=\"200\"} 25\n",
            "response_total{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",classification=\"failure\",status_code=\"500\"} 5\n",
            "response_latency_ms_bucket{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",le=\"10.0\"} 20\n",
            "response_latency_ms_bucket{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",le=\"100.0\"} 30\n",
            "response_latency_ms_bucket{deployment=\"web\",direction=\"outbound\",authority=\"books:80\",le=\"+Inf\"} 30\n",
        ));
        let rows = rows(&before, &after, Duration::from_secs(10));
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.requests, 20);
        assert_eq!(r.rps, 2.0);
        assert_eq!(r.success_rate, Some(0.75));
        // 10 new observations under 10 ms, 10 between 10 and 100 ms.
        assert_eq!(r.latency_ms_p50, Some(10.0));
        assert!((r.latency_ms_p99.unwrap() - 98.2).abs() < 1e-9);
        assert_eq!(r.meshed, Some(0.0));
        assert!(table(&rows).contains("75.00%"));
    }

    #[test]
    fn cross_zone_share_from_a_captured_proxy() {
        // Two scrapes of a zone-a proxy (zone-mode unaware) sending to books in zones
        // a (2 endpoints), b and c; between them 39 requests to a, 19 to b, 2 to c.
        let before = Scrape::parse(include_str!("../testdata/zones-before.prom"));
        let after = Scrape::parse(include_str!("../testdata/zones-after.prom"));
        let rows = rows(&before, &after, Duration::from_secs(10));
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.deployment.as_str(), r.direction.as_str()),
            ("web", "outbound")
        );
        assert_eq!(r.requests, 60);
        assert_eq!(r.success_rate, Some(59.0 / 60.0));
        assert_eq!(r.cross_zone, Some(21.0 / 60.0));
        assert!(table(&rows).contains("35.00%"), "{}", table(&rows));
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["cross_zone"], serde_json::json!(0.35));
    }

    #[test]
    fn cross_zone_needs_zones_and_is_outbound_only() {
        let line = |direction: &str, zone: &str, dst: &str, n: u32| {
            format!("request_total{{deployment=\"web\",zone=\"{zone}\",direction=\"{direction}\",authority=\"books:80\",dst_zone=\"{dst}\"}} {n}\n")
        };
        let before = Scrape::parse("");
        let after = Scrape::parse(&format!(
            "{}{}{}",
            line("inbound", "zone-a", "", 7),
            line("outbound", "zone-a", "zone-a", 3),
            line("outbound", "zone-a", "", 5),
        ));
        let rows = rows(&before, &after, Duration::from_secs(1));
        let inbound = rows.iter().find(|r| r.direction == "inbound").unwrap();
        assert_eq!(inbound.cross_zone, None);
        // Requests to endpoints of unknown zone do not count either way.
        let outbound = rows.iter().find(|r| r.direction == "outbound").unwrap();
        assert_eq!(outbound.cross_zone, Some(0.0));
        // A proxy without a zone: no share.
        let after = Scrape::parse(&line("outbound", "", "zone-b", 4));
        assert_eq!(rows_of(&after)[0].cross_zone, None);
    }

    fn rows_of(after: &Scrape) -> Vec<Row> {
        rows(&Scrape::parse(""), after, Duration::from_secs(1))
    }
}
