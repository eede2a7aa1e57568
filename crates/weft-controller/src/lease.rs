//! Leader election with a `coordination.k8s.io/v1` Lease, so several controller
//! replicas can run: every replica serves proxies, only the leader writes status.
//!
//! The Lease's standard fields are used as client-go's `leaderelection` uses them:
//! `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime` and
//! `leaseTransitions`; every write replaces the object at the `resourceVersion` it was
//! read at, so of two replicas writing at once one gets a conflict and stays a follower.
//!
//! Timing (no clock is compared between machines): a follower takes the Lease over only
//! after it has seen the same record, unchanged, for the record's `leaseDurationSeconds`
//! (or when it is released: no holder). The leader renews every
//! [`LeaseConfig::retry_period`] and considers itself the leader only until
//! [`LeaseConfig::renew_deadline`] (shorter than the lease duration) after the start of
//! its last successful renewal; past it, it steps down before anyone can take over. On
//! [`Elector::stop`] (or drop) it steps down first, then releases the Lease (no holder)
//! so a follower takes over at its next try instead of after a whole lease duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Lease's name unless configured otherwise.
pub const DEFAULT_LEASE_NAME: &str = "weft-controller";
/// client-go's defaults: a lease of 15 s, renewed every 2 s, given up 10 s after the
/// last renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What to elect with.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease object's name.
    pub name: String,
    pub namespace: String,
    /// This replica's name in `holderIdentity` (the pod's name, with something unique).
    pub identity: String,
    /// `leaseDurationSeconds` written (whole seconds, at least one).
    pub lease_duration: Duration,
    /// How long the leader stays leader without a successful renewal (shorter than
    /// `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the Lease is renewed (leader) or tried (follower).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The defaults for `identity` in `namespace`.
    pub fn new(namespace: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            name: DEFAULT_LEASE_NAME.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    fn check(&self) -> Result<(), LeaseError> {
        let whole = |d: Duration| d.as_secs() >= 1 && d.subsec_nanos() == 0;
        if !whole(self.lease_duration) || self.lease_duration.as_secs() > i32::MAX as u64 {
            return Err(LeaseError::Config(format!(
                "the lease duration must be whole seconds, at least 1 (not {:?}): leaseDurationSeconds",
                self.lease_duration
            )));
        }
        if self.renew_deadline >= self.lease_duration || self.renew_deadline.is_zero() {
            return Err(LeaseError::Config(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}), or two replicas could both lead",
                self.renew_deadline, self.lease_duration
            )));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(LeaseError::Config(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            )));
        }
        if self.identity.is_empty() {
            return Err(LeaseError::Config("the holder identity is empty".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("leader election settings: {0}")]
    Config(String),
}

/// Takes part in the election until stopped or dropped.
pub struct Elector {
    is_leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    config: LeaseConfig,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("config", &self.config)
            .field("is_leader", &*self.is_leader.borrow())
            .finish_non_exhaustive()
    }
}

impl Elector {
    /// Starts campaigning for `config`'s Lease with `client` (its credentials need get,
    /// create and update on `leases.coordination.k8s.io` in the namespace). Must be
    /// called within a tokio runtime.
    pub fn start(client: kube::Client, config: LeaseConfig) -> Result<Elector, LeaseError> {
        config.check()?;
        let (leader_tx, is_leader) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let campaign = Campaign {
            api: kube::Api::namespaced(client, &config.namespace),
            config: config.clone(),
            leader: leader_tx,
            observed: None,
            renewed: None,
        };
        let task = tokio::spawn(campaign.run(stopped));
        Ok(Elector {
            is_leader,
            stop,
            task: Some(task),
            config,
        })
    }

