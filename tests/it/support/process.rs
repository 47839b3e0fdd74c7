//! The real `tollgate` binary as a child process, the one way tests start it: a command run to
//! its end ([`run`]), or a running process ([`Process`]) whose output lines are captured (its
//! JSON log lines name its ports in the "tollgate listening" line).

use std::fmt;
use std::io::BufRead as _;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::eventually;
use super::metrics::Metrics;

/// The binary, without the caller's `RUST_LOG` (a test that wants one sets it).
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `tollgate ARGS` with `env` to its end; returns its exit status and output.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap()
}

/// The name of a started process's configuration file, in a directory of its own.
const CONFIG_FILE: &str = "tollgate.toml";

/// A running `tollgate`, killed when dropped.
pub struct Process {
    child: Child,
    /// The proxy's and the admin listener's base URLs (empty for [`Process::spawn`]).
    pub proxy: String,
    pub admin: String,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

/// Output lines captured so far; shown one a line in a panic message.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Reads `from` line by line until EOF. Byte lines, decoded lossily: a single non-UTF-8
    /// byte must not end the capture.
    fn capture(&self, from: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(from);
            let mut buf = Vec::new();
            while reader
                .read_until(b'\n', &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).trim_end().to_owned());
                buf.clear();
            }
        })
    }
}

/// What a wait on a process last saw: a value and the process's log so far.
struct Seen<T>(T, Vec<String>);

impl<T: fmt::Debug> fmt::Debug for Seen<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}; the log:", self.0)?;
        for l in &self.1 {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// `config` with the settings every child needs: ephemeral listeners and JSON logs at `level`
/// (a `[server]` table and a `[log]` table are added if missing, else completed).
pub fn child_config(config: &str, level: &str) -> String {
    let server = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    let log = format!("level = \"{level}\"\nformat = \"json\"\n");
    let mut out = if config.contains("[server]\n") {
        config.replacen("[server]\n", &format!("[server]\n{server}"), 1)
    } else {
        format!("[server]\n{server}\n{config}")
    };
    if out.contains("[log]\n") {
        out = out.replacen("[log]\n", &format!("[log]\n{log}"), 1);
    } else {
        out = format!("[log]\n{log}\n{out}");
    }
    out
}

impl Process {
    /// Starts `tollgate ARGS` with `env`, capturing its standard output and its log (standard
    /// error) line by line; waits for nothing.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut child = command(args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdout, stderr) = (Lines::default(), Lines::default());
        let readers = vec![
            stdout.capture(child.stdout.take().unwrap()),
            stderr.capture(child.stderr.take().unwrap()),
        ];
        Process {
            child,
            proxy: String::new(),
            admin: String::new(),
            stdout,
            stderr,
            readers,
            dir: None,
        }
    }

    /// Starts `tollgate run` on `config` (taken as it is; see [`child_config`]) and waits for
    /// its listening line.
    pub async fn start(config: &str) -> Process {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, config).unwrap();
        let mut p = Self::spawn(&["run", "--config", path.to_str().unwrap()], env);
        p.dir = Some(dir);
        let (proxy, admin) = p.listening().await;
        p.proxy = format!("http://{proxy}");
        p.admin = format!("http://{admin}");
        p
    }

    /// The proxy and admin addresses of the listening line, once it is logged.
    async fn listening(&mut self) -> (String, String) {
        let (child, stderr) = (&mut self.child, &self.stderr);
        let seen = eventually(
            "tollgate logs its listening line",
            Duration::from_secs(30),
            || {
                let log = stderr.get();
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "tollgate exited with {status} before listening:\n{}",
                        log.join("\n")
                    );
                }
                std::future::ready(Seen(log.iter().find_map(|l| listening_line(l)), log))
            },
            |s| s.0.is_some(),
        )
        .await;
        seen.0.unwrap()
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    /// The configuration file of a [`Process::start`]ed process.
    pub fn config_file(&self) -> std::path::PathBuf {
        let dir = self.dir.as_ref().expect("started with a configuration");
        dir.path().join(CONFIG_FILE)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        let url = format!("{}/readyz", self.admin);
        eventually(
            "tollgate is ready (/readyz answers 200)",
            Duration::from_secs(20),
            || async { Seen(super::try_get(&url).await, self.logs()) },
            |s| s.0 == Some(200),
        )
        .await;
    }

    /// One scrape of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        super::metrics::scrape(&self.admin).await
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.stderr.get()
    }

    /// Every line printed on standard output so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.get()
    }

    /// Waits until `count` log lines contain `text`; returns the log then.
    pub async fn wait_for_log(&self, text: &str, count: usize) -> Vec<String> {
        eventually(
            &format!("tollgate logs {count} line(s) containing `{text}`"),
            Duration::from_secs(20),
            || {
                let log = self.logs();
                let found = log.iter().filter(|l| l.contains(text)).count();
                std::future::ready(Seen(found, log))
            },
            |s| s.0 >= count,
        )
        .await
        .1
    }

    /// Sends `signal` (for example "TERM", "KILL", "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to end (after a signal), within `within`.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let (child, stderr) = (&mut self.child, &self.stderr);
        let seen = eventually(
            "tollgate ends",
            within,
            || std::future::ready(Seen(child.try_wait().unwrap(), stderr.get())),
            |s| s.0.is_some(),
        )
        .await;
        seen.0.unwrap()
    }

    /// Kills the process (SIGKILL) and reads its output to the end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
    }
}

/// The proxy and admin addresses a "tollgate listening" JSON line names.
fn listening_line(line: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let f = if v["fields"].is_object() {
        &v["fields"]
    } else {
        &v
    };
    Some((
        f["proxy_addr"].as_str()?.to_owned(),
        f["admin_addr"].as_str()?.to_owned(),
    ))
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
