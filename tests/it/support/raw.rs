//! Raw sockets for the framing tests: HTTP/1.1 bytes written exactly as given and answers read
//! back one by one, and HTTP/2 frames built and read by hand (with literal, unindexed HPACK), so
//! that a test can send what no well-behaved client would.
//!
//! Every read is bounded by [`WAIT`], only so that a broken gateway fails the test instead of
//! hanging it; no test measures time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The longest a read waits.
pub const WAIT: Duration = Duration::from_secs(10);

// === HTTP/1.1 ===

/// One HTTP/1.1 answer as read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 connection written and read byte by byte.
pub struct Http1 {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Http1 {
        Http1 {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes` as they are. A write the gateway refused (it closed first) is ignored:
    /// what it answered before is still read.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads more into the buffer; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("no answer within {WAIT:?}"),
            Ok(Ok(0) | Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole answer, or `None` when the connection ended first.
    pub async fn answer(&mut self) -> Option<Answer> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("an ASCII head");
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if answer
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .expect("a chunk size");
                while self.buf.len() < line_end + 2 + size + 2 {
                    if !self.fill().await {
                        return None;
                    }
                }
                let start = line_end + 2;
                answer
                    .body
                    .extend_from_slice(&self.buf[start..start + size]);
                self.buf.drain(..start + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            let len: usize = answer
                .header("content-length")
                .map_or(0, |v| v.parse().expect("a content length"));
            while self.buf.len() < len {
                if !self.fill().await {
                    return None;
                }
            }
            answer.body = self.buf.drain(..len).collect();
        }
        Some(answer)
    }

    /// True when the gateway closes the connection without sending anything more.
    pub async fn closes(&mut self) -> bool {
        while self.fill().await {}
        self.buf.is_empty()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` on a fresh connection and reads the first answer (`None`: closed unanswered).
pub async fn once(addr: SocketAddr, bytes: &[u8]) -> (Option<Answer>, Http1) {
    let mut c = Http1::connect(addr).await;
    c.send(bytes).await;
    (c.answer().await, c)
}

// === HTTP/2 ===

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2), no Huffman coding.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0);
        for s in [name, value] {
            hpack_int(&mut b, s.len(), 7, 0);
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

fn hpack_int(out: &mut Vec<u8>, mut n: usize, prefix: u32, high: u8) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(high | n as u8);
        return;
    }
    out.push(high | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A GET's HEADERS frame on `stream` (END_HEADERS and END_STREAM).
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &header_block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "gw.test"),
            (":path", path),
        ]),
    )
}

/// A SETTINGS payload.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// An HTTP/2 connection (h2c, prior knowledge) written and read frame by frame.
pub struct Http2 {
    pub read: FrameReader,
    pub write: OwnedWriteHalf,
}

/// The read half of an [`Http2`].
pub struct FrameReader {
    read: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Http2 {
    /// Connects, sends the preface and `settings`, and waits for the gateway's SETTINGS, which
    /// it acknowledges: from then on the gateway's limits apply.
    pub async fn handshake(addr: SocketAddr, settings_: &[(u16, u32)]) -> Http2 {
        let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings(settings_)));
        write.write_all(&hello).await.unwrap();
        let mut c = Http2 {
            read: FrameReader {
                read,
                buf: Vec::new(),
            },
            write,
        };
        loop {
            let f = c.read.next().await.expect("the gateway's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
        c.send(&frame(SETTINGS, ACK, 0, &[])).await;
        c
    }

    /// Writes `bytes`; false when the gateway has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.write.write_all(bytes).await.is_ok()
    }
}

impl FrameReader {
    /// The next frame, or `None` at the end of the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(WAIT, self.read.read(&mut chunk)).await {
                Err(_) => panic!("no frame within {WAIT:?}"),
                Ok(Ok(0) | Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a frame matches `want` (returned) or the connection ends (`None`).
    pub async fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.next().await {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }

    /// Reads until the GOAWAY, returned; `None` when the connection ended without one.
    pub async fn goaway(&mut self) -> Option<Frame> {
        self.until(|f| f.kind == GOAWAY).await
    }

    /// Reads until the end of the connection.
    pub async fn closed(&mut self) {
        while self.next().await.is_some() {}
    }
}

/// A GET over HTTP/2 (prior knowledge) by a well-behaved client: its status.
pub async fn h2_get(url: &str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(WAIT, client.get(url.parse().unwrap()))
        .await
        .expect("an answer in time")
        .expect("an answer");
    resp.status().as_u16()
}
