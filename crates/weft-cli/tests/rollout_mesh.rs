//! `weft rollout` on the demo mesh (issue 11's canary tests): the demo with the canary
//! route (examples/routes/books-canary.yaml), and a short Rollout of books-v2. With
//! books-v2 failing 20 % of its requests the rollout shifts weight, sees the failures
//! in the proxies' metrics and sets the canary back to 0 % at once, exiting 1 with the
//! threshold and the measured value; healthy, it reaches 100 % while the callers count
//! not one failed request. Root (network namespaces); skipped with the reason
//! otherwise, failing under CI. Each test has its own prefix and state directory.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{eventually, MeshEnv as _};

common::ns_env!(Env, "o");

/// Pauses of a few seconds and 2 s windows: 30 requests a second reach books, so the
/// canary's 20 % gets about 12 per window.
const ROLLOUT: &str = r#"
apiVersion: weft.io/v1alpha1
kind: Rollout
metadata: {name: books}
spec:
  route: {name: books-canary}
  stableService: books-v1
  canaryService: books-v2
  steps:
    - setWeight: 20
    - pause: 4s
    - setWeight: 50
    - pause: 4s
    - setWeight: 100
  analysis:
    minSuccessRate: 0.95
    maxP99Latency: 1s
    window: 2s
    minRequests: 10
"#;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The demo (its callers reporting their totals every second), the canary route and
/// `fault` for zone-b, where books-v2 is the only server; `weft up` in the foreground.
fn demo(env: &mut Env, fault: &str) {
    let mesh = std::fs::read_to_string(examples().join("demo/mesh.yaml")).unwrap();
    let mesh = mesh
        .replace("--rps, \"20\"]", "--rps, \"20\", --report, 1s]")
        .replace("--rps, \"10\"]", "--rps, \"10\", --report, 1s]");
    assert_eq!(
        mesh.matches("--report, 1s").count(),
        2,
        "the callers of the demo changed"
    );
    env.write("mesh.yaml", &mesh);
    for (from, to) in [
        ("demo/services.yaml", "services.yaml"),
        ("routes/books-canary.yaml", "books-canary.yaml"),
    ] {
        env.write(to, &std::fs::read_to_string(examples().join(from)).unwrap());
    }
    std::fs::create_dir_all(env.dir.join("faults")).unwrap();
    std::fs::write(env.dir.join("faults/zone-b"), fault).unwrap();
    // Beside the mesh directory, not in it (the mesh reads every YAML file there).
    std::fs::write(rollout_file(env), ROLLOUT).unwrap();
    let up = env.up_foreground(&[]);
    env.up = Some(up);
}

/// (calls ok, calls failed) of a caller's last report, and how many it printed.
fn totals(env: &Env, pod: &str) -> Option<(u64, u64, usize)> {
    let log =
        std::fs::read_to_string(env.state_dir.join("logs").join(format!("{pod}.app.log"))).ok()?;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(", calls failed "))
        .collect();
    let line = lines.last()?;
    let count = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((count("calls ok ")?, count("calls failed ")?, lines.len()))
}

/// The weights of books-v1 and books-v2 in the route file now.
fn weights(env: &Env) -> (u64, u64) {
    let text = std::fs::read_to_string(env.dir.join("books-canary.yaml")).unwrap();
    let route = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "HTTPRoute")
        .expect("the route is in its file");
    let refs = &route["spec"]["rules"][0]["backendRefs"];
    let w = |i: usize| refs[i]["weight"].as_u64().unwrap();
    assert_eq!(
        (refs[0]["name"].as_str(), refs[1]["name"].as_str()),
        (Some("books-v1"), Some("books-v2"))
    );
    (w(0), w(1))
}

/// Waits until the callers have called for a while (the mesh serves), returning
/// their totals.
fn callers_running(env: &Env) -> [(u64, u64, usize); 2] {
    let both = eventually(Duration::from_secs(30), || {
        let (w, r) = (totals(env, "web-0")?, totals(env, "reader-0")?);
        (w.0 >= 20 && r.0 >= 10).then_some([w, r])
    });
    both.unwrap_or_else(|| panic!("the callers did not call within 30 s:\n{}", env.up_output()))
}

fn rollout_file(env: &Env) -> String {
    let base = env.dir.parent().unwrap();
    base.join("rollout.yaml").to_str().unwrap().to_owned()
}

