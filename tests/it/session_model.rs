//! A model of the seat accounting, checked by random sequences (proptest): the gateway and its
//! session store (memory, or a real `redis-server`) in front of the fake legacy API, driven
//! through bursts of requests of a few grants (single and concurrent mode), clients hanging up
//! while queued, mid-login or mid-request, logins that succeed, are refused, meet the API login
//! limit, are slow or meet a stopped upstream, forced upstream expiry, idle sweeps, client and
//! admin logouts, reloads, and a final shutdown.
//!
//! After every step, with the step's requests done and no login running:
//! - seats held ≤ `max_upstream_sessions` at the gateway, and at the upstream (peak) beyond
//!   it only by the sessions whose logout failed (design §6.9.4 gives their seats back);
//! - every live upstream session is a record holding a seat (no orphan upstream), and every
//!   record holding a seat is a live upstream session unless the model ended it upstream
//!   behind the gateway's back (then it is a known ghost until it is used or swept);
//! - no session ever served more requests at once than `max_inflight_per_session`, a logout
//!   counted as one (so no logout ran with a request in flight);
//! - no login was attempted while the credential cooldown was open;
//! - every answer is one of the gateway's (never a 500 or a leak).
//!
//! Bounded for CI (`TOLLGATE_MODEL_CASES` cases of up to 10 steps, 6 by default); set it higher
//! for a longer run.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tollgate::demo::legacy::{Counters, LegacyOptions};

use crate::support::http::Reply;
use crate::support::legacy::{assert_clean, Env, Setup, Store};
use crate::support::{eventually, get};

const CAP: u64 = 2;
/// The gateway's count of logouts that failed after their retries (design §6.9.4).
const FAILED_LOGOUTS: &str = r#"tollgate_upstream_logouts_total{result="failed",upstream="erp"}"#;
const COOLDOWN: Duration = Duration::from_millis(1500);
/// `max_parallel_logins` (its default): login lanes once the credentials are proven.
const MAX_PARALLEL_LOGINS: usize = 2;
const SESSION: &str = r#"max_upstream_sessions = 2
max_sessions_per_grant = 2
idle_ttl = "500ms"
admission_wait = "400ms"
max_queue_wait = "2s"
login_failure_cooldown = "1500ms"
relogin_min_interval = "500ms"
login_timeout = "2s"
min_idle_before_evict = "0s""#;

/// One request of a burst.
#[derive(Debug, Clone)]
struct Req {
    grant: u8,
    concurrent: bool,
    /// `Slow?ms=` for a request that takes a while upstream.
    slow_ms: Option<u16>,
    /// The client hangs up after this long (queued, mid-login or mid-request, depending).
    cancel_after_ms: Option<u16>,
}

/// How the upstream answers logins from now on.
#[derive(Debug, Clone, Copy)]
enum Logins {
    Good,
    Slow,
    WrongPassword,
    Full,
    Down,
}

#[derive(Debug, Clone)]
enum Op {
    Burst(Vec<Req>),
    Logins(Logins),
    /// The upstream ends every session by itself (no logout).
    Expire,
    /// The client's logout call, or the admin's.
    Logout {
        grant: u8,
        admin: bool,
    },
    /// Long enough for the idle sweep to log every unused session out.
    Idle,
    /// A reload that changes the upstream: only a timeout (its sessions go on), or its session
    /// profile (its sessions are retired).
    Reload {
        profile: bool,
    },
}

