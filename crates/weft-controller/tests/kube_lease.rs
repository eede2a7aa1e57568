//! Leader election with a Lease against a real kube-apiserver
//! (`weft_test::kube::KubeApi`): two electors, one leads; the leader stops and the other
//! leads within the lease duration; never two at once.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_controller::lease::{Elector, LeaseConfig};
use weft_test::kube::KubeApi;

const NAMESPACE: &str = "weft-system";
const LEASE_DURATION: Duration = Duration::from_secs(2);

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaseConfig::new(NAMESPACE, identity)
    }
}

/// Samples the electors every 5 ms until `done` holds or `limit` passes, failing the
/// moment two of them lead at once; returns how long it took.
async fn wait(
    electors: &[&watch::Receiver<bool>],
    limit: Duration,
    what: &str,
    done: impl Fn(&[bool]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let leading: Vec<bool> = electors.iter().map(|e| *e.borrow()).collect();
        assert!(
            leading.iter().filter(|l| **l).count() <= 1,
            "two leaders at once: {leading:?}"
        );
        if done(&leading) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not after {limit:?} ({leading:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn lease_field(api: &KubeApi, path: &str) -> String {
    api.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "lease",
        "weft-controller",
        "-o",
        &format!("jsonpath={{.spec.{path}}}"),
    ])
    .unwrap()
}

#[test]
fn one_of_two_electors_leads_and_the_other_takes_over_when_it_stops() {
    let Some(api) = KubeApi::shared() else { return };
    api.kubectl(&["create", "namespace", NAMESPACE]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap(),
        )
        .unwrap();
        let a = Elector::start(client.clone(), config("replica-a")).unwrap();
        let b = Elector::start(client.clone(), config("replica-b")).unwrap();
        let (ra, rb) = (a.is_leader(), b.is_leader());

        // One leads (the API server may be slow to answer the first calls on a busy
        // machine).
        let took = wait(&[&ra, &rb], Duration::from_secs(30), "one leader", |l| {
            l.contains(&true)
        })
        .await;
        eprintln!("first leader after {took:?}");
        // ... and stays the only one over several renewals.
        let steady = Instant::now();
        wait(&[&ra, &rb], Duration::from_secs(5), "steady", |l| {
            assert!(l.contains(&true), "the leader stepped down: {l:?}");
            steady.elapsed() > 4 * LEASE_DURATION / 2
        })
        .await;
        let (leader, follower, rf) = if *ra.borrow() {
            (a, b, rb.clone())
        } else {
            (b, a, ra.clone())
        };
        let (leader_name, follower_name) =
            (leader.identity().to_owned(), follower.identity().to_owned());
        let holder = lease_field(api, "holderIdentity");
        assert_eq!(holder, leader_name);
        assert_eq!(lease_field(api, "leaseDurationSeconds"), "2");
        assert_eq!(lease_field(api, "leaseTransitions"), "0");
        assert!(!lease_field(api, "renewTime").is_empty());

        // The leader stops (and releases the Lease): the follower leads within the
        // lease duration, and the stopped one never leads again.
        let rl = leader.is_leader();
        let stopped = Instant::now();
        leader.stop().await;
        assert!(!*rl.borrow(), "a stopped elector still says it leads");
        let released = stopped.elapsed();
        wait(
            &[&rl, &rf],
            LEASE_DURATION,
            "the follower takes over",
            |l| l[1],
        )
        .await;
        let took = stopped.elapsed();
        eprintln!("takeover {took:?} after the stop began (released after {released:?})");
        assert!(
            took < LEASE_DURATION,
            "the follower led {took:?} after the leader stopped, more than the lease duration"
        );
        assert_eq!(lease_field(api, "holderIdentity"), follower_name);
        assert_eq!(lease_field(api, "leaseTransitions"), "1");

        // Stopping the last one releases the Lease: no holder.
        follower.stop().await;
        assert!(!*rf.borrow());
        assert_eq!(lease_field(api, "holderIdentity"), "");
    });
}