#[test]
fn a_failing_canary_is_detected_and_rolled_back_to_0() {
    common::require_root!();
    let mut env = Env::new("f");
    demo(&mut env, "fail_rate=0.2");
    callers_running(&env);

    // weft stat route: the route's row, then one per backend, from the callers'
    // outbound proxies (90/10 as the example has it).
    let out = env.run(&["stat", "route", "--window", "2s"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| &r[..3]).collect::<Vec<_>>(),
        [
            ["NAME", "KIND", "BACKEND"],
            ["books-canary", "HTTPRoute", "*"],
            ["books-canary", "HTTPRoute", "books-v1"],
            ["books-canary", "HTTPRoute", "books-v2"],
        ],
        "{table}"
    );
    let rps = |row: &[&str]| row[4].parse::<f64>().unwrap();
    assert!(
        rps(&rows[2]) > rps(&rows[3]),
        "books-v1 has most of it: {table}"
    );
    assert_eq!(rows[2][3], "100.00%", "{table}");

    let started = Instant::now();
    let out = env.run(&["rollout", "run", &rollout_file(&env)]);
    let took = started.elapsed();
    eprintln!("weft rollout run took {took:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    // It shifted before it judged.
    assert!(
        stdout.contains("step 1/5: setWeight 20: stable 80 / canary 20"),
        "{stdout}"
    );
    // The message names the threshold and the value measured.
    assert!(
        stderr.contains("the canary books-v2 failed the analysis at step")
            && stderr.contains("is below spec.analysis.minSuccessRate 95.00%")
            && stderr.contains(
                "rolled back: HTTPRoute default/books-canary set to stable 100 / canary 0"
            ),
        "{stderr}"
    );
    assert_eq!(weights(&env), (100, 0), "the canary is back to 0 %");
    // Bounded: 2 pauses of 4 s at most, and the first failing window ends it.
    assert!(took < Duration::from_secs(15), "{took:?}");

    // status, from another process: the rollback and the weights.
    let out = env.run(&["rollout", "status", "books", "-o", "json", "--window", "1s"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["phase"], "RolledBack", "{status}");
    assert_eq!(
        status[0]["route_weights"],
        serde_json::json!({"stable": 100, "canary": 0})
    );
    assert!(
        status[0]["message"]
            .as_str()
            .unwrap()
            .contains("minSuccessRate"),
        "{status}"
    );
    let measured = status[0]["last_analysis"]["success"].as_f64().unwrap();
    assert!(measured < 0.95, "{status}");

    // The proxies follow the rollback: within a few seconds books-v2 gets nothing.
    let quiet = eventually(Duration::from_secs(10), || {
        let out = env.run(&["stat", "route/books-canary", "-o", "json", "--window", "1s"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let v2 = rows
            .as_array()?
            .iter()
            .find(|r| r["backend"] == "books-v2")?;
        let v1 = rows
            .as_array()?
            .iter()
            .find(|r| r["backend"] == "books-v1")?;
        (v2["requests"] == 0 && v1["requests"].as_u64()? > 0).then_some(())
    });
    assert!(
        quiet.is_some(),
        "books-v2 still gets requests after the rollback"
    );
}

#[test]
fn a_healthy_canary_reaches_100_without_a_failed_request() {
    common::require_root!();
    let mut env = Env::new("h");
    demo(&mut env, "fail_rate=0");
    callers_running(&env);

    let started = Instant::now();
    let run = env
        .weft(&["rollout", "run", &rollout_file(&env)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // From another process while it runs: status shows it progressing, and a second
    // run of the same rollout is refused.
    let progressing = eventually(Duration::from_secs(5), || {
        let out = env
            .weft(&[
                "rollout", "status", "books", "-o", "json", "--window", "500ms",
            ])
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status[0]["phase"] == "Progressing" && status[0]["weights"]["canary"] == 20)
            .then_some(status)
    });
    let status = progressing.expect("status shows the rollout at 20 %");
    assert_eq!(status[0]["runner_gone"], false, "{status}");
    let again = env.run(&["rollout", "run", &rollout_file(&env)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("rollout default/books is already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let out = run.wait_with_output().unwrap();
    let took = started.elapsed();
    eprintln!("weft rollout run took {took:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("step 3/5: setWeight 50: stable 50 / canary 50"),
        "{stdout}"
    );
    assert!(stdout.contains(": ok"), "the canary was judged: {stdout}");
    assert!(
        stdout.contains("rollout default/books succeeded"),
        "{stdout}"
    );
    assert_eq!(weights(&env), (0, 100));
    assert!(took < Duration::from_secs(15), "{took:?}");

    // All of books' traffic goes to books-v2 now.
    let moved = eventually(Duration::from_secs(10), || {
        let out = env.run(&["stat", "route/books-canary", "-o", "json", "--window", "1s"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let v2 = rows
            .as_array()?
            .iter()
            .find(|r| r["backend"] == "books-v2")?;
        let v1 = rows
            .as_array()?
            .iter()
            .find(|r| r["backend"] == "books-v1")?;
        (v1["requests"] == 0 && v2["requests"].as_u64()? > 0).then_some(())
    });
    assert!(
        moved.is_some(),
        "books-v1 still gets requests at 100 % canary"
    );

    // The callers' own counts, from a report printed after the rollout ended: not
    // one failed call from the start of the mesh on.
    let [web, reader] = [
        totals(&env, "web-0").unwrap(),
        totals(&env, "reader-0").unwrap(),
    ];
    let after = eventually(Duration::from_secs(5), || {
        let (w, r) = (totals(&env, "web-0")?, totals(&env, "reader-0")?);
        (w.2 > web.2 && r.2 > reader.2).then_some((w, r))
    });
    let Some((web, reader)) = after else {
        panic!(
            "the callers printed no totals after the rollout:\n{}",
            env.up_output()
        );
    };
    eprintln!(
        "web: {} ok, {} failed; reader: {} ok, {} failed",
        web.0, web.1, reader.0, reader.1
    );
    assert_eq!((web.1, reader.1), (0, 0), "calls failed during the rollout");

    let out = env.run(&["rollout", "status", "books", "--window", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rollout default/books: Succeeded, step 5/5 done"),
        "{text}"
    );
    assert!(
        text.contains("weights stable 0 / canary 100: canary 100%"),
        "{text}"
    );
}
