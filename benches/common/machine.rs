//! What the benches' reports say about the machine: the CPU model, and the output of the small
//! commands (`nproc`, `uname -r`, `date`, `git`) that name the rest. Shared by `benches/load` and
//! `benches/peers` (each mounts it with `#[path]`).

use std::process::{Command, Stdio};

/// `program`'s standard output, trimmed; `None` when it cannot run, fails or prints nothing.
pub(crate) fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The CPU's model name from `/proc/cpuinfo`.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
