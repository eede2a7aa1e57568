//! Addresses: the pods' (198.18.0.0/16, or a loopback block of 127.18.0.0/16), the
//! Services' VIPs (198.19.0.0/16), the controller's, and the pods' link names.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail};

use super::Runner;
use crate::local::state::VipRecord;
use crate::local::{
    loopback_ip, CONTROLLER_ADMIN_PORT, CONTROLLER_PORT, HUB_IP, INBOUND_PORT, LOOPBACK_BLOCKS,
    LOOPBACK_BLOCK_SIZE,
};

impl Runner {
    /// The controller's address: the hub's, or the loopback block's first.
    pub(super) fn controller_ip(&self) -> Ipv4Addr {
        match self.paths.loopback {
            Some(block) => loopback_ip(block, 1),
            None => HUB_IP,
        }
    }

    /// Gives every Service a VIP (keeping the ones it has) and drops removed ones.
    pub(super) fn sync_vips(&mut self) -> anyhow::Result<bool> {
        let wanted: Vec<(String, String)> = self
            .mesh
            .services
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let before = self.state.services.clone();
        self.state
            .services
            .retain(|v| wanted.contains(&(v.namespace.clone(), v.name.clone())));
        for (namespace, name) in wanted {
            if self
                .state
                .services
                .iter()
                .any(|v| v.namespace == namespace && v.name == name)
            {
                continue;
            }
            let used: HashSet<Ipv4Addr> = self.state.services.iter().map(|v| v.vip).collect();
            let vip = (1..=u16::MAX)
                .map(|i| Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8))
                .find(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255 && !used.contains(ip))
                .ok_or_else(|| anyhow!("no Service address left in 198.19.0.0/16"))?;
            self.state.services.push(VipRecord {
                namespace,
                name,
                vip,
            });
        }
        let changed = before != self.state.services;
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    pub(super) fn vip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.state
            .services
            .iter()
            .find(|v| v.namespace == namespace && v.name == name)
            .map(|v| v.vip)
    }

    pub(super) fn alloc_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let used: HashSet<Ipv4Addr> = self.state.pods.iter().map(|p| p.ip).collect();
        if let Some(block) = self.paths.loopback {
            // Skipping addresses whose proxy port something else holds (a mesh left
            // running by a killed weft up whose controller is gone).
            return (2..LOOPBACK_BLOCK_SIZE - 1)
                .map(|i| loopback_ip(block, i))
                .find(|ip| {
                    !used.contains(ip) && std::net::TcpListener::bind((*ip, INBOUND_PORT)).is_ok()
                })
                .ok_or_else(|| anyhow!("no pod address left in 127.18.0.0/16 block {block}"));
        }
        (2..=u16::MAX)
            .map(|i| Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8))
            .find(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255 && !used.contains(ip))
            .ok_or_else(|| anyhow!("no pod address left in 198.18.0.0/16"))
    }

    pub(super) fn alloc_link(&self) -> String {
        let used: HashSet<&str> = self.state.pods.iter().map(|p| p.link.as_str()).collect();
        (0..)
            .map(|i| format!("wfv{i}"))
            .find(|l| !used.contains(l.as_str()))
            .expect("an unused link name")
    }
}

/// Whether the controller of loopback block `block` could listen (nothing else does).
pub(super) fn loopback_block_free(block: u8) -> bool {
    let ip = loopback_ip(block, 1);
    [CONTROLLER_PORT, CONTROLLER_ADMIN_PORT]
        .iter()
        .all(|port| std::net::TcpListener::bind((ip, *port)).is_ok())
}

/// The loopback block to use: the one asked for if it is free, else the first free one.
pub(super) fn loopback_block(asked: Option<u8>) -> anyhow::Result<u8> {
    match asked {
        Some(block) if loopback_block_free(block) => Ok(block),
        Some(block) => bail!(
            "loopback block {block} is in use ({}:{CONTROLLER_PORT} or :{CONTROLLER_ADMIN_PORT} cannot be bound): another mesh runs there; take another --loopback-block (0-{})",
            loopback_ip(block, 1),
            LOOPBACK_BLOCKS - 1
        ),
        None => (0..LOOPBACK_BLOCKS).find(|b| loopback_block_free(*b)).ok_or_else(|| {
            anyhow!(
                "every loopback block (127.18.0.0/16, {LOOPBACK_BLOCKS} meshes) is in use: `weft down` a mesh first"
            )
        }),
    }
}
