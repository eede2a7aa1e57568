//! Supervision and readiness of the local mesh (root): a pod whose proxy is killed is
//! `ready: false` in the pods file at once (so the controller stops advertising it),
//! its proxy is restarted and it is ready again, while calls to its Service keep
//! succeeding through the other replica; a proxy that stops answering takes its pod
//! out until it answers again; a killed app is restarted and counted; a
//! killed controller is restarted (in a detached mesh, whose `weft up -d` leaves a
//! supervisor running) and the proxies keep working; `weft down` after a `kill -9` of
//! the supervisor still finds every current process. Each test has its own prefix and
//! state directory.

#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_core::pods::PodsFile;

mod common;
use common::{eventually, mesh_yaml, require_root, stat, MeshEnv as _, NsEnv, SERVICES};

common::ns_env!(Env, "s");

impl Env {
    /// (pid, restarts) of the controller in the state file.
    fn controller(&self) -> (u32, u64) {
        let c = &self.state()["controller"];
        (
            c["pid"].as_u64().expect("a controller") as u32,
            c["restarts"].as_u64().unwrap_or(0),
        )
    }

    /// Whether `pod` is `ready` in the pods file.
    fn ready_in_pods_file(&self, pod: &str) -> Option<bool> {
        let file = PodsFile::load(&self.state_dir.join("pods.yaml")).ok()??;
        file.pods.iter().find(|p| p.name == pod).map(|p| p.ready)
    }
}

