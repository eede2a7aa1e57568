//! Static discovery: a YAML file naming services and their endpoints. Used before the
//! controller's destination service is available and for non-root (explicit) runs.
//!
//! ```yaml
//! services:
//!   - name: books
//!     authorities: ["books.default.svc:8080", "books:8080"]  # HTTP authorities (explicit mode)
//!     address: 198.18.0.10:8080                              # service address (transparent mode)
//!     listen: 127.0.0.1:15001                                # local port for this service (explicit mode)
//!     opaque: false                                          # skip protocol detection
//!     identity: books.default.serviceaccount.identity.weft.cluster.local  # meshed: use mTLS
//!     endpoints:                                             # an address, or address + zone + weight (+ identity); [] while none is ready
//!       - "127.0.0.1:9001"
//!       - {addr: "127.0.0.1:9002", zone: zone-b, weight: 2}
//!     timeout: 2s                                            # whole-request deadline (over --request-timeout)
//!     retries: {limit: 2, on: ["5xx"], timeout: 500ms}       # over the --retry-* flags (crate::retry)
//! ```
//!
//! A service's `identity` is every endpoint's unless the endpoint names its own; an
//! endpoint with an identity is reached over mTLS.
//!
//! A file loaded with [`ServiceIndex::load`] can be watched ([`ServiceIndex::watch`]:
//! inotify events on its directory, polling where inotify cannot be used): when it
//! changes, it is parsed again and the index swapped whole; a file that does not parse
//! is logged and the last good index keeps serving. A service that keeps its name,
//! addresses, identity and protocol keeps its object and only its endpoints change, so
//! connections already open (HTTP keep-alive) balance over the new endpoints too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use weft_core::identity::Identity;
use weft_core::watch::{Changes, FileFilter, WatchOptions};

