//! A real `redis-server` (Debian's package, installed by the test command) on a free port,
//! with an append-only file so that a restart keeps its data, as docs/sessions.md recommends.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A free port that no Redis server or sentinel of this test run has had before.
///
/// Tests run in parallel, and a port freed by a killed server can come back from the kernel
/// for the next one. A sentinel still watching the killed primary would then find the other
/// test's server on its old address and turn it into a replica of its new primary (and a
/// replica reconnecting there would sync the other test's data).
fn unused_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return port;
        }
    }
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with extra arguments (for example `--replicaof 127.0.0.1 <port>`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        for _ in 0..20 {
            let port = unused_port();
            let mut r = RedisServer {
                port,
                dir: tempfile::tempdir().unwrap(),
                child: None,
                extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start redis-server (the test command installs Debian's redis-server)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: the test command installs it (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL): clients see connection errors at once.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, without its data (no persistence, a failover to an
    /// empty replica).
    pub fn restart_empty(&mut self) {
        self.stop();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        assert!(self.spawn(), "redis-server did not come back");
    }

    /// Stops the process (SIGSTOP): clients' operations hang until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([format!("-{sig}"), c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig}");
        }
    }

    /// Runs one command with `redis-cli`-like inline syntax; returns the raw reply.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Whether `replicas` replicas have acknowledged every write this server took so far.
    ///
    /// `WAIT` counts the replicas that acknowledged the *calling connection's* last write, so on
    /// a fresh connection it answers at once; a write of its own first (a counter outside
    /// tollgate's keys) makes it wait for the server's whole replication offset. A replica that
    /// has just finished its first sync may not stream anything before its first `REPLCONF
    /// ACK`, up to a second later, so this can answer `false` for a while.
    pub fn caught_up(&self, replicas: u32) -> bool {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ask = format!("INCR tollgate-test:caught-up\r\nWAIT {replicas} 500\r\n");
        s.write_all(ask.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.windows(2).filter(|w| w == b"\r\n").count() < 2 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got);
        let mut replies = text.split("\r\n");
        let wrote = replies.next().is_some_and(|r| r.starts_with(':'));
        let acked = replies
            .next()
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|n| n.parse::<u32>().ok());
        wrote && acked.is_some_and(|n| n >= replicas)
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }
}

/// A `redis-sentinel` (Debian's package) on a free port, monitoring `mymaster`.
pub struct Sentinel {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sentinel {
    /// A sentinel watching the primary on `primary_port` (quorum 2, down after 1 s).
    pub fn start(primary_port: u16) -> Sentinel {
        for _ in 0..20 {
            let port = unused_port();
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {primary_port} 2\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 4000\nsentinel parallel-syncs mymaster 1\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel not found: the test command installs it (apt-get install redis-sentinel)");
            let mut s = Sentinel {
                port,
                _dir: dir,
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return s;
                }
                if let Ok(Some(_)) = s.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = s.child.kill();
        }
        panic!("could not start redis-sentinel");
    }

    /// The primary's port as this sentinel names it now.
    pub fn primary_port(&self) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"SENTINEL get-master-addr-by-name mymaster\r\n")
            .ok()?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        text.lines()
            .filter(|l| !l.starts_with(['*', '$']))
            .nth(1)?
            .parse()
            .ok()
    }
}
