//! How a bench binary starts and reads its knobs, shared by `benches/load` and `benches/peers`:
//! it runs only under `cargo bench` (which passes `--bench`), so that `cargo test --all-targets`
//! builds it without starting a load test, and its knobs are environment variables.

use anyhow::bail;

/// Runs `run` when the binary was started by `cargo bench`, otherwise prints `about`; an error
/// is printed after `bench:` and exits with status 1.
pub(crate) fn main(bench: &str, about: &str, run: fn() -> anyhow::Result<()>) {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{about}; run it with `cargo bench --bench {bench}`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("benches/{bench}: {e:#}");
        std::process::exit(1);
    }
}

/// Environment variable `name` as a positive integer, `default` when it is unset.
pub(crate) fn positive(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v}: expected a positive integer"),
        },
        Err(_) => Ok(default),
    }
}

/// The names a comma-separated environment variable chooses (scenarios, rows); all when unset.
pub(crate) struct Selection(Option<Vec<String>>);

impl Selection {
    pub(crate) fn from_env(name: &str) -> Selection {
        Selection(std::env::var(name).ok().map(|v| {
            v.split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect()
        }))
    }

    /// True when `name` is chosen.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }
}