/// The binary: `--identity-tokens kube` issues a ServiceAccount token's certificate,
/// `--source kube` takes the Lease in `--lease-namespace`, and SIGTERM releases it.
#[test]
fn the_binary_checks_tokens_with_the_api_and_releases_its_lease_on_sigterm() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let Some(api) = KubeApi::shared() else { return };
    api.kubectl(&["create", "namespace", NAMESPACE]).unwrap();
    api.kubectl(&["create", "namespace", "shop"]).unwrap();
    api.kubectl(&["-n", "shop", "create", "serviceaccount", "books"])
        .unwrap();
    let token = api
        .kubectl(&[
            "-n",
            "shop",
            "create",
            "token",
            "books",
            &format!("--audience={}", weft_core::identity::KUBE_TOKEN_AUDIENCE),
        ])
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("weft-controller-kube-bin-")
        .tempdir()
        .unwrap();
    let identity_dir = dir.path().join("identity");
    weft_controller::identity::init(&identity_dir, "cluster.local", false).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .arg("--identity-dir")
        .arg(&identity_dir)
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["--identity-tokens", "kube", "--source", "kube"])
        .args(["--lease-namespace", NAMESPACE, "--lease-identity", "bin-a"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("WEFT_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut log = String::new();
    while !line.contains("controller serving") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("the controller exited before serving:\n{log}");
        }
        log.push_str(&line);
    }
    let grpc: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc_addr="))
        .unwrap_or_else(|| panic!("no grpc_addr in {line}"))
        .parse()
        .unwrap();
    // The rest of the log is drained so the controller never blocks on it.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let anchors =
        std::fs::read(identity_dir.join(weft_controller::identity::ANCHORS_FILE)).unwrap();
    let leaf = runtime.block_on(async {
        use linkerd2_proxy_api::identity::identity_client::IdentityClient;
        use linkerd2_proxy_api::identity::CertifyRequest;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(anchors))
            .domain_name("weft-controller.weft-system.serviceaccount.identity.weft.cluster.local");
        let channel = Endpoint::from_shared(format!("https://{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap();
        let books = "books.shop.serviceaccount.identity.weft.cluster.local";
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::DnsName(books.try_into().unwrap())];
        IdentityClient::new(channel)
            .certify(CertifyRequest {
                identity: books.into(),
                token: token.trim().as_bytes().to_vec(),
                certificate_signing_request: params.serialize_request(&key).unwrap().der().to_vec(),
            })
            .await
    });
    // Its connection closes with it (a graceful stop waits for open connections).
    drop(runtime);
    let leaf = leaf.unwrap_or_else(|status| {
        let _ = child.kill();
        panic!("Certify refused: {status:?}")
    });
    assert!(!leaf.into_inner().leaf_certificate.is_empty());

    // It takes the Lease.
    let start = Instant::now();
    while api
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "lease",
            "weft-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default()
        != "bin-a"
    {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the controller never took the Lease");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM: it stops cleanly and leaves the Lease without a holder.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the controller did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest = drain.join().unwrap();
    assert!(status.success(), "{status}: {log}{rest}");
    assert!(rest.contains("Lease released"), "{log}{rest}");
    assert_eq!(lease_field(api, "holderIdentity"), "");
}

/// A leader that vanished without releasing (crashed, partitioned): its Lease is taken
/// over only once its record stayed unchanged for its lease duration, by the
/// follower's own clock.
#[test]
fn a_lease_left_by_a_crashed_leader_is_taken_over_after_its_duration() {
    let Some(api) = KubeApi::shared() else { return };
    api.kubectl(&["create", "namespace", NAMESPACE]).unwrap();
    // Renewed long ago by another machine's clock; not trusted, only watched.
    let now = "2026-01-01T00:00:00.000000Z";
    let lease = format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease",
            "metadata":{{"name":"weft-controller","namespace":"{NAMESPACE}"}},
            "spec":{{"holderIdentity":"crashed","leaseDurationSeconds":2,"leaseTransitions":4,
                     "acquireTime":"{now}","renewTime":"{now}"}}}}"#
    );
    api.kubectl_stdin(&["create", "-f", "-"], Some(&lease))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap(),
        )
        .unwrap();
        let started = Instant::now();
        let b = Elector::start(client, config("replica-b")).unwrap();
        let rb = b.is_leader();
        wait(&[&rb], Duration::from_secs(30), "takeover", |l| l[0]).await;
        let took = started.elapsed();
        eprintln!("a crashed leader's Lease taken over after {took:?}");
        // Not before the record stayed the same for its 2 s (its renewTime, long past,
        // is another machine's clock and is not trusted).
        assert!(took >= LEASE_DURATION, "taken over after only {took:?}");
        assert_eq!(lease_field(api, "holderIdentity"), "replica-b");
        assert_eq!(lease_field(api, "leaseTransitions"), "5");
        b.stop().await;
    });
}
