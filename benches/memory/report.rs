//! The memory report: one row per state of the gateway, then the churn run's samples.

/// What the churn run saw.
pub(crate) struct Churn {
    pub(crate) seconds: u64,
    pub(crate) tokens: usize,
    /// RSS (KiB) after each round.
    pub(crate) samples: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<(String, u64, Option<f64>)>,
    pub(crate) churn: Option<Churn>,
}

impl Report {
    /// A state, its RSS in KiB, and the bytes per item it added.
    pub(crate) fn row(&mut self, what: &str, rss_kib: u64, per_item: Option<f64>) {
        self.rows.push((what.to_owned(), rss_kib, per_item));
    }

    /// The first row's RSS (the empty gateway).
    pub(crate) fn first(&self) -> u64 {
        self.rows.first().map_or(0, |r| r.1)
    }

    pub(crate) fn print(&self, version: &str) {
        println!("\n## tollgate memory benchmark\n");
        println!("| state | VmRSS MiB | bytes per item |");
        println!("|---|---:|---:|");
        for (what, rss, per) in &self.rows {
            let per = per.map_or("".to_owned(), |p| format!("{p:.0}"));
            println!("| {what} | {:.1} | {per} |", *rss as f64 / 1024.0);
        }
        if let Some(c) = &self.churn {
            let at = |f: f64| {
                let i = ((c.samples.len() as f64 - 1.0) * f).round() as usize;
                c.samples.get(i).copied().unwrap_or(0)
            };
            let warm = at(0.0);
            let peak = c.samples.iter().copied().max().unwrap_or(0);
            let growth = (peak as f64 / warm.max(1) as f64 - 1.0) * 100.0;
            let mib = |k: u64| k as f64 / 1024.0;
            println!(
                "\n- churn: {} s, {} new tokens (60 s lifetime), {} samples; RSS after the first \
                 round {:.1} MiB, at a quarter {:.1}, half {:.1}, three quarters {:.1}, the end \
                 {:.1}; highest {:.1} MiB ({growth:+.1} % over the first round)",
                c.seconds,
                c.tokens,
                c.samples.len(),
                mib(warm),
                mib(at(0.25)),
                mib(at(0.5)),
                mib(at(0.75)),
                mib(at(1.0)),
                mib(peak),
            );
        }
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        println!("- {version}, release build; CPU: {cpu}");
    }
}
