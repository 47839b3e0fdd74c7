//! The real `tollgate` binary as a child process: its configuration written to a file, its
//! JSON log lines captured, its ports read from the "tollgate listening" line.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A running `tollgate run`.
pub struct Process {
    child: Child,
    pub proxy: String,
    pub admin: String,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
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
    /// Starts `tollgate run` on `config` (taken as it is; see [`child_config`]) and waits for
    /// its listening line.
    pub async fn start(config: &str) -> Process {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["run", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            // Byte lines, decoded lossily: a single non-UTF-8 byte must not end the capture.
            let mut reader = std::io::BufReader::new(stderr);
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
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (proxy, admin) = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                let f = if v["fields"].is_object() {
                    &v["fields"]
                } else {
                    &v
                };
                Some((
                    f["proxy_addr"].as_str()?.to_owned(),
                    f["admin_addr"].as_str()?.to_owned(),
                ))
            });
            if let Some(found) = found {
                break found;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tollgate exited with {status} before listening:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no listening line:\n{}",
                lines.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Process {
            child,
            proxy: format!("http://{proxy}"),
            admin: format!("http://{admin}"),
            lines,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        let url = format!("{}/readyz", self.admin);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if super::try_get(&url).await.is_some_and(|s| s == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Process {
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
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tollgate did not end:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
