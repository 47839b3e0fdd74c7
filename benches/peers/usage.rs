//! A gateway's use of the machine, read from `/proc`: its CPU time (user and system) and its
//! resident memory, over its whole process tree (nginx's master and worker; the others are
//! one process with threads); and what else its core did meanwhile.
//!
//! `/proc/<pid>/stat`'s `utime` and `stime` are the process's, summed by the kernel over all
//! its threads (including threads that have exited), in clock ticks.

use std::process::Command;

/// CPU time of a process tree, in seconds.
#[derive(Clone, Copy)]
pub(crate) struct CpuTime {
    /// User and system time.
    pub(crate) seconds: f64,
    /// The user-space part of it: what the gateway's own code (and its libraries) ran. The rest
    /// is the kernel's, mostly the TCP work of the syscalls a request needs, which on loopback
    /// includes the receiving side's processing of what the gateway sends.
    pub(crate) user_seconds: f64,
}

/// The pid and every live descendant of it (found by scanning `/proc` for parent pids).
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = Stat::read(pid) {
                if stat.state != 'Z' {
                    parents.push((pid, stat.ppid));
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Whether `pid` is a live (not zombie) process.
pub(crate) fn running(pid: u32) -> bool {
    Stat::read(pid).is_some_and(|s| s.state != 'Z')
}

/// The CPU time used so far by `root` and its descendants.
pub(crate) fn cpu(root: u32) -> CpuTime {
    let (user, system) = tree(root)
        .into_iter()
        .filter_map(Stat::read)
        .fold((0, 0), |(u, s), stat| (u + stat.utime, s + stat.stime));
    let tick = clock_ticks() as f64;
    CpuTime {
        seconds: (user + system) as f64 / tick,
        user_seconds: user as f64 / tick,
    }
}

/// The resident set (`VmRSS`) of `root` and its descendants, in KiB.
pub(crate) fn rss_kib(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// How core `cpu` has spent its time so far, in seconds (`/proc/stat`).
#[derive(Clone, Copy)]
pub(crate) struct CoreTime {
    /// Idle (and waiting for I/O): time the gateway could have had and did not need.
    pub(crate) idle: f64,
    /// In processes (user, nice, system) and the hypervisor's steal. Less the gateway's own time
    /// it is roughly what other processes took: roughly, because the kernel counts softirq time
    /// apart here but may count part of it in the gateway's own time too.
    pub(crate) tasks: f64,
}

impl std::ops::Sub for CoreTime {
    type Output = CoreTime;
    fn sub(self, before: CoreTime) -> CoreTime {
        CoreTime {
            idle: self.idle - before.idle,
            tasks: self.tasks - before.tasks,
        }
    }
}

/// Core `cpu`'s time so far.
pub(crate) fn core(cpu: u32) -> CoreTime {
    let name = format!("cpu{cpu}");
    let fields: Vec<u64> = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let field = |i: usize| fields.get(i).copied().unwrap_or(0) as f64 / clock_ticks() as f64;
    CoreTime {
        idle: field(3) + field(4),
        tasks: field(0) + field(1) + field(2) + field(7),
    }
}

/// The fields of `/proc/<pid>/stat` the bench reads.
struct Stat {
    state: char,
    ppid: u32,
    utime: u64,
    stime: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces or parentheses
        // itself: the fields are counted from the last `)`.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state), so field n is fields[n - 3].
        Some(Stat {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            utime: fields.get(11)?.parse().ok()?,
            stime: fields.get(12)?.parse().ok()?,
        })
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}
