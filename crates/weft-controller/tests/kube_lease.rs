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
