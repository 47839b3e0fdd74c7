//! HTTP/2 abuse, frame by frame: rapid reset, a CONTINUATION flood, PING and SETTINGS floods,
//! too many streams, and a stalled flow-control window. Each abusive connection is sent away
//! (GOAWAY) or held to what its limits allow, while a well-behaved client is served meanwhile.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use crate::support::gateway::config;
use crate::support::raw::{self, h2_get, Http2};
use crate::support::{FakeIdp, RecordingUpstream, TestGateway};

/// `SETTINGS_INITIAL_WINDOW_SIZE`.
const INITIAL_WINDOW_SIZE: u16 = 0x4;

struct Rig {
    _idp: FakeIdp,
    up: RecordingUpstream,
    gw: TestGateway,
}

impl Rig {
    /// A gateway speaking h2c with small HTTP/2 limits, and `server` keys added.
    async fn start(server: &str) -> Rig {
        let idp = FakeIdp::start().await;
        let up = RecordingUpstream::start().await;
        let toml = config(&idp.issuer, &up.url(), "").replace(
            "[server]\n",
            &format!(
                "[server]\nhttp2_cleartext = true\nhttp2_max_concurrent_streams = 4\n\
                 http2_max_pending_accept_reset_streams = 5\n\
                 http2_max_local_error_reset_streams = 8\n{server}\n"
            ),
        );
        let gw = TestGateway::start(&toml, true).await;
        Rig { _idp: idp, up, gw }
    }

    fn addr(&self) -> SocketAddr {
        self.gw.app.as_ref().unwrap().proxy_addr
    }

    /// A well-behaved HTTP/2 client is served.
    async fn serves_others(&self) {
        assert_eq!(h2_get(&self.gw.url("/public/other")).await, 200);
    }
}

/// CVE-2023-44487: streams opened and cancelled at once, in a loop.
#[tokio::test]
async fn rapid_reset_is_sent_away() {
    let rig = Rig::start("").await;
    let mut c = Http2::handshake(rig.addr(), &[]).await;
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let stream = 1 + 2 * i;
        burst.extend(raw::get(stream, "/public/reset"));
        burst.extend(raw::frame(
            raw::RST_STREAM,
            0,
            stream,
            &raw::CANCEL.to_be_bytes(),
        ));
    }
    // The gateway may close while the burst is still being written.
    c.send(&burst).await;
    let goaway = c.read.goaway().await.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), raw::ENHANCE_YOUR_CALM, "{goaway:?}");
    c.read.closed().await;
    rig.serves_others().await;
    assert!(rig.up.count() < 500, "most streams were never served");
}

/// A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames.
#[tokio::test]
async fn a_continuation_flood_is_sent_away() {
    let rig = Rig::start("").await;
    let mut c = Http2::handshake(rig.addr(), &[]).await;
    let first = raw::header_block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", "/public/flood"),
    ]);
    let mut flood = raw::frame(raw::HEADERS, raw::END_STREAM, 1, &first);
    let field = raw::header_block(&[("x-flood", "a")]);
    for _ in 0..1000 {
        flood.extend(raw::frame(raw::CONTINUATION, 0, 1, &field));
    }
    c.send(&flood).await;
    let goaway = c.read.goaway().await.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), raw::ENHANCE_YOUR_CALM, "{goaway:?}");
    c.read.closed().await;
    assert_eq!(rig.up.count(), 0, "the unfinished request went nowhere");
    rig.serves_others().await;
}

/// Floods `frames` on a connection while reading what the gateway sends back, until the
/// gateway closes it; returns the GOAWAY it sent (if any). Panics if the flood ran out (bounded
/// in count and time) before the gateway closed the connection.
async fn flood(rig: &Rig, frames: Vec<u8>) -> Option<raw::Frame> {
    let c = Http2::handshake(rig.addr(), &[]).await;
    let (mut read, mut write) = (c.read, c.write);
    let writer = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        for _ in 0..1_000_000 {
            if write.write_all(&frames).await.is_err() {
                return true;
            }
            if tokio::time::Instant::now() > until {
                break;
            }
            tokio::task::yield_now().await;
        }
        false
    });
    let goaway = read.goaway().await;
    read.closed().await;
    assert!(
        writer.await.unwrap(),
        "the gateway closed the connection while the flood went on"
    );
    goaway
}