use crate::balance::{BalanceConfig, Balancer, EndpointMeta, Picked};
use crate::retry::{PolicyOverrides, RetrySpec, ServicePolicy};

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("cannot read endpoints file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("endpoints file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("endpoints file {path}: service #{index} ({name:?}): {problem}")]
    Invalid {
        path: PathBuf,
        index: usize,
        name: String,
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    #[serde(default)]
    authorities: Vec<String>,
    address: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    opaque: bool,
    identity: Option<String>,
    endpoints: Vec<EndpointSpec>,
    /// Deadline of a whole request (`2s`; `0s`: none), over --request-timeout.
    timeout: Option<String>,
    /// How requests are retried, over the --retry-* flags.
    retries: Option<RetrySpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum EndpointSpec {
    Addr(String),
    Detailed(DetailedEndpoint),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailedEndpoint {
    addr: SocketAddr,
    zone: Option<String>,
    #[serde(default = "one")]
    weight: u32,
    identity: Option<String>,
}

fn one() -> u32 {
    1
}

impl EndpointSpec {
    /// The endpoint, with the service's identity unless it names its own.
    fn meta(&self, service_identity: &Option<Identity>) -> Result<EndpointMeta, String> {
        match self {
            EndpointSpec::Addr(addr) => addr
                .parse()
                .map(|addr| EndpointMeta {
                    identity: service_identity.clone(),
                    ..EndpointMeta::new(addr)
                })
                .map_err(|e| format!("endpoint {addr:?} is not an ip:port address ({e})")),
            EndpointSpec::Detailed(d) => Ok(EndpointMeta {
                addr: d.addr,
                zone: d.zone.as_deref().map(Into::into),
                weight: d.weight,
                identity: match &d.identity {
                    Some(name) => Some(
                        name.parse::<Identity>()
                            .map_err(|e| format!("endpoint {}: identity: {e}", d.addr))?,
                    ),
                    None => service_identity.clone(),
                },
            }),
        }
    }
}

/// A destination service and the endpoints that serve it.
#[derive(Debug)]
pub struct Service {
    /// Its name in metrics (`dst_service`): a service discovery first knows without
    /// endpoints has none until the first `Add` says it ([`Service::rename`]).
    name: RwLock<Arc<str>>,
    pub address: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    /// Forwarded as TCP without protocol detection (discovery may change it).
    opaque: AtomicBool,
    /// Its endpoints (each with its zone, weight and identity), replaced when discovery
    /// says so; the balancer stays, with what it learnt of the endpoints that remain.
    balancer: Balancer,
    /// Its timeouts and retries, and its retry budget.
    pub policy: ServicePolicy,
    /// Requests waiting for an endpoint to pick (see [`Service::pick_or_wait`]).
    availability: Availability,
    /// Its routes, from the controller's `OutboundPolicies` (`None`: none served).
    routes: RwLock<Option<Arc<crate::routes::Routes>>>,
}

/// A service with no endpoint to pick (discovery has not answered with one yet, or the
/// last went) makes requests wait, as Linkerd's failfast does: up to the failfast
/// timeout from the moment a pick first failed, then every request fails at once until
/// an endpoint comes. So a caller that starts a moment before its callee is published
/// waits instead of failing, and a service that stays empty answers 503 without delay.
#[derive(Debug, Default)]
struct Availability {
    /// Woken when endpoints arrive.
    arrived: tokio::sync::Notify,
    /// Whether a pick failed since the last one that succeeded: the hot path reads only
    /// this.
    failing: AtomicBool,
    /// When picks started failing.
    since: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Availability {
    fn since(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn picked(&self) {
        if self.failing.load(Ordering::Relaxed) {
            self.failing.store(false, Ordering::Relaxed);
            *self.since() = None;
        }
    }
}

impl Service {
    pub fn new(name: &str, endpoints: Vec<SocketAddr>) -> Self {
        Service::build(
            name,
            None,
            None,
            false,
            Balancer::new(
                Arc::default(),
                endpoints.into_iter().map(EndpointMeta::new).collect(),
            ),
            ServicePolicy::default(),
        )
    }

    fn build(
        name: &str,
        address: Option<SocketAddr>,
        listen: Option<SocketAddr>,
        opaque: bool,
        balancer: Balancer,
        policy: ServicePolicy,
    ) -> Self {
        Service {
            name: RwLock::new(name.into()),
            address,
            listen,
            opaque: AtomicBool::new(opaque),
            balancer,
            policy,
            availability: Availability::default(),
            routes: RwLock::new(None),
        }
    }

    /// A service whose endpoints discovery provides later ([`Service::set_endpoints`]).
    pub fn discovered(
        name: &str,
        address: Option<SocketAddr>,
        balance: Arc<BalanceConfig>,
    ) -> Self {
        Service::build(
            name,
            address,
            None,
            false,
            Balancer::new(balance, Vec::new()),
            ServicePolicy::default(),
        )
    }

    /// Whether connections to it skip protocol detection (opaque TCP).
    pub fn name(&self) -> Arc<str> {
        self.name.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names a service that had no name (or another) while it had no endpoints:
    /// connections that met it then hold this object, so it is named in place.
    /// Its current routes, if the controller serves any.
    pub fn routes(&self) -> Option<Arc<crate::routes::Routes>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces its routes (requests already on their way keep the ones they took).
    pub fn set_routes(&self, routes: Option<Arc<crate::routes::Routes>>) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
    }

    pub fn rename(&self, name: &str) {
        *self.name.write().unwrap_or_else(|e| e.into_inner()) = name.into();
    }

    pub fn is_opaque(&self) -> bool {
        self.opaque.load(Ordering::Relaxed)
    }

    pub fn set_opaque(&self, opaque: bool) {
        self.opaque.store(opaque, Ordering::Relaxed);
    }

    /// Picks the endpoint for the next request (HTTP) or connection (TCP); report how
    /// it went on the returned [`Picked`].
    pub fn pick(&self) -> Option<Picked> {
        let picked = self.balancer.pick();
        if picked.is_some() {
            self.availability.picked();
        }
        picked
    }

    /// Picks as [`Service::pick`] does; when there is nothing to pick, waits for
    /// endpoints to arrive, at most until `failfast` after picks started failing
    /// ([`Availability`]).
    pub async fn pick_or_wait(&self, failfast: Duration) -> Option<Picked> {
        let availability = &self.availability;
        loop {
            // Registered before the pick, so endpoints arriving in between wake it.
            let arrived = availability.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(picked) = self.pick() {
                return Some(picked);
            }
            let now = tokio::time::Instant::now();
            let since = *availability.since().get_or_insert(now);
            availability.failing.store(true, Ordering::Relaxed);
            let deadline = since + failfast;
            if now >= deadline {
                return None;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.pick();
            }
        }
    }

    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.balancer
            .endpoints()
            .into_iter()
            .map(|e| e.addr)
            .collect()
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Replaces the endpoints; those that stay keep what the balancer learnt of them.
    pub fn set_endpoints(&self, endpoints: Vec<EndpointMeta>) {
        let some = !endpoints.is_empty();
        self.balancer.set_endpoints(endpoints);
        if some {
            self.availability.arrived.notify_waiters();
        }
    }

    /// Whether `spec` describes this service with (at most) other endpoints.
    fn same_as(&self, spec: &ServiceSpec, policy: &PolicyOverrides) -> bool {
        *self.name() == *spec.name
            && self.address == spec.address
            && self.listen == spec.listen
            && self.is_opaque() == spec.opaque
            && self.policy.overrides() == policy
    }
}

/// Services indexed by the ways a connection or request can name them. Cloning gives
/// another handle to the same index; [`ServiceIndex::reload`] swaps what every handle
/// sees.
#[derive(Clone, Debug, Default)]
pub struct ServiceIndex {
    current: Arc<RwLock<Arc<Tables>>>,
    /// The file the index was loaded from (what `reload` and `watch` read), and its
    /// stamp from before that read.
    source: Option<(PathBuf, Stamp)>,
    /// How every service's balancer behaves (the proxy's zone, the zone band, ...).
    balance: Arc<BalanceConfig>,
    /// Services the destination service provides (listed for metrics only: they are
    /// found through [`crate::destination::Destinations`]).
    discovered: Arc<RwLock<Vec<Arc<Service>>>>,
}

/// What tells that a file changed: modification time, size and inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
            m.ino(),
        )
    })
}

