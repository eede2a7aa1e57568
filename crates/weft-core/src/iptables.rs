//! The sidecar's iptables rules (DESIGN.md, data plane): what `weft up` installs in
//! every pod and what the network-namespace tests install, so the tests prove the
//! rules the local mesh runs with.

use std::fmt::Write as _;

/// The UID every pod's proxy runs as (namespace mode); the outbound rules let its
/// traffic through.
pub const PROXY_UID: u32 = 2102;

/// Where the outbound rules send the workload's TCP connections (on loopback).
pub const OUTBOUND_PORT: u16 = 4140;
/// Where the inbound rules send TCP connections arriving at the pod.
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's admin port; never redirected.
pub const ADMIN_PORT: u16 = 4191;

/// The sidecar's nat rules for `iptables-restore`: inbound TCP to the inbound listener
/// ([`INBOUND_PORT`]) except the admin port and `skip_ports`; outbound TCP to the
/// outbound listener ([`OUTBOUND_PORT`]) except the proxy's own UID ([`PROXY_UID`]),
/// loopback and `skip_ports`. IPv4 only: pods run with IPv6 off.
pub fn redirect_rules(skip_ports: &[u16]) -> String {
    let mut r = String::from("*nat\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTBOUND - [0:0]\n");
    r.push_str("-A PREROUTING -p tcp -j WEFT_INBOUND\n");
    let _ = writeln!(r, "-A WEFT_INBOUND -p tcp --dport {ADMIN_PORT} -j RETURN");
    for p in skip_ports {
        let _ = writeln!(r, "-A WEFT_INBOUND -p tcp --dport {p} -j RETURN");
    }
    let _ = writeln!(
        r,
        "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports {INBOUND_PORT}"
    );
    r.push_str("-A OUTPUT -p tcp -j WEFT_OUTBOUND\n");
    let _ = writeln!(
        r,
        "-A WEFT_OUTBOUND -m owner --uid-owner {PROXY_UID} -j RETURN"
    );
    r.push_str("-A WEFT_OUTBOUND -o lo -j RETURN\n");
    for p in skip_ports {
        let _ = writeln!(r, "-A WEFT_OUTBOUND -p tcp --dport {p} -j RETURN");
    }
    let _ = writeln!(
        r,
        "-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"
    );
    r.push_str("COMMIT\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_let_the_admin_port_the_proxy_loopback_and_skip_ports_pass_before_redirecting() {
        let rules = redirect_rules(&[5432]);
        let lines: Vec<&str> = rules.lines().collect();
        let at = |rule: &str| {
            lines
                .iter()
                .position(|l| *l == rule)
                .unwrap_or_else(|| panic!("no rule {rule:?} in:\n{rules}"))
        };
        let inbound = at("-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 4143");
        assert!(at("-A WEFT_INBOUND -p tcp --dport 4191 -j RETURN") < inbound);
        assert!(at("-A WEFT_INBOUND -p tcp --dport 5432 -j RETURN") < inbound);
        let outbound = at("-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports 4140");
        assert!(at("-A WEFT_OUTBOUND -m owner --uid-owner 2102 -j RETURN") < outbound);
        assert!(at("-A WEFT_OUTBOUND -o lo -j RETURN") < outbound);
        assert!(at("-A WEFT_OUTBOUND -p tcp --dport 5432 -j RETURN") < outbound);
        at("-A PREROUTING -p tcp -j WEFT_INBOUND");
        at("-A OUTPUT -p tcp -j WEFT_OUTBOUND");
        assert_eq!((lines[0], lines[lines.len() - 1]), ("*nat", "COMMIT"));
    }
}
