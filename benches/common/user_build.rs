//! tollgate's binary built as a user builds it: `cargo build --release --locked --bin tollgate`,
//! into a target directory of the benches' own (`target/peers`, reused by the next run), for the
//! benches that measure a process's CPU or memory (`benches/peers`, `benches/memory`).
//!
//! `cargo bench` builds a bench with tollgate's dev-dependencies, and cargo unifies their
//! features into everything that one build compiles: the `tollgate` binary beside the bench
//! (`CARGO_BIN_EXE_tollgate`) runs with tokio's `test-util` clock, which takes a lock on every
//! read of the time. Measured side by side on 2026-12-07, that binary cost 2 to 4 % more CPU a
//! request than `cargo build --release`'s. So it is not the one measured.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The benches' own target directory: `target/peers`, or `$CARGO_TARGET_DIR/peers`. Apart from
/// the outer `cargo bench`'s, so that the two builds never wait for each other's lock.
pub(crate) fn target_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo.join("target"), PathBuf::from)
        .join("peers")
}

/// The `tollgate` to measure: `given` (another binary, for a before/after comparison), or the
/// one built here.
pub(crate) fn tollgate(repo: &Path, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(given) = given {
        return Ok(given);
    }
    let target = target_dir(repo);
    cargo_build("tollgate", repo, &target, &["--bin", "tollgate"])?;
    Ok(target.join("release/tollgate"))
}

/// `cargo build --release --locked <what>` into `target`, with the cargo that runs the bench.
pub(crate) fn cargo_build(
    name: &str,
    repo: &Path,
    target: &Path,
    what: &[&str],
) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(target)
        .args(what);
    eprintln!(
        "benches: building {name}: cargo build --release --locked {}",
        what.join(" ")
    );
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!(
            "`cargo build --release --locked {}` failed: {status}",
            what.join(" ")
        );
    }
    Ok(())
}