#[derive(Clone, Debug, Default)]
struct Tables {
    by_authority: HashMap<String, Arc<Service>>,
    by_address: HashMap<SocketAddr, Arc<Service>>,
    listeners: Vec<Arc<Service>>,
}

/// A service whose endpoints a reload changes in place.
type Update = (Arc<Service>, Vec<EndpointMeta>);

impl ServiceIndex {
    pub fn load(path: &Path) -> Result<Self, EndpointsError> {
        Self::load_with(path, Arc::default())
    }

    /// Loads `path`, balancing as `balance` says.
    pub fn load_with(path: &Path, balance: Arc<BalanceConfig>) -> Result<Self, EndpointsError> {
        let before = stamp(path);
        let mut index = Self::parse_with(path, &read(path)?, balance)?;
        index.source = Some((path.to_owned(), before));
        Ok(index)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, EndpointsError> {
        Self::parse_with(path, text, Arc::default())
    }

    pub fn parse_with(
        path: &Path,
        text: &str,
        balance: Arc<BalanceConfig>,
    ) -> Result<Self, EndpointsError> {
        let (tables, _) = parse_tables(path, text, None, &balance)?;
        Ok(ServiceIndex {
            current: Arc::new(RwLock::new(Arc::new(tables))),
            source: None,
            balance,
            discovered: Arc::default(),
        })
    }

    /// Lists a service the destination service provides (for metrics).
    pub fn add_discovered(&self, service: Arc<Service>) {
        self.discovered
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(service);
    }

    pub fn remove_discovered(&self, service: &Arc<Service>) {
        self.discovered
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, service));
    }

    /// Every service, from the file and discovered (for metrics).
    pub fn services(&self) -> Vec<Arc<Service>> {
        let tables = self.tables();
        let discovered = self
            .discovered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut all: Vec<Arc<Service>> = Vec::new();
        for s in tables
            .by_authority
            .values()
            .chain(tables.by_address.values())
            .chain(&tables.listeners)
            .chain(&discovered)
        {
            if !all.iter().any(|known| Arc::ptr_eq(known, s)) {
                all.push(s.clone());
            }
        }
        all
    }

    fn tables(&self) -> Arc<Tables> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the source file again and swaps the index; on an error the index is left
    /// as it was.
    pub fn reload(&self) -> Result<(), EndpointsError> {
        let Some((path, _)) = &self.source else {
            return Ok(());
        };
        self.apply(path, &read(path)?)
    }

    /// Swaps the index for what `text` (the source file's content) says.
    fn apply(&self, path: &Path, text: &str) -> Result<(), EndpointsError> {
        let previous = self.tables();
        let (tables, updates) = parse_tables(path, text, Some(&previous), &self.balance)?;
        for (service, endpoints) in updates {
            service.set_endpoints(endpoints);
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tables);
        Ok(())
    }

    /// Reloads the source file when it changes (its mtime, size or inode), logging the
    /// outcome; `every` is how often the file is polled when inotify cannot watch its
    /// directory (see [`weft_core::watch`]). Runs until dropped; returns at once for an
    /// index that was not loaded from a file.
    pub async fn watch(self, every: Duration) {
        self.watch_with(WatchOptions::polling_every(every)).await
    }

    /// [`ServiceIndex::watch`] with every setting of the watch given. The file system is
    /// read on the blocking pool, never on the runtime's worker threads.
    pub async fn watch_with(self, options: WatchOptions) {
        let Some((path, mut last)) = self.source.clone() else {
            return;
        };
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => {
                (dir.to_owned(), name.to_owned())
            }
            (_, Some(name)) => (PathBuf::from("."), name.to_owned()),
            // Not a file's path: loading it would have failed.
            (_, None) => return,
        };
        let filter: FileFilter = Arc::new(move |p: &Path| p.file_name() == Some(&*name));
        let set_up = tokio::task::spawn_blocking(move || {
            Changes::watch("endpoints file", &[dir], filter, options)
        });
        // Not set up: the runtime is shutting down.
        let Ok(mut changes) = set_up.await else {
            return;
        };
        loop {
            changes.next().await;
            let read_path = path.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let now = stamp(&read_path);
                // Read again only when it changed.
                let text = (now != last).then(|| read(&read_path));
                (now, text)
            })
            .await;
            // Unchanged, or not polled (the runtime is shutting down).
            let Ok((now, Some(text))) = polled else {
                continue;
            };
            last = now;
            match text.and_then(|text| self.apply(&path, &text)) {
                Ok(_) => tracing::info!(path = %path.display(), "endpoints file reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "endpoints file not reloaded; the last good one stays in use")
                }
            }
        }
    }

    /// Adds a service; later entries replace earlier ones with the same names.
    pub fn insert(&mut self, authorities: &[&str], service: Service) {
        let service = Arc::new(service);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let tables = Arc::make_mut(&mut current);
        for a in authorities {
            tables
                .by_authority
                .insert(normalize_authority(a), service.clone());
        }
        if let Some(address) = service.address {
            tables.by_address.insert(address, service.clone());
        }
        if service.listen.is_some() {
            tables.listeners.push(service);
        }
    }

    pub fn by_authority(&self, authority: &str) -> Option<Arc<Service>> {
        let tables = self.tables();
        let by_authority = &tables.by_authority;
        by_authority
            .get(authority)
            .or_else(|| {
                // Requests often omit the default port.
                let lower = authority.to_ascii_lowercase();
                by_authority
                    .get(&lower)
                    .or_else(|| by_authority.get(&format!("{lower}:80")))
            })
            .cloned()
    }

    pub fn by_address(&self, address: SocketAddr) -> Option<Arc<Service>> {
        self.tables().by_address.get(&address).cloned()
    }

    /// Services that want a listener of their own (explicit mode).
    pub fn listeners(&self) -> Vec<Arc<Service>> {
        self.tables().listeners.clone()
    }
}

