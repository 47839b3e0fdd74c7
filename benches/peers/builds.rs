//! The binaries the rows run: tollgate as a user builds it (`benches/common/user_build.rs`),
//! and the forwarding floor (`benches/floor`), a package of its own so that none of tollgate's
//! dev-dependencies reach it, built the same way into the same target directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::user_build::{self, cargo_build};

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
    let target = user_build::target_dir(repo);
    if wanted.floor {
        check_floor_versions(repo)?;
        let floor_manifest = repo.join("benches/floor/Cargo.toml");
        let floor_args = ["--manifest-path", path_str(&floor_manifest)?];
        cargo_build("the floor (benches/floor)", repo, &target, &floor_args)?;
    }
    let tollgate = match tollgate {
        None if !wanted.tollgate => target.join("release/tollgate"),
        given => user_build::tollgate(repo, given)?,
    };
    Ok(Built {
        tollgate,
        floor: target.join("release/hyper-floor"),
    })
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
