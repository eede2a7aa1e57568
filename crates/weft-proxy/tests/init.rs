//! `weft-proxy init` in a network namespace (root): the binary installs the pod's rules,
//! a second run leaves one copy of them, and they go with the namespace.

use std::process::Command;

use weft_test::netns::{self, TestNet};

/// `weft-proxy init ARGS` in `ns`; its stdout, or its stderr as the error.
fn init_in(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_weft-proxy"),
            "init",
        ])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn init_installs_the_pods_rules_once_and_they_go_with_the_namespace() {
    if let Err(reason) = netns::can_run() {
        return netns::skip(&reason);
    }
    let net = TestNet::new(1).unwrap();
    let ns = net.pod(0).ns.clone();
    let args = [
        "--skip-inbound-ports",
        "22,4000-4010",
        "--skip-outbound-ports",
        "5432",
    ];
    let printed = init_in(&ns, &args).unwrap();
    assert!(
        printed.starts_with("installed the pod's iptables rules:\n*nat\n"),
        "{printed}"
    );
    // Again, as a restarted pod's init container would: the table is replaced.
    init_in(&ns, &args).unwrap();

    let rules = netns::nat_rules(&ns);
    for rule in [
        "-A PREROUTING -p tcp -j WEFT_INBOUND",
        "-A OUTPUT -p tcp -j WEFT_OUTBOUND",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 4000:4010 -j RETURN",
        "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A WEFT_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A WEFT_OUTBOUND -o lo -j RETURN",
        "-A WEFT_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN",
        "-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
    ] {
        let copies = rules.lines().filter(|l| *l == rule).count();
        assert_eq!(copies, 1, "{rule:?} {copies} times in:\n{rules}");
    }
    // Inbound and outbound skip lists stay apart.
    assert!(
        !rules.contains("WEFT_OUTBOUND -p tcp -m tcp --dport 22 "),
        "{rules}"
    );
    assert!(
        !rules.contains("WEFT_INBOUND -p tcp -m tcp --dport 5432 "),
        "{rules}"
    );

    // A bad port is refused before anything is installed, naming the flag.
    let err = init_in(&ns, &["--skip-inbound-ports", "http"]).unwrap_err();
    assert!(err.contains("'--skip-inbound-ports"), "{err}");

    drop(net);
    assert!(
        !std::path::Path::new("/run/netns").join(&ns).exists(),
        "namespace {ns} (and its rules) left behind"
    );
}
