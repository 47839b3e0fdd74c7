//! Several threads, per core (`server.scheduler = "per-core"`, the default): each thread accepts
//! on a socket of its own bound to the proxy's address and serves what it accepts; the places
//! under `max_connections` are one count for all of them; a port such a gateway holds is
//! refused to a second one; the work-stealing scheduler stays available.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::connections::{connect, get1, h1, start_on};
use crate::support::get;
use crate::support::process::{child_config, Process};
use crate::support::upstream::RecordingUpstream;
use tollgate::Listeners;

const BOUND: Duration = Duration::from_secs(10);

/// `n` connections at once, one `GET /public/…` each; returns how many were answered 200 within
/// `within` (the rest are still waiting then).
async fn answered(addr: std::net::SocketAddr, n: usize, within: Duration) -> usize {
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(async move {
            let (mut sender, _conn) = h1(connect(addr).await).await;
            let status = get1(&mut sender, &format!("/public/{i}"))
                .await
                .unwrap()
                .status;
            // Held open a moment, so that the connection keeps its place while others wait.
            tokio::time::sleep(Duration::from_millis(200)).await;
            status
        });
    }
    let mut ok = 0;
    let _ = tokio::time::timeout(within, async {
        while let Some(status) = set.join_next().await {
            assert_eq!(status.unwrap(), 200);
            ok += 1;
        }
    })
    .await;
    ok
}

#[tokio::test]
async fn every_threads_socket_is_served() {
    let upstream = RecordingUpstream::start().await;
    let listeners = Listeners::ephemeral_per_core(3).await.unwrap();
    assert_eq!(listeners.per_core.len(), 2);
    let port = listeners.proxy.local_addr().unwrap().port();
    for socket in &listeners.per_core {
        assert_eq!(
            socket.local_addr().unwrap().port(),
            port,
            "one port for all"
        );
    }
    let app = start_on(listeners, "", &upstream.url(), "", "");
    // The kernel spreads new connections over the three sockets by a hash of their addresses,
    // so each gets some of 96 (all on two of them: odds about 3 × (2/3)^96). A socket no thread
    // served would leave its share unanswered.
    assert_eq!(answered(app.proxy_addr, 96, BOUND).await, 96);
    assert_eq!(upstream.count(), 96);
    app.shutdown().await;
}

#[tokio::test]
async fn max_connections_counts_the_connections_of_every_thread() {
    let upstream = RecordingUpstream::start().await;
    let app = start_on(
        Listeners::ephemeral_per_core(2).await.unwrap(),
        "max_connections = 2",
        &upstream.url(),
        "",
        "",
    );
    // Two connections hold both places...
    let (mut a, a_conn) = h1(connect(app.proxy_addr).await).await;
    let (mut b, _b_conn) = h1(connect(app.proxy_addr).await).await;
    assert_eq!(get1(&mut a, "/public/a").await.unwrap().status, 200);
    assert_eq!(get1(&mut b, "/public/b").await.unwrap().status, 200);
    // ...so eight more, on whichever thread's socket they land, are not served (with a count
    // per thread, those landing on a thread with a place left would be)...
    let addr = app.proxy_addr;
    let waiting = tokio::spawn(async move { answered(addr, 8, BOUND).await });
    tokio::time::sleep(Duration::from_millis(500)).await; // the wait under test
    assert_eq!(
        upstream.count(),
        2,
        "a connection over max_connections was served"
    );
    // ...until the places free: then every one is, two at a time, whichever thread took it.
    drop((a, b));
    a_conn.abort();
    drop(_b_conn);
    assert_eq!(waiting.await.unwrap(), 8);
    assert_eq!(upstream.count(), 10);
    app.shutdown().await;
}

#[tokio::test]
async fn a_port_a_per_core_gateway_holds_is_refused_to_a_second_one() {
    let (first, rest) = tollgate::server::bind_proxy(([127, 0, 0, 1], 0).into(), 2)
        .await
        .unwrap();
    let addr = first.local_addr().unwrap();
    // SO_REUSEPORT alone would let these share the port, and take half its connections.
    for threads in [2, 1] {
        let e = tollgate::server::bind_proxy(addr, threads)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::AddrInUse,
            "{threads} thread(s): {e}"
        );
    }
    // The error at start names the key.
    let config = tollgate::config::from_toml_str(&format!(
        "[server]\nlisten = \"{addr}\"\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n"
    ))
    .unwrap();
    let e = Listeners::bind(&config).await.err().unwrap().to_string();
    assert!(e.starts_with(&format!("server.listen {addr}: ")), "{e}");
    // Freed, the port is bound again (the refused attempts left nothing behind).
    drop((first, rest));
    let (again, more) = tollgate::server::bind_proxy(addr, 2).await.unwrap();
    assert_eq!((again.local_addr().unwrap(), more.len()), (addr, 1));
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn the_binary_runs_per_core_threads_or_one_work_stealing_runtime() {
    let upstream = RecordingUpstream::start().await;
    let routes = format!(
        "[[upstream]]\nid = \"up\"\nurl = \"{}\"\n\n[[route]]\nid = \"public\"\nprefix = \"/public/\"\nupstream = \"up\"\nauth = \"none\"\n",
        upstream.url()
    );
    for (server, line, workers) in [
        ("threads = 3", r#""threads":3,"scheduler":"per-core""#, 2),
        (
            "threads = 2\nscheduler = \"work-stealing\"",
            r#""threads":2,"scheduler":"multi-threaded""#,
            0,
        ),
        (
            "threads = 1",
            r#""threads":1,"scheduler":"single-threaded""#,
            0,
        ),
    ] {
        let config = child_config(&format!("[server]\n{server}\n\n{routes}"), "info");
        let mut p = Process::start(&config).await;
        let log = p.wait_for_log("tollgate listening", 1).await;
        assert!(
            log.iter()
                .any(|l| l.contains("tollgate listening") && l.contains(line)),
            "{server}: {log:?}"
        );
        let named = thread_names(p.pid())
            .into_iter()
            .filter(|n| n.starts_with("tollgate-w"))
            .count();
        assert_eq!(named, workers, "{server}: per-core worker threads");
        for _ in 0..16 {
            assert_eq!(get(&p.url("/public/x"), &[]).await.status, 200, "{server}");
        }
        p.signal("TERM");
        let status = p.wait(BOUND).await;
        assert!(status.success(), "{server}: {status:?}: {:?}", p.logs());
    }

    // A second gateway on the first one's port is refused, and says where.
    let config = child_config(&format!("[server]\nthreads = 2\n\n{routes}"), "info");
    let mut first = Process::start(&config).await;
    let taken = first.url("").trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second.toml");
    std::fs::write(
        &second,
        config.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{taken}\""),
            1,
        ),
    )
    .unwrap();
    // (Spawned, not run to its end: a second gateway that got the port would serve for ever.)
    let mut second = Process::spawn(&["run", "--config", second.to_str().unwrap()], &[]);
    assert!(!second.wait(BOUND).await.success());
    let text = second.logs().join("\n");
    assert!(
        text.contains(&format!("server.listen {taken}: ")) && text.contains("in use"),
        "{text}"
    );
    assert_eq!(
        get(&first.url("/public/y"), &[]).await.status,
        200,
        "the first still serves"
    );
    first.signal("TERM");
    assert!(first.wait(BOUND).await.success());
}
