//! The crypto floor: what one signature verification costs on the gateway core by itself,
//! measured with `openssl speed` (RSA 2048, ECDSA P-256, Ed25519) before the rounds. The
//! report sets each `*-nocache` row's extra CPU µs per request (over the public route) beside it,
//! so that the cost of a signature check in tollgate's own code can be read off.

use std::process::{Command, Stdio};

use crate::gateways::Alg;

/// Seconds `openssl speed` spends on each operation of each algorithm.
const SECONDS_EACH: &str = "1";

/// One verification's cost per algorithm, and the OpenSSL that measured it.
pub(crate) struct Floor {
    pub(crate) openssl: String,
    pub(crate) verify_us: Vec<(Alg, f64)>,
}

impl Floor {
    pub(crate) fn of(&self, alg: Alg) -> Option<f64> {
        self.verify_us
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, us)| *us)
    }
}

/// Runs `openssl speed` pinned to `cpu`; the reason when it cannot.
pub(crate) fn measure(cpu: u32) -> Result<Floor, String> {
    let out = Command::new("taskset")
        .args([
            "-c",
            &cpu.to_string(),
            "openssl",
            "speed",
            "-seconds",
            SECONDS_EACH,
        ])
        .args(["rsa2048", "ecdsap256", "ed25519"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("openssl speed: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl speed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `rsa 2048 bits 0.000258s 0.000014s   3870.8  71104.5`: verify/s is the last figure.
    let per_second = |marker: &str| {
        text.lines()
            .find(|l| l.contains(marker))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let verify_us = [
        (Alg::Rs256, "rsa 2048 bits"),
        (Alg::Es256, "ecdsa (nistp256)"),
        (Alg::EdDsa, "EdDSA (Ed25519)"),
    ]
    .into_iter()
    .filter_map(|(alg, marker)| Some((alg, 1e6 / per_second(marker)?)))
    .collect::<Vec<_>>();
    if verify_us.is_empty() {
        return Err("openssl speed printed no verify/s figure".to_owned());
    }
    let openssl = text
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .unwrap_or("unknown")
        .to_owned();
    Ok(Floor { openssl, verify_us })
}