    /// `true` while this replica leads: status writers write only then.
    pub fn is_leader(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Steps down (the receivers see `false` at once) and releases the Lease if held;
    /// returns when the release was written or failed (logged).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Elector {
    /// The campaign steps down and releases the Lease in the background (when the
    /// runtime still runs); [`Elector::stop`] waits for it.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The background task's state.
struct Campaign {
    api: kube::Api<Lease>,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    /// The record last seen and when it was first seen like that: a holder is given
    /// up on when its record stayed the same for its lease duration.
    observed: Option<(Observed, Instant)>,
    /// When the last successful write as holder started (the leader's clock).
    renewed: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    duration: Option<i32>,
    transitions: Option<i32>,
}

impl Observed {
    fn of(lease: &Lease) -> Observed {
        let spec = lease.spec.clone().unwrap_or_default();
        Observed {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time,
            duration: spec.lease_duration_seconds,
            transitions: spec.lease_transitions,
        }
    }
}

/// What one attempt found.
enum Attempt {
    /// We hold the Lease (written at the attempt's start time).
    Holding,
    /// Someone else does, or our write lost a race.
    Following,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Campaign {
    fn leading(&self) -> bool {
        *self.leader.borrow()
    }

    fn set_leader(&self, leader: bool) {
        if self.leading() != leader {
            if leader {
                tracing::info!(lease = %self.config.name, namespace = %self.config.namespace, identity = %self.config.identity, "leader election: now the leader");
            } else {
                tracing::info!(lease = %self.config.name, namespace = %self.config.namespace, identity = %self.config.identity, "leader election: no longer the leader");
            }
            self.leader.send_replace(leader);
        }
    }

    /// The leader steps down once its last successful renewal is `renew_deadline` old.
    fn check_deadline(&mut self) {
        if self.leading() {
            let deadline = self.renewed.map(|r| r + self.config.renew_deadline);
            if deadline.is_none_or(|d| Instant::now() >= d) {
                self.renewed = None;
                self.set_leader(false);
            }
        }
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        loop {
            if *stopped.borrow() {
                break;
            }
            let started = Instant::now();
            // A leader's attempt may not outlast its deadline: it steps down in time
            // even when the API server hangs.
            let limit = match (self.leading(), self.renewed) {
                (true, Some(renewed)) => renewed + self.config.renew_deadline,
                _ => started + self.config.renew_deadline,
            };
            let outcome = tokio::select! {
                biased;
                _ = stopped.changed() => break,
                r = tokio::time::timeout_at(limit.into(), self.attempt(started)) => r,
            };
            match outcome {
                Ok(Ok(Attempt::Holding)) => {
                    self.renewed = Some(started);
                    self.set_leader(true);
                }
                Ok(Ok(Attempt::Following)) => {
                    self.renewed = None;
                    self.set_leader(false);
                }
                Ok(Err(error)) => {
                    tracing::warn!(lease = %self.config.name, namespace = %self.config.namespace, %error, "leader election: cannot read or write the Lease");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, namespace = %self.config.namespace, "leader election: the Kubernetes API did not answer in time");
                }
            }
            self.check_deadline();
            // The leader wakes at its deadline too, to step down in time if the renewals
            // keep failing.
            let mut next = started + self.config.retry_period;
            if let (true, Some(renewed)) = (self.leading(), self.renewed) {
                next = next.min(renewed + self.config.renew_deadline);
            }
            tokio::select! {
                biased;
                _ = stopped.changed() => break,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            self.check_deadline();
        }
        // Step down first: from here on nothing of ours acts as leader.
        let held = self.leading() || self.renewed.is_some();
        self.set_leader(false);
        if held {
            match tokio::time::timeout(self.config.renew_deadline, self.release()).await {
                Ok(Ok(true)) => {
                    tracing::info!(lease = %self.config.name, namespace = %self.config.namespace, "leader election: Lease released")
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(lease = %self.config.name, namespace = %self.config.namespace, %error, "leader election: cannot release the Lease; another replica takes it over when it expires")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, namespace = %self.config.namespace, "leader election: the Kubernetes API did not answer the release; another replica takes the Lease over when it expires")
                }
            }
        }
    }

    /// Reads the Lease and creates, renews or takes it over if it may.
    async fn attempt(&mut self, started: Instant) -> Result<Attempt, kube::Error> {
        let me = &self.config.identity;
        let duration = self.config.lease_duration.as_secs() as i32;
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Holding),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Attempt::Following),
                Err(e) => Err(e),
            };
        };
        let seen = Observed::of(&lease);
        let unchanged_since = match &self.observed {
            Some((previous, since)) if *previous == seen => *since,
            _ => {
                self.observed = Some((seen.clone(), started));
                started
            }
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        match seen.holder.as_deref() {
            Some(holder) if holder == me => {
                // Renew.
                spec.renew_time = Some(now());
                spec.lease_duration_seconds = Some(duration);
            }
            Some(_) => {
                let theirs = Duration::from_secs(seen.duration.unwrap_or(duration).max(1) as u64);
                if unchanged_since.elapsed() < theirs {
                    return Ok(Attempt::Following);
                }
                // Their record did not change for a whole lease duration: take over.
                spec = self.taken_over(spec, duration);
            }
            None => spec = self.taken_over(spec, duration),
        }
        let mut updated = lease;
        updated.spec = Some(spec);
        // The resourceVersion read above stays in the metadata: a write by anyone else
        // since then makes this one fail with a conflict.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => {
                self.observed = Some((Observed::of(&written), started));
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Attempt::Following),
            Err(e) => Err(e),
        }
    }

    fn taken_over(&self, mut spec: LeaseSpec, duration: i32) -> LeaseSpec {
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(duration);
        spec.acquire_time = Some(now());
        spec.renew_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec
    }

    /// Clears the holder if it is still us (at the version read); `true` when it did.
    async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        // As client-go releases: no holder, a one-second duration, the transitions kept.
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        spec.acquire_time = Some(now());
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_could_elect_two_leaders_are_refused() {
        let ok = LeaseConfig::new("weft-system", "a");
        ok.check().unwrap();
        let mut c = ok.clone();
        c.renew_deadline = c.lease_duration;
        assert!(c.check().unwrap_err().to_string().contains("two replicas"));
        let mut c = ok.clone();
        c.lease_duration = Duration::from_millis(1500);
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("leaseDurationSeconds"));
        let mut c = ok.clone();
        c.retry_period = c.renew_deadline;
        assert!(c.check().is_err());
        let mut c = ok;
        c.identity.clear();
        assert!(c.check().is_err());
    }
}