fn read(path: &Path) -> Result<String, EndpointsError> {
    std::fs::read_to_string(path).map_err(|source| EndpointsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses an endpoints file. With `previous`, services that are unchanged but for
/// their endpoints keep their object; their new endpoints come back as updates, to
/// apply once the whole file is known to be good.
fn parse_tables(
    path: &Path,
    text: &str,
    previous: Option<&Tables>,
    balance: &Arc<BalanceConfig>,
) -> Result<(Tables, Vec<Update>), EndpointsError> {
    let file: EndpointsFile =
        serde_yaml_ng::from_str(text).map_err(|source| EndpointsError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let mut index = Tables::default();
    let mut updates = Vec::new();
    for (i, spec) in file.services.into_iter().enumerate() {
        let invalid = |problem: String| EndpointsError::Invalid {
            path: path.to_owned(),
            index: i,
            name: spec.name.clone(),
            problem,
        };
        if spec.name.is_empty() {
            return Err(invalid("`name` is empty".into()));
        }
        let identity = match &spec.identity {
            Some(name) => Some(
                name.parse::<Identity>()
                    .map_err(|e| invalid(format!("identity: {e}")))?,
            ),
            None => None,
        };
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| e.meta(&identity))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let policy = PolicyOverrides::parse(spec.timeout.as_deref(), spec.retries.as_ref())
            .map_err(invalid)?;
        let reusable = previous.and_then(|p| {
            let old = match (spec.address, spec.listen) {
                (Some(a), _) => p.by_address.get(&a),
                (None, Some(l)) => p.listeners.iter().find(|s| s.listen == Some(l)),
                (None, None) => spec
                    .authorities
                    .first()
                    .and_then(|a| p.by_authority.get(&normalize_authority(a))),
            }?;
            old.same_as(&spec, &policy).then(|| old.clone())
        });
        let service = match reusable {
            Some(old) => {
                updates.push((old.clone(), endpoints));
                old
            }
            None => Arc::new(Service::build(
                &spec.name,
                spec.address,
                spec.listen,
                spec.opaque,
                Balancer::new(balance.clone(), endpoints),
                ServicePolicy::new(policy),
            )),
        };
        for authority in &spec.authorities {
            let key = normalize_authority(authority);
            if key.is_empty() || key.contains('/') {
                return Err(invalid(format!(
                    "authority {authority:?} is not host[:port]"
                )));
            }
            if index.by_authority.insert(key, service.clone()).is_some() {
                return Err(invalid(format!(
                    "authority {authority:?} is already used by another service"
                )));
            }
        }
        if let Some(address) = spec.address {
            if index.by_address.insert(address, service.clone()).is_some() {
                return Err(invalid(format!(
                    "address {address} is already used by another service"
                )));
            }
        }
        if let Some(listen) = spec.listen {
            if index.listeners.iter().any(|s| s.listen == Some(listen)) {
                return Err(invalid(format!(
                    "listen address {listen} is already used by another service"
                )));
            }
            index.listeners.push(service.clone());
        }
    }
    Ok((index, updates))
}

fn normalize_authority(authority: &str) -> String {
    authority.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinHandle;

    #[tokio::test(start_paused = true)]
    async fn requests_wait_for_a_services_first_endpoints_then_fail_fast_until_one_comes() {
        let failfast = Duration::from_secs(3);
        let service = Arc::new(Service::discovered("books", None, Arc::default()));
        let endpoint: SocketAddr = ([198, 18, 0, 7], 4143).into();

        // Endpoints arriving within the failfast timeout reach the waiting request.
        let waiting = tokio::spawn({
            let service = service.clone();
            async move { service.pick_or_wait(failfast).await.map(|p| p.addr()) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiting.is_finished(),
            "a request waits for the first endpoints"
        );
        service.set_endpoints(vec![EndpointMeta::new(endpoint)]);
        assert_eq!(waiting.await.unwrap(), Some(endpoint));

        // All endpoints gone: requests wait up to the timeout from the first failed
        // pick, then fail at once until one comes.
        service.set_endpoints(Vec::new());
        let started = tokio::time::Instant::now();
        assert!(service.pick_or_wait(failfast).await.is_none());
        assert_eq!(started.elapsed(), failfast);
        let again = tokio::time::Instant::now();
        assert!(service.pick_or_wait(failfast).await.is_none());
        assert_eq!(
            again.elapsed(),
            Duration::ZERO,
            "fails fast after the timeout"
        );

        // One comes: served at once, and a later outage waits the whole timeout again.
        service.set_endpoints(vec![EndpointMeta::new(endpoint)]);
        assert_eq!(
            service.pick_or_wait(failfast).await.map(|p| p.addr()),
            Some(endpoint)
        );
        service.set_endpoints(Vec::new());
        let started = tokio::time::Instant::now();
        assert!(service.pick_or_wait(failfast).await.is_none());
        assert_eq!(started.elapsed(), failfast);
    }

    fn parse(text: &str) -> Result<ServiceIndex, EndpointsError> {
        ServiceIndex::parse(Path::new("endpoints.yaml"), text)
    }

    #[test]
    fn parses_services_and_balances_over_their_endpoints() {
        let index = parse(
            r#"
services:
  - name: books
    authorities: ["Books.default.svc:8080"]
    address: 198.18.0.10:8080
    listen: 127.0.0.1:15001
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
"#,
        )
        .unwrap();
        let svc = index.by_authority("books.default.svc:8080").unwrap();
        assert_eq!(&*svc.name(), "books");
        let picks: std::collections::HashSet<_> = (0..100)
            .map(|_| svc.pick().unwrap().addr().port())
            .collect();
        assert_eq!(picks, [9001, 9002].into());
        assert!(index
            .by_address("198.18.0.10:8080".parse().unwrap())
            .is_some());
        assert_eq!(index.listeners().len(), 1);
    }

    #[test]
    fn rejects_unknown_fields_and_names_the_file() {
        let err = parse("services:\n  - name: a\n    endpoint: [\"127.0.0.1:1\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("endpoints.yaml"), "{msg}");
        assert!(msg.contains("unknown field `endpoint`"), "{msg}");
    }

    #[test]
    fn an_empty_endpoint_list_is_a_service_without_endpoints_and_duplicates_are_refused() {
        // A Service whose pods are not ready yet: known (requests wait for endpoints,
        // then 503), not an unknown authority.
        let index =
            parse("services:\n  - name: a\n    authorities: [a:80]\n    endpoints: []\n").unwrap();
        let a = index
            .by_authority("a:80")
            .expect("a service without endpoints");
        assert!(a.pick().is_none());
        let err = parse("services:\n  - name: a\n    authorities: [a:80]\n").unwrap_err();
        assert!(err.to_string().contains("endpoints"), "{err}");
        let err = parse(
            "services:\n  - {name: a, authorities: [x], endpoints: [\"127.0.0.1:1\"]}\n  - {name: b, authorities: [X], endpoints: [\"127.0.0.1:2\"]}\n",
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("service #1 (\"b\"): authority \"X\" is already used"));
    }

    #[test]
    fn reload_swaps_the_index_and_updates_services_in_place() {
        let path = std::env::temp_dir().join(format!("weft-endpoints-{}.yaml", std::process::id()));
        let write = |endpoints: &str| {
            std::fs::write(
                &path,
                format!("services:\n  - name: books\n    address: 198.19.0.1:80\n    endpoints: [{endpoints}]\n"),
            )
            .unwrap()
        };
        write("\"198.18.0.2:8080\"");
        let index = ServiceIndex::load(&path).unwrap();
        let held = index.by_address("198.19.0.1:80".parse().unwrap()).unwrap();
        assert_eq!(held.endpoints().len(), 1);

        write("\"198.18.0.2:8080\", \"198.18.0.3:8080\"");
        index.reload().unwrap();
        // A connection holding the service sees the new endpoint.
        let picks: std::collections::HashSet<_> =
            (0..100).map(|_| held.pick().unwrap().addr()).collect();
        assert_eq!(picks.len(), 2);
        let clone = index.clone();
        assert!(Arc::ptr_eq(
            &held,
            &clone.by_address("198.19.0.1:80".parse().unwrap()).unwrap()
        ));

        // A broken file leaves the last good index in place.
        std::fs::write(&path, "services: [{name: books, endpoints: [nowhere]}]\n").unwrap();
        assert!(index.reload().is_err());
        assert_eq!(held.endpoints().len(), 2);
        assert!(index.by_address("198.19.0.1:80".parse().unwrap()).is_some());
        std::fs::remove_file(&path).unwrap();
    }

    /// A file of its own for `test`, holding service a.
    fn watched_file(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-endpoints-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpoints.yaml");
        std::fs::write(
            &path,
            "services: [{name: a, address: \"198.19.0.1:80\", endpoints: [\"198.18.0.2:80\"]}]\n",
        )
        .unwrap();
        path
    }

    /// Replaces `path` as weft up does: a new file renamed over it, holding one service
    /// `name` at `address`.
    fn replace_with(path: &Path, name: &str, address: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!("services: [{{name: {name}, address: \"{address}\", endpoints: [\"198.18.0.3:80\"]}}]\n"),
        )
        .unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn replace_with_b(path: &Path) {
        replace_with(path, "b", "198.19.0.2:80");
    }

    /// A file of [`watched_file`] watched with polling every `poll` and no re-check
    /// within a test, once the watch (set up on the blocking pool) reloads it: rewritten
    /// (service c) until it does. The file, its index and the watch's task.
    async fn watching(test: &str, poll: Duration) -> (PathBuf, ServiceIndex, JoinHandle<()>) {
        let path = watched_file(test);
        let index = ServiceIndex::load(&path).unwrap();
        let options = WatchOptions {
            debounce: Duration::from_millis(10),
            recheck: Duration::from_secs(3600),
            poll,
        };
        let task = tokio::spawn(index.clone().watch_with(options));
        let live = weft_test::eventually(Duration::from_secs(5), || async {
            replace_with(&path, "c", "198.19.0.3:80");
            index.by_address("198.19.0.3:80".parse().unwrap()).is_some()
        })
        .await;
        assert!(live, "the watch never reloaded the file");
        (path, index, task)
    }

    async fn b_appears(index: &ServiceIndex) -> bool {
        weft_test::eventually(Duration::from_secs(5), || async {
            index.by_address("198.19.0.2:80".parse().unwrap()).is_some()
        })
        .await
    }

    #[tokio::test]
    async fn watch_reloads_a_changed_file() {
        let path = watched_file("watch");
        let index = ServiceIndex::load(&path).unwrap();
        let task = tokio::spawn(index.clone().watch(Duration::from_millis(20)));
        replace_with_b(&path);
        let seen = b_appears(&index).await;
        task.abort();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        assert!(seen, "the new service never appeared");
        assert!(index.by_address("198.19.0.1:80".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn a_change_is_picked_up_by_an_inotify_event() {
        // Neither polling nor the re-check within the test: only an event reloads.
        let (path, index, task) = watching("event", Duration::from_secs(3600)).await;
        let started = std::time::Instant::now();
        replace_with_b(&path);
        let seen = b_appears(&index).await;
        let took = started.elapsed();
        task.abort();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        assert!(seen, "the change was not picked up by an event");
        eprintln!("picked up {took:?} after the rename");
    }

    #[tokio::test]
    async fn a_directory_replaced_beneath_the_watch_is_polled() {
        // Events and polling, but no re-check within the test.
        let (path, index, task) = watching("replaced", Duration::from_millis(20)).await;
        let dir = path.parent().unwrap().to_owned();
        // The directory's watch goes with it (renamed away); the new directory's file is
        // only seen by polling.
        let old = dir.with_extension("old");
        std::fs::rename(&dir, &old).unwrap();
        std::fs::create_dir(&dir).unwrap();
        replace_with_b(&path);
        let seen = b_appears(&index).await;
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&old).unwrap();
        assert!(
            seen,
            "the file of the new directory was not picked up by polling"
        );
    }

    #[test]
    fn watch_reads_the_file_off_the_runtime_thread() {
        // The sidecar's single-threaded runtime: a read that blocks (a FIFO whose
        // writer has not written yet) must leave it free to serve traffic.
        let path =
            std::env::temp_dir().join(format!("weft-endpoints-fifo-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "services: [{name: a, address: \"198.19.0.1:80\", endpoints: [\"198.18.0.2:80\"]}]\n",
        )
        .unwrap();
        let index = ServiceIndex::load(&path).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Replaced by a FIFO: the watcher's next read waits for a writer.
        let mut blocked = weft_test::fifo::BlockedRead::start(
            &path,
            b"services: [{name: b, address: \"198.19.0.2:80\", endpoints: [\"198.18.0.3:80\"]}]\n"
                .to_vec(),
        );
        let reloaded = runtime.block_on(async {
            let task = tokio::spawn(index.clone().watch(Duration::from_millis(10)));
            // Runs while the watcher's read is blocked.
            blocked.reader_blocked().await;
            let seen = weft_test::eventually(Duration::from_secs(5), || async {
                index.by_address("198.19.0.2:80".parse().unwrap()).is_some()
            })
            .await;
            task.abort();
            seen
        });
        // A later poll may be blocked on the FIFO again: not waited for.
        runtime.shutdown_background();
        let _ = std::fs::remove_file(&path);
        assert!(
            blocked.runtime_ran(),
            "the runtime stood still while the endpoints file was read"
        );
        assert!(reloaded, "the file the FIFO gave was not loaded");
    }

    #[test]
    fn rejects_bad_addresses() {
        let err = parse("services:\n  - name: a\n    endpoints: [\"nope\"]\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("service #0 (\"a\"): endpoint \"nope\" is not an ip:port address"),
            "{err}"
        );
    }

    #[test]
    fn services_carry_their_timeouts_and_retries() {
        let index = parse(
            "services:\n  - name: books\n    address: \"198.19.0.1:80\"\n    endpoints: [\"198.18.0.2:80\"]\n    timeout: 2s\n    retries: {limit: 1, on: [503, unavailable], budget: {ratio: 0.5}}\n  - name: authors\n    address: \"198.19.0.2:80\"\n    endpoints: [\"198.18.0.3:80\"]\n",
        )
        .unwrap();
        let defaults = crate::retry::RequestPolicy::default();
        let books = index.by_address("198.19.0.1:80".parse().unwrap()).unwrap();
        let policy = &books.policy.get(&defaults).policy;
        assert_eq!(policy.timeout, Some(Duration::from_secs(2)));
        assert_eq!(policy.retry.limit, 1);
        assert!(policy.retry.on.grpc_status(14));
        assert_eq!(policy.retry.budget.ratio, 0.5);
        assert_eq!(policy.retry.budget.min_per_second, 10, "from the defaults");
        let authors = index.by_address("198.19.0.2:80".parse().unwrap()).unwrap();
        assert_eq!(authors.policy.get(&defaults).policy, defaults);
    }

    #[test]
    fn rejects_bad_retry_settings_naming_the_field() {
        let err = parse("services:\n  - name: a\n    endpoints: [\"198.18.0.2:80\"]\n    retries: {on: [200]}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("service #0 (\"a\"): `retries.on`: 200 is not an error status"),
            "{err}"
        );
        let err = parse(
            "services:\n  - name: a\n    endpoints: [\"198.18.0.2:80\"]\n    timeout: soon\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("service #0 (\"a\"): `timeout`: \"soon\" is not a duration"),
            "{err}"
        );
        let err = parse("services:\n  - name: a\n    endpoints: [\"198.18.0.2:80\"]\n    retries: {budget: {ratio: 0.2, ttl: 0s}}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("`retries.budget.ttl` must be from 1s to 60s"),
            "{err}"
        );
        let err = parse("services:\n  - name: a\n    endpoints: [\"198.18.0.2:80\"]\n    retries: {limits: 2}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `limits`"), "{err}");
    }

    #[test]
    fn a_changed_retry_policy_makes_a_new_service_object() {
        let path =
            std::env::temp_dir().join(format!("weft-endpoints-policy-{}.yaml", std::process::id()));
        let write = |retries: &str| {
            std::fs::write(
                &path,
                format!("services: [{{name: a, address: \"198.19.0.1:80\", endpoints: [\"198.18.0.2:80\"]{retries}}}]\n"),
            )
            .unwrap()
        };
        write("");
        let index = ServiceIndex::load(&path).unwrap();
        let addr = "198.19.0.1:80".parse().unwrap();
        let before = index.by_address(addr).unwrap();
        write(", timeout: 1s");
        index.reload().unwrap();
        let after = index.by_address(addr).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        let defaults = crate::retry::RequestPolicy::default();
        assert_eq!(
            after.policy.get(&defaults).policy.timeout,
            Some(Duration::from_secs(1))
        );
    }
}