fn req() -> impl Strategy<Value = Req> {
    (
        0u8..4,
        any::<bool>(),
        prop::option::of(50u16..300),
        prop::option::weighted(0.3, 10u16..400),
    )
        .prop_map(|(grant, concurrent, slow_ms, cancel_after_ms)| Req {
            grant,
            concurrent,
            slow_ms,
            cancel_after_ms,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(req(), 1..5).prop_map(Op::Burst),
        2 => prop_oneof![
            3 => Just(Logins::Good),
            2 => Just(Logins::Slow),
            2 => Just(Logins::WrongPassword),
            2 => Just(Logins::Full),
            1 => Just(Logins::Down),
        ]
        .prop_map(Op::Logins),
        1 => Just(Op::Expire),
        1 => (0u8..4, any::<bool>()).prop_map(|(grant, admin)| Op::Logout { grant, admin }),
        1 => Just(Op::Idle),
        1 => any::<bool>().prop_map(|profile| Op::Reload { profile }),
    ]
}

/// What the model knows beyond the gateway's and the fake's own counts.
#[derive(Default)]
struct Model {
    /// Records that may still hold a seat the upstream already freed (ended behind the
    /// gateway's back); cleared once everything was swept.
    ghosts: bool,
    /// When reloads happened (a reload starts a fresh credential gate).
    reloads: Vec<Instant>,
    /// The timeout and the profile (locale) toggles of the current configuration.
    retuned: bool,
    reprofiled: bool,
}

fn config_for(e: &Env, m: &Model) -> tollgate::Config {
    let mut text = e.config.clone();
    if m.retuned {
        text = text.replacen("timeout = \"10s\"", "timeout = \"11s\"", 1);
    }
    if m.reprofiled {
        text = text.replacen("branch = \"HQ\"", "branch = \"HQ\"\nlocale = \"en-GB\"", 1);
    }
    tollgate::config::from_toml_str(&text).unwrap()
}

/// One request of a burst, as owned data a task can take: its URL, its `Authorization` and
/// when its client hangs up.
fn prepare(e: &Env, r: &Req) -> (String, String, Option<u16>) {
    let path = match r.slow_ms {
        Some(ms) => format!("/entity/Default/24.200.001/Slow?ms={ms}"),
        None => "/entity/Default/24.200.001/Echo".to_owned(),
    };
    let token = e.token(&format!("g{}", r.grant), r.concurrent);
    (
        e.gw.url(&path),
        format!("Bearer {token}"),
        r.cancel_after_ms,
    )
}

async fn send(url: String, auth: String, cancel_after_ms: Option<u16>) -> Option<Reply> {
    let headers = [("authorization", auth.as_str())];
    let call = get(&url, &headers);
    match cancel_after_ms {
        Some(ms) => tokio::time::timeout(Duration::from_millis(u64::from(ms)), call)
            .await
            .ok(),
        None => Some(call.await),
    }
}

/// An answer the gateway may give in this model: never a 500, never an upstream detail.
fn check_answer(r: &Reply) {
    assert_clean(r);
    match r.status.as_u16() {
        200 => {}
        429 | 502 | 503 => {
            let code = r.json()["error"].as_str().unwrap_or_default().to_owned();
            assert!(
                [
                    "grant_busy",
                    "grant_session_limit",
                    "upstream_capacity_exhausted",
                    "upstream_seats_exhausted",
                    "upstream_login_failed",
                    "upstream_login_error",
                    "upstream_auth_failed",
                    "upstream_session_expired",
                    // The upstream's own error answer (a stopped upstream's 503), sanitized.
                    "upstream_error",
                ]
                .contains(&code.as_str()),
                "unexpected error {code}: {}",
                r.text()
            );
            // The design's table: every 429 and 503, and a refused login, say when to retry.
            let needs_retry_after =
                (r.status != 502 || code == "upstream_login_failed") && code != "upstream_error";
            assert!(
                !needs_retry_after || r.header("retry-after").is_some(),
                "{code} without Retry-After"
            );
        }
        other => panic!("unexpected status {other}: {}", r.text()),
    }
}

async fn apply(e: &Env, m: &mut Model, op: &Op) {
    match op {
        Op::Burst(reqs) => {
            let mut tasks = Vec::new();
            for r in reqs {
                let (url, auth, cancel) = prepare(e, r);
                tasks.push(tokio::spawn(send(url, auth, cancel)));
            }
            for t in tasks {
                if let Some(r) = t.await.unwrap() {
                    check_answer(&r);
                }
            }
        }
        Op::Logins(mode) => {
            e.fake.configure_with(|o| {
                o.login_delay = match mode {
                    Logins::Slow => Duration::from_millis(250),
                    _ => Duration::ZERO,
                };
                o.unavailable = matches!(mode, Logins::Down);
            });
            e.fake.set_password(
                "admin",
                if matches!(mode, Logins::WrongPassword) {
                    "changed"
                } else {
                    "123"
                },
            );
            e.fake
                .reserve_seats(if matches!(mode, Logins::Full) { 3 } else { 0 });
        }
        Op::Expire => {
            e.fake.expire(None);
            m.ghosts = true;
        }
        Op::Logout { grant, admin } => {
            if *admin {
                // The admin names a grant by its key: one of the records'.
                let records = e.records().await;
                if let Some(r) = records.get(usize::from(*grant) % records.len().max(1)) {
                    let key = r["grant"].as_str().unwrap().to_owned();
                    let del = crate::support::request(
                        http::Request::delete(format!("{}/sessions/{key}", e.gw.admin))
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .unwrap(),
                    )
                    .await;
                    assert!(
                        [200, 404, 409].contains(&del.status.as_u16()),
                        "{}",
                        del.text()
                    );
                }
            } else {
                let t = e.token(&format!("g{grant}"), false);
                let r = e.send("POST", "/entity/auth/logout", &t, None, b"").await;
                assert_eq!(r.status, 204, "{}", r.text());
            }
        }
        Op::Idle => {
            // The sweep takes every session no request uses (idle_ttl) out of the store, then
            // logs it out: once no record holds a seat, none is a ghost any more. The logouts
            // themselves may still run (a failed one is retried): `check` waits for them.
            eventually(
                "the idle sweep takes every record holding a seat",
                Duration::from_secs(10),
                || e.seated(),
                |seated| *seated == 0,
            )
            .await;
            m.ghosts = false;
        }
        Op::Reload { profile } => {
            if *profile {
                m.reprofiled = !m.reprofiled;
            } else {
                m.retuned = !m.retuned;
            }
            m.reloads.push(Instant::now());
            let app = e.gw.app.as_ref().unwrap();
            app.gateway.apply(&config_for(e, m)).await.unwrap();
        }
    }
}

/// The seat counts `check` compares.
#[derive(Debug)]
struct Seats {
    /// Upstream sessions (the fake's).
    live: u64,
    /// The gateway's records holding a seat.
    seated: u64,
    /// The gateway's seat gauge.
    counted: u64,
    failed_logouts: u64,
}

/// The invariants that hold at every step's end.
async fn check(e: &Env, m: &Model, step: usize, op: &Op) {
    // No login running, no request running (the step awaited its requests).
    let app = e.gw.app.as_ref().unwrap();
    eventually(
        &format!("step {step} ({op:?}): every login finishes (logins running)"),
        Duration::from_secs(8),
        || {
            std::future::ready(
                app.gateway
                    .pools()
                    .iter()
                    .map(|p| p.logins_running())
                    .sum::<usize>(),
            )
        },
        |running| *running == 0,
    )
    .await;
    let c = e.counters();
    // The upstream may hold more sessions than the cap only by those whose logout failed: by
    // design (§6.9.4) the gateway then drops the session and gives its seat back, and the
    // upstream closes it by itself later (its own login limit still guards the licence, §6.8.4).
    // The counter is read after the peak and only grows, and a seat is given back only after
    // its failure was counted, so a later login over the cap always finds it counted.
    let failed = e.metrics().await.count(FAILED_LOGOUTS);
    assert!(
        c.peak_seats <= CAP + failed,
        "step {step} ({op:?}): upstream seats over the cap beyond the {failed} sessions whose logout failed: {c:?}"
    );
    assert!(
        c.max_concurrency_per_session <= 1,
        "step {step} ({op:?}): a session served two requests at once, or was logged out under one: {c:?}"
    );
    assert_eq!(
        (
            c.mixed_session_cookies,
            c.foreign_cookie,
            c.authorization_header_seen,
            c.logouts_411
        ),
        (0, 0, 0, 0),
        "step {step} ({op:?}): {c:?}"
    );
    // Orphans: give logouts and retirements a moment to land (a failing logout is retried
    // after 1 s and 4 s), then compare. An upstream session the gateway does not count is
    // allowed only as one whose logout failed (design §6.9.4: the seat count is released then,
    // and the upstream closes the session by itself); a record the upstream no longer has only
    // after the model ended sessions upstream.
    eventually(
        &format!(
            "step {step} ({op:?}): the seat counts agree (ghosts possible: {})",
            m.ghosts
        ),
        Duration::from_secs(20),
        || async {
            let metrics = e.metrics().await;
            Seats {
                live: e.counters().seats_in_use,
                seated: e.seated().await,
                counted: metrics.count(r#"tollgate_upstream_seats_in_use{upstream="erp"}"#),
                failed_logouts: metrics.count(FAILED_LOGOUTS),
            }
        },
        |s| {
            s.counted <= CAP
                && s.counted == s.seated
                && s.live <= s.seated + s.failed_logouts
                && (m.ghosts || s.seated <= s.live)
        },
    )
    .await;
    // The credential cooldown: no login starts while it is open. Logins already in flight when
    // it opens may still be refused: once the credentials were proven, up to
    // `max_parallel_logins` (2) run at once, so two refusals may come together (design: "a
    // password changed upstream after it was proven is refused at most max_parallel_logins
    // times before the cooldown stops the rest"). So of any three refused attempts, the first
    // and the last are at least the cooldown apart, unless a reload started a new credential
    // gate in between.
    let refused: Vec<Instant> = e
        .fake
        .login_attempts()
        .into_iter()
        .filter(|(_, o)| *o == "bad_credentials")
        .map(|(t, _)| t)
        .collect();
    for run in refused.windows(MAX_PARALLEL_LOGINS + 1) {
        let (first, last) = (run[0], run[MAX_PARALLEL_LOGINS]);
        let reloaded_between = m.reloads.iter().any(|r| *r > first && *r < last);
        assert!(
            reloaded_between || last - first >= COOLDOWN - Duration::from_millis(150),
            "step {step} ({op:?}): {} refused logins within {:?}, inside the cooldown",
            MAX_PARALLEL_LOGINS + 1,
            last - first
        );
    }
}

/// Runs `ops`, checking after each, then shuts the gateway down; gives the fake's last counts
/// and the failed logouts counted before the shutdown.
async fn run(store: Store, ops: Vec<Op>) -> (Counters, u64) {
    let e = Setup::new(store)
        .opts(LegacyOptions {
            max_api_users: 3,
            lockout_threshold: 0,
            ..LegacyOptions::default()
        })
        .session(SESSION)
        .start()
        .await;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        apply(&e, &mut m, op).await;
        check(&e, &m, step, op).await;
    }
    // Shutdown frees every seat: restore a working upstream first (a stopped one cannot be
    // logged out of, and its seats are then its own to close).
    apply(&e, &mut m, &Op::Logins(Logins::Good)).await;
    let failed = e.metrics().await.count(FAILED_LOGOUTS);
    let fake = e.fake.clone();
    e.gw.shutdown().await;
    let c = fake.counters();
    assert!(
        c.seats_in_use <= failed,
        "seats left at shutdown beyond the {failed} whose logout failed earlier: {c:?}"
    );
    assert!(c.max_concurrency_per_session <= 1, "{c:?}");
    (c, failed)
}

fn cases() -> u32 {
    std::env::var("TOLLGATE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn check_store(store: Store) {
    let rt = runtime();
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..10))| {
        rt.block_on(run(store, ops));
    });
}

