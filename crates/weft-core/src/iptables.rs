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
    let skip: Vec<PortRange> = skip_ports.iter().map(|&p| PortRange::single(p)).collect();
    Redirect {
        proxy_uid: PROXY_UID,
        skip_inbound: skip.clone(),
        skip_outbound: skip,
    }
    .rules()
}

/// The sidecar's rules with every knob: the proxy's UID and the ports whose inbound and
/// outbound traffic bypass the proxy, each list its own (Kubernetes' `weft-proxy init`;
/// the local mesh skips the same ports both ways, [`redirect_rules`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// Outbound connections of this UID (the proxy's own) are not redirected.
    pub proxy_uid: u32,
    /// Destination ports of inbound connections that go straight to the workload.
    pub skip_inbound: Vec<PortRange>,
    /// Destination ports of the workload's outbound connections that go straight out.
    pub skip_outbound: Vec<PortRange>,
}

impl Redirect {
    /// The rules for `iptables-restore` (which replaces the nat table: applying them
    /// twice leaves the same rules).
    pub fn rules(&self) -> String {
        let mut r = String::from("*nat\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTBOUND - [0:0]\n");
        r.push_str("-A PREROUTING -p tcp -j WEFT_INBOUND\n");
        let _ = writeln!(r, "-A WEFT_INBOUND -p tcp --dport {ADMIN_PORT} -j RETURN");
        for p in &self.skip_inbound {
            let _ = writeln!(
                r,
                "-A WEFT_INBOUND -p tcp --dport {} -j RETURN",
                p.iptables()
            );
        }
        let _ = writeln!(
            r,
            "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports {INBOUND_PORT}"
        );
        r.push_str("-A OUTPUT -p tcp -j WEFT_OUTBOUND\n");
        let _ = writeln!(
            r,
            "-A WEFT_OUTBOUND -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        r.push_str("-A WEFT_OUTBOUND -o lo -j RETURN\n");
        for p in &self.skip_outbound {
            let _ = writeln!(
                r,
                "-A WEFT_OUTBOUND -p tcp --dport {} -j RETURN",
                p.iptables()
            );
        }
        let _ = writeln!(
            r,
            "-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"
        );
        r.push_str("COMMIT\n");
        r
    }
}

/// A port or an inclusive range of ports: `5432` or `4000-4010`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// iptables' `--dport` form: `5432` or `4000:4010`.
    pub fn iptables(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }

    /// The ports of the range.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// A comma-separated list (`25,4000-4010`; spaces around items allowed, empty items
    /// ignored).
    pub fn parse_list(s: &str) -> Result<Vec<PortRange>, PortRangeError> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a port or port range did not parse, quoting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a port (1-65535) or a port range (4000-4010)")]
pub struct PortRangeError(pub String);

impl std::str::FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PortRangeError(s.to_owned());
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(p) => Ok(p),
        };
        let range = match s.split_once('-') {
            None => PortRange::single(port(s)?),
            Some((first, last)) => PortRange {
                first: port(first)?,
                last: port(last)?,
            },
        };
        if range.first > range.last {
            return Err(bad());
        }
        Ok(range)
    }
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

    #[test]
    fn split_skip_lists_and_the_proxy_uid_go_to_their_own_chains() {
        let rules = Redirect {
            proxy_uid: 1337,
            skip_inbound: PortRange::parse_list("22, 4000-4010").unwrap(),
            skip_outbound: PortRange::parse_list("5432").unwrap(),
        }
        .rules();
        for rule in [
            "-A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 4000:4010 -j RETURN",
            "-A WEFT_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "-A WEFT_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
        ] {
            assert!(rules.lines().any(|l| l == rule), "no {rule:?} in:\n{rules}");
        }
        assert!(
            !rules.contains("WEFT_OUTBOUND -p tcp --dport 22 "),
            "{rules}"
        );
        assert!(
            !rules.contains("WEFT_INBOUND -p tcp --dport 5432 "),
            "{rules}"
        );
        // The local mesh's rules are the same ports both ways.
        assert_eq!(
            redirect_rules(&[5432]),
            Redirect {
                proxy_uid: PROXY_UID,
                skip_inbound: vec![PortRange::single(5432)],
                skip_outbound: vec![PortRange::single(5432)],
            }
            .rules()
        );
    }

    #[test]
    fn port_ranges_parse_and_bad_ones_are_quoted() {
        assert_eq!(
            PortRange::parse_list(" 25,4000-4010,,").unwrap(),
            vec![
                PortRange::single(25),
                PortRange {
                    first: 4000,
                    last: 4010
                }
            ]
        );
        for bad in ["abc", "0", "70000", "10-5", "1-", "-3"] {
            assert_eq!(
                bad.parse::<PortRange>().unwrap_err().to_string(),
                format!("{bad:?} is not a port (1-65535) or a port range (4000-4010)")
            );
        }
        assert_eq!(
            PortRange::parse_list("4000-4010").unwrap()[0].to_string(),
            "4000-4010"
        );
    }
}
