//! Proxies run in-process, in explicit mode, on ephemeral loopback ports.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weft_proxy::endpoints::ServiceIndex;
use weft_proxy::{Config, Proxy};

use weft_core::prom::Scrape;

/// Builds a proxy's settings before starting it.
pub struct ProxyBuilder {
    config: Config,
}

/// A proxy whose inbound listener forwards to `workload`.
pub fn inbound_to(workload: SocketAddr) -> ProxyBuilder {
    ProxyBuilder {
        config: Config::explicit(workload),
    }
}

impl ProxyBuilder {
    /// Static services, in the endpoints file's YAML (balanced as set by [`Self::zone`]
    /// if that came first).
    pub fn services(mut self, yaml: &str) -> Self {
        self.config.services = ServiceIndex::parse_with(
            Path::new("test-endpoints.yaml"),
            yaml,
            self.config.balance.clone(),
        )
        .expect("valid test endpoints");
        self
    }

    /// The proxy's zone (zone-aware balancing); call before [`Self::services`].
    pub fn zone(mut self, zone: &str) -> Self {
        self.config.balance = std::sync::Arc::new(weft_proxy::balance::BalanceConfig {
            zone: Some(zone.into()),
            ..Default::default()
        });
        self.config.labels.zone = zone.into();
        self
    }

    /// Where the inbound listener binds (default: an ephemeral loopback port).
    pub fn inbound_listen(mut self, addr: SocketAddr) -> Self {
        self.config.inbound_listen = addr;
        self
    }

    pub fn opaque_ports(mut self, ports: &[u16]) -> Self {
        self.config.opaque_ports = ports.iter().copied().collect();
        self
    }

    pub fn response_timeout(mut self, limit: Duration) -> Self {
        self.config.response_timeout = Some(limit);
        self
    }

    /// Outbound timeouts and retries by default, as the --request-timeout and
    /// --retry-* flags set them (services may override them in their YAML).
    pub fn request_policy(mut self, policy: weft_proxy::retry::RequestPolicy) -> Self {
        self.config.request_policy =
            std::sync::Arc::new(weft_proxy::retry::BudgetedPolicy::new(policy));
        self
    }

    pub fn detect_timeout(mut self, limit: Duration) -> Self {
        self.config.detect_timeout = limit;
        self
    }

    /// How long idle upstream connections are kept (zero: a new one per request).
    /// `--h2-between-proxies`: HTTP/1 to meshed endpoints over HTTP/2 (off by default).
    pub fn h2_between_proxies(mut self, on: bool) -> Self {
        self.config.h2_between_proxies = on;
        self
    }

    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.config.pool_idle_timeout = idle;
        self
    }

    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.config.drain_grace = grace;
        self
    }

    pub fn workload(mut self, namespace: &str, deployment: &str, pod: &str) -> Self {
        self.config.labels = weft_proxy::config::WorkloadLabels {
            namespace: namespace.into(),
            deployment: deployment.into(),
            pod: pod.into(),
            zone: self.config.labels.zone.clone(),
        };
        self
    }

    /// Turns on mTLS with `identity` (certificates installed by the test, e.g. from
    /// [`crate::ca::TestCa`]).
    pub fn identity(
        mut self,
        identity: std::sync::Arc<weft_proxy::identity::LocalIdentity>,
    ) -> Self {
        self.config.identity = Some(weft_proxy::config::IdentityConfig {
            local: identity,
            certify: None,
        });
        self
    }

    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    pub async fn start(self) -> TestProxy {
        let proxy = Proxy::start(self.config).await.expect("proxy starts");
        TestProxy { proxy }
    }
}

/// A running in-process proxy. Shuts down when dropped.
pub struct TestProxy {
    proxy: Proxy,
}

impl TestProxy {
    pub fn inbound(&self) -> SocketAddr {
        self.proxy.inbound_addr()
    }

    pub fn outbound(&self) -> SocketAddr {
        self.proxy.outbound_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr()
    }

    pub fn service(&self, name: &str) -> SocketAddr {
        self.proxy
            .service_addr(name)
            .unwrap_or_else(|| panic!("no listener for service {name}"))
    }

    pub fn handle(&self) -> &Proxy {
        &self.proxy
    }

    pub async fn metrics(&self) -> Scrape {
        crate::metrics::fetch(self.admin())
            .await
            .expect("scrape metrics")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.proxy.shutdown();
    }
}
