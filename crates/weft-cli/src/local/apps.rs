//! How a workload's command runs in its pod: as which user, behind which wrapper,
//! with which environment and `PATH`. `weft up` starts workloads this way and
//! `weft exec` runs commands beside them the same way.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use weft_core::mesh::{AppUser, Workload, DEFAULT_APP_UID};

use super::{OUTBOUND_PORT, PROXY_UID};

/// Proxy settings a workload's process would otherwise inherit from `weft up`'s
/// environment; weft up sets its own in loopback mode and none with namespaces (where
/// iptables takes the app's traffic to its proxy).
pub const PROXY_ENV: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];
/// Environment variables to set.
pub type EnvVars = Vec<(String, String)>;

/// The UID and GID a workload's command runs as (namespace mode): its `user:`, else
/// [`DEFAULT_APP_UID`]. A user name is looked up on this machine; it must not be root
/// nor the proxies' UID (mesh.yaml's numbers are checked when it is loaded).
pub fn app_ids(w: &Workload) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = match &w.user {
        None => (DEFAULT_APP_UID, DEFAULT_APP_UID),
        Some(AppUser::Id { uid, gid }) => (*uid, *gid),
        Some(AppUser::Name(name)) => {
            let user = nix::unistd::User::from_name(name)
                .with_context(|| format!("workload {}: cannot look up user {name}", w.name))?
                .ok_or_else(|| {
                    anyhow!(
                        "workload {}: user: {name} is no user of this machine (give a UID instead, e.g. user: {DEFAULT_APP_UID})",
                        w.name
                    )
                })?;
            (user.uid.as_raw(), user.gid.as_raw())
        }
    };
    anyhow::ensure!(
        uid != 0 && gid != 0 && uid != PROXY_UID && gid != PROXY_UID,
        "workload {}: user: {} is UID {uid}, GID {gid}: apps may run neither as root nor as the proxies' UID {PROXY_UID}",
        w.name,
        w.user.as_ref().map_or(String::new(), ToString::to_string)
    );
    Ok((uid, gid))
}

/// How a workload's command starts inside its pod (after `ip netns exec`, as root): in
/// a mount namespace of its own where an empty read-only tmpfs covers the state
/// directory (identity, tokens, logs, other pods' files), then as `uid`:`gid` with no
/// supplementary groups and no way to gain privileges (setuid binaries), then `command`.
pub fn app_argv(state_dir: &Path, uid: u32, gid: u32, command: &[String]) -> Vec<String> {
    const SCRIPT: &str = r#"mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k,mode=0555 weft-hidden "$1" || exit 126
uid=$2 gid=$3
shift 3
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs -- "$@""#;
    let mut argv: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        SCRIPT,
        "weft-app",
    ]
    .map(str::to_owned)
    .to_vec();
    argv.extend([
        state_dir.display().to_string(),
        uid.to_string(),
        gid.to_string(),
    ]);
    argv.extend(command.iter().cloned());
    argv
}

/// A workload's environment in pod `name` at `ip` (besides what `weft up` inherited,
/// less [`PROXY_ENV`], and `PATH`): the pod's `WEFT_*` variables, in loopback mode its
/// listen address and proxy, then the workload's `env`.
pub fn app_env(name: &str, ip: Ipv4Addr, w: &Workload, loopback: bool) -> EnvVars {
    let mut env: Vec<(String, String)> = vec![
        ("WEFT_POD".into(), name.to_owned()),
        ("WEFT_POD_IP".into(), ip.to_string()),
        ("WEFT_WORKLOAD".into(), w.name.clone()),
        ("WEFT_NAMESPACE".into(), w.namespace.clone()),
        ("WEFT_SERVICE_ACCOUNT".into(), w.service_account.clone()),
        ("WEFT_ZONE".into(), w.zone.clone().unwrap_or_default()),
    ];
    if loopback {
        // No iptables: the app listens on its pod's address and sends HTTP to its
        // proxy itself, which resolves Service names.
        let proxy = format!("http://{}", SocketAddr::from((ip, OUTBOUND_PORT)));
        env.extend([
            ("WEFT_LISTEN_ADDR".into(), ip.to_string()),
            ("HTTP_PROXY".into(), proxy.clone()),
            ("http_proxy".into(), proxy),
            ("NO_PROXY".into(), "localhost,127.0.0.1,::1".into()),
            ("no_proxy".into(), "localhost,127.0.0.1,::1".into()),
        ]);
    }
    env.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Where copies of the binaries apps call by name go when apps cannot reach the build
/// directory: beside the state directory (which apps cannot see).
pub fn apps_bin_dir(state_dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.bin", state_dir.display()))
}

/// `PATH` for workload commands: the copies of the binaries (if any), this binary's
/// directory, then this process's `PATH`.
pub fn apps_path(apps_bin: Option<&Path>, exe_dir: &Path) -> anyhow::Result<OsString> {
    let mut dirs: Vec<PathBuf> = apps_bin.map(Path::to_owned).into_iter().collect();
    dirs.push(exe_dir.to_owned());
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(dirs)?)
}

/// Whether any user may reach `dir`: every directory from the root down to it can
/// be searched by others (mode o+x).
pub fn world_traversable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    dir.ancestors().all(|d| {
        d.as_os_str().is_empty()
            || std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::mesh::Mesh;

    fn workload(user: &str) -> Workload {
        let mesh = Mesh::parse(&[(
            "mesh.yaml".into(),
            format!("kind: Mesh\nworkloads:\n  - {{name: api, command: [x]{user}}}\n"),
        )])
        .unwrap();
        mesh.workloads[0].clone()
    }

    #[test]
    fn apps_run_as_their_user_or_2103_never_root_nor_the_proxies_uid() {
        assert_eq!(app_ids(&workload("")).unwrap(), (2103, 2103));
        assert_eq!(app_ids(&workload(", user: 3000")).unwrap(), (3000, 3000));
        assert_eq!(
            app_ids(&workload(", user: \"3000:3001\"")).unwrap(),
            (3000, 3001)
        );
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            app_ids(&workload(", user: nobody")).unwrap(),
            (nobody.uid.as_raw(), nobody.gid.as_raw())
        );
        let e = app_ids(&workload(", user: no-such-user-here")).unwrap_err();
        assert!(
            e.to_string()
                .contains("user: no-such-user-here is no user of this machine"),
            "{e}"
        );
    }

    #[test]
    fn apps_start_with_the_state_directory_hidden_then_drop_privileges() {
        let argv = app_argv(
            Path::new("/run/weft"),
            2103,
            2104,
            &["weft-demo-app".into(), "serve".into()],
        );
        assert_eq!(
            argv[..7],
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c"
            ]
        );
        let script = &argv[7];
        assert!(script.contains(r#"mount -t tmpfs -o ro,"#), "{script}");
        assert!(
            script.contains(r#"exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs -- "$@""#),
            "{script}"
        );
        // The paths and ids are arguments, never spliced into the script.
        assert_eq!(
            argv[8..],
            [
                "weft-app",
                "/run/weft",
                "2103",
                "2104",
                "weft-demo-app",
                "serve"
            ]
        );
    }
}
