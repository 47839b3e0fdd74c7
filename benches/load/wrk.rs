//! wrk: finding it and `benches/tokens.lua`, running one or several wrk processes (with the
//! environment the script reads), and parsing wrk's summary into numbers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The environment variable that names the token file for `benches/tokens.lua`.
const TOKENS_ENV: &str = "TOLLGATE_BENCH_TOKENS";
/// The environment variable that names the `Cookie` file for `benches/tokens.lua`.
const COOKIES_ENV: &str = "TOLLGATE_BENCH_COOKIES";
/// The environment variable added to `benches/tokens.lua`'s thread numbers (its start offsets).
const THREAD_BASE_ENV: &str = "TOLLGATE_BENCH_THREAD_BASE";
/// How long a wrk process may overrun its duration before it is killed, so that a hung wrk
/// cannot hang the run.
const OVERRUN_SECONDS: u64 = 30;

/// wrk on PATH and the script that sends the scenarios' tokens and cookies.
pub(crate) struct Wrk {
    /// `wrk -v`'s version, for the report.
    pub(crate) version: String,
    script: PathBuf,
}

/// One wrk process's `-t` and `-c`, and the number of its first thread for `benches/tokens.lua`.
pub(crate) struct WrkLoad {
    pub(crate) threads: u64,
    pub(crate) connections: u64,
    pub(crate) thread_base: u64,
}

/// What `benches/tokens.lua` sends per request: a bearer token from `tokens` and/or a `Cookie`
/// from `cookies` (line i with line i). Neither: no script.
#[derive(Default)]
pub(crate) struct Headers {
    pub(crate) tokens: Option<PathBuf>,
    pub(crate) cookies: Option<PathBuf>,
}

/// What one scenario's wrk summary says (several wrk processes' combined by [`combine`]).
pub(crate) struct Summary {
    pub(crate) rps: f64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: Option<String>,
}

impl Wrk {
    /// Fails at once when wrk is not installed or the script is missing, before any server
    /// starts or token is signed.
    pub(crate) fn find() -> anyhow::Result<Wrk> {
        // `wrk -v` prints its version and exits with status 1.
        let out = Command::new("wrk")
            .arg("-v")
            .stdin(Stdio::null())
            .output()
            .context("wrk is not installed (apt-get install wrk)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let version = text
            .split_whitespace()
            .nth(1)
            .unwrap_or("unknown")
            .to_owned();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tokens.lua");
        if !script.is_file() {
            bail!("{} is missing", script.display());
        }
        Ok(Wrk { version, script })
    }

    /// Runs one wrk process per URL at the same time (`loads` in the same order) and returns
    /// their outputs.
    pub(crate) fn run_all(
        &self,
        urls: &[String],
        headers: &Headers,
        seconds: u64,
        loads: &[WrkLoad],
    ) -> anyhow::Result<Vec<String>> {
        std::thread::scope(|scope| {
            let runs: Vec<_> = urls
                .iter()
                .zip(loads)
                .map(|(url, load)| scope.spawn(move || self.run(url, headers, seconds, load)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("wrk thread panicked"))
                .collect()
        })
    }

    /// Runs wrk for `seconds` and returns its output; killed if it overruns by
    /// `OVERRUN_SECONDS`.
    pub(crate) fn run(
        &self,
        url: &str,
        headers: &Headers,
        seconds: u64,
        load: &WrkLoad,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{}", load.threads))
            .arg(format!("-c{}", load.connections))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "2s", "--latency"]);
        if headers.any() {
            cmd.arg("-s").arg(&self.script);
            cmd.env(THREAD_BASE_ENV, load.thread_base.to_string());
        }
        if let Some(file) = &headers.tokens {
            cmd.env(TOKENS_ENV, file);
        }
        if let Some(file) = &headers.cookies {
            cmd.env(COOKIES_ENV, file);
        }
        cmd.arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting wrk")?;
        // Drained while wrk runs, so that a full pipe never blocks it.
        let out = drain(child.stdout.take().context("wrk stdout")?);
        let err = drain(child.stderr.take().context("wrk stderr")?);
        let deadline = Instant::now() + Duration::from_secs(seconds + OVERRUN_SECONDS);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "wrk did not finish within {} s; killed",
                    seconds + OVERRUN_SECONDS
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        if !status.success() {
            bail!("wrk failed ({status}): {err}{out}");
        }
        Ok(out)
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

impl Headers {
    pub(crate) fn tokens(file: &Path) -> Headers {
        Headers {
            tokens: Some(file.to_owned()),
            cookies: None,
        }
    }

    fn any(&self) -> bool {
        self.tokens.is_some() || self.cookies.is_some()
    }
}

/// wrk's duration format (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(n * factor)
}

/// The numbers of wrk's `--latency` summary; scenario `name` only names it in the error.
pub(crate) fn parse(name: &str, output: &str) -> anyhow::Result<Summary> {
    let (mut rps, mut mean, mut p50, mut p99, mut requests) = (None, None, None, None, None);
    let mut non_2xx = 0;
    let mut socket_errors = None;
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            // `Latency  <avg> <stdev> <max> <+/- stdev>` (not `Latency Distribution`).
            ["Latency", v, _, _, _] => mean = duration_ms(v),
            ["50%", v] => p50 = duration_ms(v),
            ["99%", v] => p99 = duration_ms(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            _ => {}
        }
        if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        }
        if let Some(v) = line.strip_prefix("Socket errors:") {
            socket_errors = Some(v.trim().to_owned());
        }
    }
    let missing = || format!("{name}: unexpected wrk output:\n{output}");
    Ok(Summary {
        rps: rps.with_context(missing)?,
        mean_ms: mean.with_context(missing)?,
        p50_ms: p50.with_context(missing)?,
        p99_ms: p99.with_context(missing)?,
        requests: requests.with_context(missing)?,
        non_2xx,
        socket_errors,
    })
}

/// Several wrk processes' summaries of one scenario as one: requests, req/s and non-2xx
/// summed, the mean weighted by requests, p50 and p99 the worse of them (percentiles cannot be
/// merged from wrk's summaries), socket errors listed per process.
pub(crate) fn combine(parts: Vec<Summary>) -> Summary {
    let requests: u64 = parts.iter().map(|s| s.requests).sum();
    let weighted: f64 = parts.iter().map(|s| s.mean_ms * s.requests as f64).sum();
    let socket_errors: Vec<String> = parts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some(format!("wrk {}: {}", i + 1, s.socket_errors.as_ref()?)))
        .collect();
    Summary {
        rps: parts.iter().map(|s| s.rps).sum(),
        mean_ms: weighted / requests.max(1) as f64,
        p50_ms: parts.iter().map(|s| s.p50_ms).fold(0.0, f64::max),
        p99_ms: parts.iter().map(|s| s.p99_ms).fold(0.0, f64::max),
        requests,
        non_2xx: parts.iter().map(|s| s.non_2xx).sum(),
        socket_errors: if parts.len() == 1 || socket_errors.is_empty() {
            parts.into_iter().next().and_then(|s| s.socket_errors)
        } else {
            Some(socket_errors.join("; "))
        },
    }
}
