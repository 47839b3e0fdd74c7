//! Processes and pinning: this process moves itself to the load core, so that everything it
//! starts without asking (wrk, the upstream nginx) and its own servers share that core; each
//! gateway is started under `taskset -c <gateway core>` as a process of its own, logs to a file,
//! and is stopped with its whole process tree (nginx's workers too).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::usage;

/// How long a stopped process tree gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Moves every thread of this process to `cpu` (`taskset -a -p`). Threads and processes started
/// afterwards inherit it; the bench never uses `unsafe` for `sched_setaffinity`.
pub(crate) fn pin_self(cpu: u32) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("taskset is not installed (util-linux)")?;
    if !status.success() {
        bail!("taskset -a -p -c {cpu} (this process): {status}");
    }
    Ok(())
}

/// A free 127.0.0.1 port. Another process takes it a moment later: the external gateways
/// cannot be handed a bound socket, so this is a probe, and a start that loses the race fails
/// its readiness check and is reported.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A process the bench started, stopped (with its children) on drop.
pub(crate) struct Process {
    pub(crate) name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program args` with `env` on core `cpu` (`taskset -c`, which execs the program,
    /// so the pid is the program's), its stdout and stderr appended to `log`.
    pub(crate) fn start(
        name: &str,
        cpu: u32,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Process> {
        let out = File::create(log).with_context(|| log.display().to_string())?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts connections (up to `limit`); fails at once when the process
    /// has exited, with the end of its log.
    pub(crate) fn wait_listening(
        &mut self,
        addr: SocketAddr,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}): {}", self.name, self.log_tail());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not listening on {addr} within {limit:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running (a gateway that died under load is an error).
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the process's log, for errors.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        if tail.is_empty() {
            format!("(nothing in {})", self.log.display())
        } else {
            format!("{}:\n{tail}", self.log.display())
        }
    }

    /// SIGTERM to the process (nginx, HAProxy, Envoy and tollgate all shut down on it), then
    /// SIGKILL to whatever of its tree is left after `STOP_GRACE`.
    pub(crate) fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if !self.alive() {
            return;
        }
        let tree = usage::tree(self.pid());
        signal("TERM", &[self.pid()]);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.alive() && tree.iter().all(|p| !usage::running(*p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("KILL", &tree);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `kill -<sig> <pids>` (std can only send SIGKILL to its own children, and the bench forbids
/// `unsafe`).
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