/// A sequence a random run once drew: a session's logout fails while the upstream is down (its
/// seat is given back, the upstream keeps the session), then two new grants log in. The
/// upstream then holds three sessions against a cap of two, which the design accepts, and
/// only by that one failed logout: the gateway itself never counts more than two.
#[test]
fn a_failed_logout_is_the_only_way_past_the_cap_upstream() {
    let req = |grant, concurrent, slow_ms, cancel_after_ms| Req {
        grant,
        concurrent,
        slow_ms,
        cancel_after_ms,
    };
    let ops = vec![
        Op::Burst(vec![req(3, false, Some(238), None)]),
        Op::Logins(Logins::Down),
        Op::Logout {
            grant: 3,
            admin: false,
        },
        Op::Logins(Logins::Slow),
        Op::Burst(vec![
            req(1, false, None, None),
            req(2, true, Some(188), None),
            req(3, true, None, Some(146)),
            req(0, false, None, None),
        ]),
    ];
    let rt = runtime();
    let (c, failed) = rt.block_on(run(Store::Memory, ops));
    // The case this test is for did happen: it is not passing for want of its failed logout.
    assert_eq!((failed, c.peak_seats), (1, CAP + 1), "{c:?}");
}

#[test]
fn seat_accounting_holds_under_random_sequences_with_the_memory_store() {
    check_store(Store::Memory);
}

#[test]
fn seat_accounting_holds_under_random_sequences_with_the_redis_store() {
    check_store(Store::Redis);
}