fn kill_9(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// The pod that answered a demo app's reply (`... (pod books-1, zone ...)`).
fn answered_by(text: &str) -> Option<String> {
    text.split("(pod ")
        .nth(1)
        .and_then(|r| r.split([',', ')']).next())
        .map(str::to_owned)
}

/// Calls the books Service from the client pod, about 15 a second, on a thread of its
/// own until stopped: (pod that answered, or the failure) per call.
struct Caller {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Caller {
    fn start(netns: String) -> Caller {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), results.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let out = NsEnv::get_in(&netns, &format!("http://books.default.svc:8080/c/{i}"));
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let result = if out.status.success() && text.starts_with("200 books") {
                    Ok(answered_by(&text).unwrap_or_default())
                } else {
                    Err(format!(
                        "{text}{}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                };
                r.lock().unwrap().push(result);
                // About 15 calls a second: a steady caller, not a CPU hog beside the
                // other tests (this paces the load; it waits for nothing).
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Caller {
            stop,
            results,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    fn stop(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_killed_proxy_takes_its_pod_out_until_restarted_and_a_killed_app_is_restarted() {
    require_root!();
    let mut env = Env::new("p");
    env.write("mesh.yaml", &mesh_yaml(2));
    env.write("services.yaml", SERVICES);
    let up = env.up_foreground(&[]);
    env.up = Some(up);
    assert_eq!(env.ready_in_pods_file("books-0"), Some(true));

    // Calls to the Service all along: both replicas answer before the kill.
    let caller = Caller::start(env.netns("client-0"));
    let both = eventually(Duration::from_secs(15), || {
        let r = caller.results.lock().unwrap();
        let pods: std::collections::BTreeSet<&str> =
            r.iter().filter_map(|r| r.as_deref().ok()).collect();
        (pods.contains("books-0") && pods.contains("books-1")).then_some(())
    });
    assert!(both.is_some(), "books-0 and books-1 did not both answer");

    // kill -9 books-0's proxy: out of the endpoints within 2 s.
    let (proxy, restarts) = env.proc("books-0", "proxy");
    assert_eq!(restarts, 0);
    let killed = Instant::now();
    let calls_before = caller.count();
    kill_9(proxy);
    let out = eventually(Duration::from_secs(2), || {
        (env.ready_in_pods_file("books-0") == Some(false)).then(|| killed.elapsed())
    });
    let out = out.unwrap_or_else(|| {
        panic!(
            "books-0 was not ready: false in the pods file within 2s of its proxy's kill:\n{}",
            env.up_output()
        )
    });
    eprintln!("books-0 out of the endpoints {out:?} after its proxy was killed");

    // Restarted (a new pid in the state file, counted) and ready again.
    let back = eventually(Duration::from_secs(20), || {
        let (pid, restarts) = env.proc("books-0", "proxy");
        (pid != proxy && restarts == 1 && env.ready_in_pods_file("books-0") == Some(true))
            .then(|| killed.elapsed())
    });
    let back = back.unwrap_or_else(|| {
        panic!(
            "books-0's proxy was not restarted and ready within 20s:\n{}",
            env.up_output()
        )
    });
    eprintln!("books-0 ready again {back:?} after its proxy was killed");
    let (pid, _) = env.proc("books-0", "proxy");
    assert!(
        stat(pid).is_some_and(|(s, _)| s != 'Z'),
        "the new proxy runs"
    );
    // It takes calls again.
    let serving = eventually(Duration::from_secs(15), || {
        let r = caller.results.lock().unwrap();
        r[calls_before..]
            .iter()
            .rev()
            .take(20)
            .any(|r| r.as_deref() == Ok("books-0"))
            .then_some(())
    });
    assert!(
        serving.is_some(),
        "books-0 answered no call after its restart"
    );
    let results = caller.stop();
    let after_kill = &results[calls_before..];
    let failed: Vec<&String> = after_kill.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed after the kill: {failed:?}",
        failed.len(),
        after_kill.len()
    );
    assert!(
        after_kill.iter().any(|r| r.as_deref() == Ok("books-1")),
        "books-1 answered no call while books-0 was out"
    );
    let output = env.up_output();
    assert!(
        output.contains("pod books-0: proxy (pid ") && output.contains("(signal 9 (SIGKILL))"),
        "the exit was not logged with its status:\n{output}"
    );

    // kill -9 the app: restarted, restart count 1 (in the state file and the summary).
    let (app, restarts) = env.proc("books-1", "app");
    assert_eq!(restarts, 0);
    kill_9(app);
    let restarted = eventually(Duration::from_secs(20), || {
        let (pid, restarts) = env.proc("books-1", "app");
        (pid != app && restarts == 1 && env.ready_in_pods_file("books-1") == Some(true))
            .then_some(pid)
    });
    let new_app = restarted.unwrap_or_else(|| {
        panic!(
            "books-1's app was not restarted and ready within 20s:\n{}",
            env.up_output()
        )
    });
    assert!(stat(new_app).is_some_and(|(s, _)| s != 'Z'));
    let state = env.state();
    let books1 = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "books-1")
        .unwrap();
    assert_eq!(books1["procs"].as_array().unwrap().len(), 2, "{books1}");
    // The summary (every second) shows the restarts per pod and the controller.
    let summary = eventually(Duration::from_secs(10), || {
        let out = env.up_output();
        let last = out.rsplit("POD ").next()?.to_owned();
        let row = |pod: &str| {
            last.lines()
                .find(|l| l.starts_with(&format!("{pod} ")))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
        };
        let (b0, b1) = (row("books-0")?, row("books-1")?);
        // POD ZONE IP STATUS RESTARTS
        (b0[3] == "ready" && b0[4] == "1" && b1[3] == "ready" && b1[4] == "1").then_some(last)
    });
    let summary = summary.unwrap_or_else(|| {
        panic!(
            "the summary did not show books-0 and books-1 ready with 1 restart:\n{}",
            env.up_output()
        )
    });
    assert!(
        summary.contains("controller: 198.18.0.1:8090  ready"),
        "the summary does not show the controller:\n{summary}"
    );

    // A proxy that stops answering (SIGSTOP: it runs but its /ready does not answer)
    // takes its pod out after two probes, and back in once it answers; no restart.
    let (proxy, restarts) = env.proc("books-0", "proxy");
    kill(Pid::from_raw(proxy as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let out = eventually(Duration::from_secs(3), || {
        (env.ready_in_pods_file("books-0") == Some(false)).then(|| stopped.elapsed())
    });
    kill(Pid::from_raw(proxy as i32), Signal::SIGCONT).unwrap();
    let out = out.unwrap_or_else(|| {
        panic!(
            "books-0 stayed ready with its proxy stopped:
{}",
            env.up_output()
        )
    });
    eprintln!("books-0 out of the endpoints {out:?} after its proxy stopped answering");
    let back = eventually(Duration::from_secs(5), || {
        (env.ready_in_pods_file("books-0") == Some(true)).then_some(())
    });
    assert!(
        back.is_some(),
        "books-0 did not come back:
{}",
        env.up_output()
    );
    assert_eq!(env.proc("books-0", "proxy"), (proxy, restarts));
    assert!(env
        .up_output()
        .contains("pod books-0: proxy not ready: no answer within"));

    // Crash: kill -9 weft up; `weft down` finds the restarted processes too.
    env.down_after_kill_9_of_up();
}

#[test]
fn a_detached_mesh_restarts_its_controller_and_down_after_kill_9_of_the_supervisor() {
    require_root!();
    let env = Env::new("c");
    env.write("mesh.yaml", &mesh_yaml(2));
    env.write("services.yaml", SERVICES);
    let out = env.run(&["up", "-d", env.dir.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("controller: 198.18.0.1:8090  ready  pid ") && stdout.contains("RESTARTS"),
        "weft up -d does not show the controller and restarts:\n{stdout}"
    );
    // The supervisor runs on, recorded as the mesh's owner.
    let owner = env.state()["owner"]["pid"].as_u64().expect("a supervisor") as u32;
    assert!(stat(owner).is_some_and(|(s, _)| s != 'Z'));

    let client = env.netns("client-0");
    let call = |path: &str| -> Result<String, String> {
        let out = NsEnv::get_in(&client, &format!("http://books.default.svc:8080/{path}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.starts_with("200 books") {
            Ok(answered_by(&text).unwrap_or_default())
        } else {
            Err(text)
        }
    };
    call("first").expect("a first call");

    // kill -9 the controller: restarted with a new pid in the state file, counted.
    let (controller, restarts) = env.controller();
    assert_eq!(restarts, 0);
    let killed = Instant::now();
    kill_9(controller);
    let restarted = eventually(Duration::from_secs(20), || {
        let (pid, restarts) = env.controller();
        (pid != controller && restarts == 1 && stat(pid).is_some_and(|(s, _)| s != 'Z'))
            .then_some(pid)
    });
    let log = env.state_dir.join("logs").join("weft-up.log");
    restarted.unwrap_or_else(|| {
        panic!(
            "the controller was not restarted within 20s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    eprintln!("controller restarted after {:?}", killed.elapsed());
    // The proxies keep working meanwhile and after, and get their streams back from the
    // new controller.
    for i in 0..10 {
        call(&format!("after/{i}")).expect("a call after the controller's restart");
    }
    let resumed = eventually(Duration::from_secs(20), || {
        let m = env.metrics("client-0")?;
        (m.sum("destination_stream_errors_total", &[]) >= 1.0
            && m.sum("destination_streams", &[]) >= 1.0)
            .then_some(())
    });
    assert!(
        resumed.is_some(),
        "the client's proxy did not reopen its destination stream:\n{}",
        env.metrics("client-0").map(|m| m.text).unwrap_or_default()
    );
    // A pod leaving reaches the proxies through the new controller: kill -9 books-1's
    // proxy; once it is out, calls are answered by books-0.
    let (proxy, _) = env.proc("books-1", "proxy");
    kill_9(proxy);
    let out = eventually(Duration::from_secs(2), || {
        (env.ready_in_pods_file("books-1") == Some(false)).then_some(())
    });
    assert!(out.is_some(), "books-1 stayed ready in the pods file");
    for i in 0..5 {
        assert_eq!(call(&format!("out/{i}")).as_deref(), Ok("books-0"));
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("controller (pid ") && log_text.contains("controller restarted (pid "),
        "the supervisor's log does not tell of the restart:\n{log_text}"
    );

    // kill -9 the supervisor: `weft down` still finds every current process.
    let procs = env.recorded_procs();
    kill_9(owner);
    let gone = eventually(Duration::from_secs(5), || {
        stat(owner).is_none_or(|(s, _)| s == 'Z').then_some(())
    });
    assert!(gone.is_some());
    let procs: Vec<(u32, u64)> = procs.into_iter().chain(env.recorded_procs()).collect();
    let out = env.run(&["down"]);
    assert!(out.status.success());
    env.assert_nothing_left(&procs);
}
