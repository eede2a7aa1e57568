//! `weft install [--crds]` and `weft uninstall`: print the Kubernetes manifests (the
//! CRDs, the control plane) for `kubectl apply -f -` / `kubectl delete -f -`, made by
//! `weft_k8s::install` from typed objects (the Helm chart renders the same ones).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use weft_k8s::install::{self, InstallOptions};
use weft_k8s::operator::manifests;

#[derive(clap::Args)]
#[command(after_help = "\
Prints YAML on standard output; nothing is sent to a cluster.

With --operator: the CRDs, the operator (namespace weft-operator) and a ControlPlane \
resource named weft; the operator then makes the control plane, its trust anchor, issuer \
and the injector's certificate included, and upgrades it when the ControlPlane's version \
changes.

Without it: the control plane's objects themselves. Before the control plane starts it \
needs, in its namespace, the Secret weft-identity (trust-anchors.pem, issuer.crt, \
issuer.key from `weft identity init`) and the kubernetes.io/tls Secret weft-injector-tls \
(the injector's certificate for weft-injector.weft-system.svc); nothing is generated in \
the cluster.

Examples:
  weft install --operator | kubectl apply --server-side -f -
  weft install --crds | kubectl apply --server-side -f -
  weft install --ha --version v0.1.0 | kubectl apply --server-side -f -
  weft install --image-registry registry.local:5000/weft --webhook-ca-bundle ca.crt")]
pub struct InstallArgs {
    /// Only the CustomResourceDefinitions (policy.weft.io, operator.weft.io).
    #[arg(long, conflicts_with = "operator")]
    crds: bool,

    /// The operator and a ControlPlane resource (with the CRDs) instead of the control
    /// plane's objects: the operator makes and upgrades those.
    #[arg(long, conflicts_with_all = ["webhook_ca_bundle", "webhook_fail_closed"])]
    operator: bool,

    /// The operator's namespace (with --operator).
    #[arg(long, default_value = manifests::OPERATOR, requires = "operator")]
    operator_namespace: String,

    /// weft's version: the tag of the weft-controller, weft-injector and weft-proxy images.
    #[arg(long = "version", value_name = "VERSION", default_value = install::DEFAULT_VERSION)]
    weft_version: String,

    /// The control plane's namespace.
    #[arg(long, short = 'n', default_value = install::DEFAULT_NAMESPACE)]
    namespace: String,

    /// High availability: 3 controller replicas spread over nodes, a PodDisruptionBudget,
    /// 2 injector replicas.
    #[arg(long)]
    ha: bool,

    /// Registry and path of the images ({registry}/weft-controller:{version}).
    #[arg(long, default_value = install::DEFAULT_IMAGE_REGISTRY)]
    image_registry: String,

    /// PEM file of the CA that signed the injector's certificate: the webhook's caBundle
    /// (without it, whoever makes the certificate fills it in).
    #[arg(long, value_name = "FILE")]
    webhook_ca_bundle: Option<PathBuf>,

    /// failurePolicy Fail: pods are not created while the injector is down (the default,
    /// Ignore, creates them without the proxy).
    #[arg(long)]
    webhook_fail_closed: bool,
}

#[derive(clap::Args)]
#[command(after_help = "\
Prints references to every object `weft install` makes, the webhook configuration \
first and the CRDs (with every weft custom resource in the cluster) last.

Example:
  weft uninstall | kubectl delete --ignore-not-found -f -")]
pub struct UninstallArgs {
    /// The control plane's namespace.
    #[arg(long, short = 'n', default_value = install::DEFAULT_NAMESPACE)]
    namespace: String,

    /// Leave the CRDs (and so the policy objects and ControlPlane resources) in place.
    #[arg(long)]
    keep_crds: bool,

    /// What `weft install --operator` made: the ControlPlane resource first (the
    /// control plane it owns goes with it), then the operator.
    #[arg(long)]
    operator: bool,

    /// The operator's namespace (with --operator).
    #[arg(long, default_value = manifests::OPERATOR, requires = "operator")]
    operator_namespace: String,
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let text = if args.crds {
        weft_k8s::crd::render()?
    } else if args.operator {
        let namespace = args.operator_namespace.clone();
        manifests::render(&options(args)?, &namespace, true)?
    } else {
        install::render(&options(args)?, true)?
    };
    print(&text)
}

fn options(args: InstallArgs) -> anyhow::Result<InstallOptions> {
    let webhook_ca_bundle = match &args.webhook_ca_bundle {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --webhook-ca-bundle {}", path.display()))?,
        ),
        None => None,
    };
    Ok(InstallOptions {
        version: args.weft_version,
        namespace: args.namespace,
        image_registry: args.image_registry,
        controller_replicas: if args.ha { install::HA_REPLICAS } else { 1 },
        webhook_ca_bundle,
        fail_closed: args.webhook_fail_closed,
        values: Default::default(),
    })
}

pub fn run_uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let opts = InstallOptions {
        namespace: args.namespace,
        ..InstallOptions::default()
    };
    if args.operator {
        return print(&manifests::uninstall(
            &opts,
            &args.operator_namespace,
            !args.keep_crds,
        )?);
    }
    print(&install::uninstall(&opts, !args.keep_crds)?)
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing the manifests to standard output"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InstallArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<InstallOptions> {
        let cli = Cli::try_parse_from(std::iter::once("weft-install").chain(args.iter().copied()))?;
        options(cli.args)
    }

    #[test]
    fn flags_become_install_options() {
        assert_eq!(parse(&[]).unwrap(), InstallOptions::default());
        let o = parse(&[
            "--ha",
            "--version",
            "v1.2.3",
            "-n",
            "mesh",
            "--image-registry",
            "registry.local:5000/weft",
            "--webhook-fail-closed",
        ])
        .unwrap();
        assert_eq!(
            o,
            InstallOptions {
                version: "v1.2.3".into(),
                namespace: "mesh".into(),
                image_registry: "registry.local:5000/weft".into(),
                controller_replicas: install::HA_REPLICAS,
                webhook_ca_bundle: None,
                fail_closed: true,
                values: Default::default(),
            }
        );
        let missing = parse(&["--webhook-ca-bundle", "/nonexistent/ca.crt"]).unwrap_err();
        assert!(
            format!("{missing:#}").contains("reading --webhook-ca-bundle /nonexistent/ca.crt"),
            "{missing:#}"
        );
    }
}