/// PINGs and SETTINGS are answered (h2 keeps at most one answer pending, so a client that does
/// not read is held back by TCP), and they are not requests: the connection is idle, sent a
/// GOAWAY at `idle_timeout` however many of them come, and dropped after another
/// `idle_timeout` when the flood (which never answers h2's closing PING) goes on.
#[tokio::test]
async fn ping_and_settings_floods_are_closed_as_idle() {
    let rig = Rig::start("idle_timeout = \"1s\"").await;
    let mut pings = Vec::new();
    for i in 0..100u64 {
        pings.extend(raw::frame(raw::PING, 0, 0, &i.to_be_bytes()));
    }
    let mut settings = Vec::new();
    for _ in 0..100 {
        settings.extend(raw::frame(
            raw::SETTINGS,
            0,
            0,
            &raw::settings(&[(INITIAL_WINDOW_SIZE, 65_535)]),
        ));
    }
    for (what, frames) in [("PING", pings), ("SETTINGS", settings)] {
        let (goaway, ()) = tokio::join!(flood(&rig, frames), rig.serves_others());
        let goaway = goaway.unwrap_or_else(|| panic!("{what}: a GOAWAY"));
        assert_eq!(goaway.error_code(), raw::NO_ERROR, "{what}: {goaway:?}");
    }
    assert_eq!(rig.up.count(), 2, "only the other clients' requests");
}

/// More streams than `http2_max_concurrent_streams`: the extra ones are refused, and a client
/// that keeps opening them is sent away after `http2_max_local_error_reset_streams`.
#[tokio::test]
async fn streams_over_the_limit_are_refused_then_the_connection_sent_away() {
    let rig = Rig::start("").await;
    let mut c = Http2::handshake(rig.addr(), &[]).await;
    // Four streams held open: POSTs whose body never comes.
    let mut open = Vec::new();
    for i in 0..4u32 {
        open.extend(raw::frame(
            raw::HEADERS,
            raw::END_HEADERS,
            1 + 2 * i,
            &raw::header_block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "gw.test"),
                (":path", "/public/held"),
            ]),
        ));
    }
    assert!(c.send(&open).await);
    assert!(c.send(&raw::get(9, "/public/extra")).await);
    let refused = c.read.until(|f| f.stream == 9).await.expect("stream 9");
    assert_eq!(refused.kind, raw::RST_STREAM, "{refused:?}");
    assert_eq!(refused.error_code(), raw::REFUSED_STREAM);
    rig.serves_others().await;
    let mut more = Vec::new();
    for i in 0..50u32 {
        more.extend(raw::get(11 + 2 * i, "/public/extra"));
    }
    c.send(&more).await;
    let goaway = c.read.goaway().await.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), raw::ENHANCE_YOUR_CALM, "{goaway:?}");
    rig.serves_others().await;
    assert_eq!(
        rig.up
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.uri.starts_with("/public/extra"))
            .count(),
        0,
        "no refused stream was served"
    );
}

/// A client that opens no flow-control window: the answer's head is sent, its body waits (held
/// in at most the send buffer), the gateway serves others meanwhile, and the body follows the
/// WINDOW_UPDATE.
#[tokio::test]
async fn a_stalled_window_holds_only_its_own_stream() {
    let rig = Rig::start("").await;
    let mut c = Http2::handshake(rig.addr(), &[(INITIAL_WINDOW_SIZE, 0)]).await;
    assert!(c.send(&raw::get(1, "/public/stalled")).await);
    let head = c.read.until(|f| f.stream == 1).await.expect("stream 1");
    assert_eq!(head.kind, raw::HEADERS, "{head:?}");
    assert_eq!(head.flags & raw::END_STREAM, 0, "a body is due");
    rig.serves_others().await;
    rig.serves_others().await;
    let mut update = raw::frame(raw::WINDOW_UPDATE, 0, 1, &65_535u32.to_be_bytes());
    update.extend(raw::frame(
        raw::WINDOW_UPDATE,
        0,
        0,
        &65_535u32.to_be_bytes(),
    ));
    assert!(c.send(&update).await);
    let mut body = Vec::new();
    loop {
        let f = c
            .read
            .until(|f| f.stream == 1 && f.kind == raw::DATA)
            .await
            .expect("the body");
        body.extend_from_slice(&f.payload);
        if f.flags & raw::END_STREAM != 0 {
            break;
        }
    }
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["uri"], "/public/stalled");
}

/// A client that keeps its window shut for longer than `send_timeout` gets GOAWAY and its
/// connection closed, however well it answers pings; other clients are served throughout.
#[tokio::test]
async fn a_window_kept_shut_past_send_timeout_gets_goaway() {
    let rig = Rig::start("send_timeout = \"1s\"").await;
    let mut c = Http2::handshake(rig.addr(), &[(INITIAL_WINDOW_SIZE, 0)]).await;
    assert!(c.send(&raw::get(1, "/public/stalled")).await);
    let head = c.read.until(|f| f.stream == 1).await.expect("stream 1");
    assert_eq!(head.kind, raw::HEADERS, "{head:?}");
    rig.serves_others().await;
    let goaway = c.read.goaway().await.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), raw::NO_ERROR, "{goaway:?}");
    c.read.closed().await;
    rig.serves_others().await;
}
