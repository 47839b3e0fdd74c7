//! The binaries measured, built as a user builds them: `cargo build --release --locked`, into a
//! target directory of the bench's own (`target/peers`, reused by the next run).
//!
//! `cargo bench` builds this bench with tollgate's dev-dependencies, and cargo unifies their
//! features into everything that one build compiles: the `tollgate` binary beside the bench
//! (`CARGO_BIN_EXE_tollgate`) and the bench itself run with tokio's `test-util` clock, which
//! takes a lock on every read of the time. Measured side by side on 2026-12-07, that binary
//! cost 2 to 4 % more CPU a request than `cargo build --release`'s. So neither is measured:
//! `tollgate` and the forwarding floor (`benches/floor`, its own package) are built again here,
//! each with its own dependencies alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The crates whose versions make the floor a floor of tollgate's HTTP stack.
const SHARED: [&str; 4] = ["hyper", "hyper-util", "tokio", "http-body"];

/// The two programs the rows run.
pub(crate) struct Built {
    pub(crate) tollgate: PathBuf,
    pub(crate) floor: PathBuf,
}

/// Which of the two the selected rows run.
pub(crate) struct Wanted {
    pub(crate) tollgate: bool,
    pub(crate) floor: bool,
}

/// Builds what the rows run: the floor, and `tollgate` unless another binary is given
/// (`PEERS_TOLLGATE`). A program no row runs is not built (its path is where it would be).
pub(crate) fn build(
    repo: &Path,
    wanted: &Wanted,
    tollgate: Option<PathBuf>,
) -> anyhow::Result<Built> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo.join("target"), PathBuf::from)
        .join("peers");
    if wanted.floor {
        check_floor_versions(repo)?;
        let floor_manifest = repo.join("benches/floor/Cargo.toml");
        let floor_args = ["--manifest-path", path_str(&floor_manifest)?];
        cargo_build("the floor (benches/floor)", repo, &target, &floor_args)?;
    }
    let tollgate = match tollgate {
        Some(given) => given,
        None => {
            if wanted.tollgate {
                cargo_build("tollgate", repo, &target, &["--bin", "tollgate"])?;
            }
            target.join("release/tollgate")
        }
    };
    Ok(Built {
        tollgate,
        floor: target.join("release/hyper-floor"),
    })
}

fn cargo_build(name: &str, repo: &Path, target: &Path, what: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(target)
        .args(what);
    println!(
        "benches/peers: building {name}: cargo build --release --locked {}",
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

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{}: not UTF-8", p.display()))
}

/// The floor's Cargo.lock must hold the versions of tollgate's, and its release profile must be
/// tollgate's: otherwise the row measures another hyper, or another build, than tollgate's.
fn check_floor_versions(repo: &Path) -> anyhow::Result<()> {
    let read =
        |p: &str| std::fs::read_to_string(repo.join(p)).with_context(|| format!("reading {p}"));
    let profile = |p: &str| -> anyhow::Result<Option<toml::Value>> {
        let manifest: toml::Table = read(p)?.parse().with_context(|| format!("parsing {p}"))?;
        Ok(manifest
            .get("profile")
            .and_then(|p| p.get("release"))
            .cloned())
    };
    if profile("Cargo.toml")? != profile("benches/floor/Cargo.toml")? {
        bail!(
            "benches/floor/Cargo.toml's [profile.release] differs from Cargo.toml's: copy \
             tollgate's into it, so that the floor is built as tollgate is"
        );
    }
    let (ours, floor) = (read("Cargo.lock")?, read("benches/floor/Cargo.lock")?);
    for name in SHARED {
        let (a, b) = (lock_version(&ours, name), lock_version(&floor, name));
        if a != b {
            bail!(
                "benches/floor/Cargo.lock has {name} {} where Cargo.lock has {}: copy \
                 Cargo.lock to benches/floor/ and run `cargo metadata --offline --manifest-path \
                 benches/floor/Cargo.toml` to trim it",
                b.unwrap_or("none"),
                a.unwrap_or("none"),
            );
        }
    }
    Ok(())
}

/// The version of package `name` in a Cargo.lock's text.
pub(crate) fn lock_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let wanted = format!("name = \"{name}\"");
    lock.split("[[package]]")
        .find(|p| p.lines().any(|l| l.trim() == wanted))
        .and_then(|p| p.lines().find_map(|l| l.trim().strip_prefix("version = ")))
        .map(|v| v.trim_matches('"'))
}
