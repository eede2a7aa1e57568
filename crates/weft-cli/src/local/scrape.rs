//! Reading every pod proxy's `/metrics` of a local mesh, for `weft up`'s summary and
//! `weft stat`: from inside the hub namespace (namespace mode: the pods' admin ports
//! are on the bridge only) or directly (loopback mode).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::state::{PodRecord, State};
use super::{sys, ADMIN_PORT};
use crate::fetch;

/// How long one proxy may take to answer.
const PER_POD: Duration = Duration::from_secs(2);

/// The network namespace the pods' admin ports are reachable from: the hub's, `None`
/// in loopback mode.
pub fn admin_netns(state: &State) -> Option<String> {
    (!state.loopback).then(|| {
        state
            .hub
            .clone()
            .unwrap_or_else(|| format!("{}-hub", state.prefix))
    })
}

/// Every pod proxy's `/metrics` text by pod key (`PodRecord::netns`), read side by
/// side from inside `hub` (or this namespace with `None`). Pods whose proxy does not
/// answer within 2 s are left out; entering `hub` failing is an error.
pub async fn pod_metrics(
    hub: Option<String>,
    pods: &[PodRecord],
) -> anyhow::Result<HashMap<String, String>> {
    let targets: Vec<(String, SocketAddr)> = pods
        .iter()
        .map(|p| (p.netns.clone(), SocketAddr::from((p.ip, ADMIN_PORT))))
        .collect();
    tokio::task::spawn_blocking(move || {
        sys::in_netns(
            hub.as_deref(),
            PER_POD + Duration::from_secs(3),
            move || async move {
                let mut set = tokio::task::JoinSet::new();
                for (key, addr) in targets {
                    set.spawn(async move {
                        let text =
                            tokio::time::timeout(PER_POD, fetch::get(addr, "/metrics")).await;
                        (key, text)
                    });
                }
                let mut out = HashMap::new();
                while let Some(Ok((key, text))) = set.join_next().await {
                    if let Ok(Ok(text)) = text {
                        out.insert(key, text);
                    }
                }
                out
            },
        )
    })
    .await?
}
