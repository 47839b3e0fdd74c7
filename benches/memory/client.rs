//! The bench's HTTP/1.1 client: plain keep-alive connections over tokio, no pool, so that the
//! gateway sees exactly the connections the bench means to open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub(crate) struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// A GET; returns the status and the body (read by `Content-Length`).
    pub(crate) async fn get(
        &mut self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if self.stream.read_line(&mut h).await? == 0 {
                bail!("connection closed inside a response head");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// One GET on a fresh connection; its status.
pub(crate) async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<u16> {
    Ok(Conn::open(addr).await?.get(path, token).await?.0)
}

/// One GET on a fresh connection; its body as text.
pub(crate) async fn text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (_, body) = Conn::open(addr).await?.get(path, None).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Sends every token once through `path` over `connections` keep-alive connections; each
/// answer must be 200.
pub(crate) async fn drive(
    addr: SocketAddr,
    path: &str,
    tokens: &[String],
    connections: usize,
) -> anyhow::Result<()> {
    let tokens: Arc<[String]> = tokens.into();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (tokens, next, path) = (tokens.clone(), next.clone(), path.to_owned());
        tasks.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else {
                    return anyhow::Ok(());
                };
                let (status, _) = conn.get(&path, Some(token)).await?;
                if status != 200 {
                    bail!("token {i} answered {status}, not 200");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Opens `count` connections, each after one request with `token`, and keeps them open (idle).
pub(crate) async fn open_idle(
    addr: SocketAddr,
    path: &str,
    token: &str,
    count: usize,
) -> anyhow::Result<Vec<Conn>> {
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let mut conn = Conn::open(addr).await?;
        let (status, _) = conn.get(path, Some(token)).await?;
        if status != 200 {
            bail!("an idle connection's first request answered {status}");
        }
        open.push(conn);
    }
    Ok(open)
}
