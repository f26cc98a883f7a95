//! What `/proc` tells about a process: resident memory and CPU time, for the server (by
//! pid, or the in-process server's threads) and for the load generator itself.

use std::path::Path;
use std::sync::OnceLock;

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`; 100 on Linux x86).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// What a `stat` file (a process's or a thread's) says of its CPU time and page faults.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    /// utime + stime, in seconds.
    cpu_s: f64,
    /// stime alone, in seconds.
    sys_s: f64,
    /// Minor page faults (pages the kernel mapped without reading a disk).
    minflt: u64,
}

fn times_of_stat(path: &Path) -> Option<Times> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so minflt (10), utime (14) and stime (15) are at 7, 11
    // and 12.
    let minflt: u64 = fields.get(7)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Times {
        cpu_s: (utime + stime) / clk_tck(),
        sys_s: stime / clk_tck(),
        minflt,
    })
}

/// utime + stime, in seconds, of a `stat` file.
fn cpu_of_stat(path: &Path) -> Option<f64> {
    times_of_stat(path).map(|t| t.cpu_s)
}

/// Which process (or which threads of this one) a sample describes.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// A whole process.
    Pid(u32),
    /// The threads of this process whose name starts with the prefix (the in-process
    /// server's runtime); memory is the whole process's.
    OwnThreads(&'static str),
}

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// CPU seconds used so far (user + system).
    pub(crate) cpu_s: f64,
    /// Of which in the kernel (system time: system calls, page faults).
    pub(crate) sys_s: f64,
    /// Minor page faults so far: pages first touched (or touched again after the
    /// allocator gave them back).
    pub(crate) minflt: u64,
    /// Resident set size, in KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size, in KiB.
    pub(crate) hwm_kib: u64,
}

fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
}

impl Probe {
    /// Reads the probe now; `None` when the process is gone.
    pub(crate) fn sample(&self) -> Option<Sample> {
        match self {
            Probe::Pid(pid) => {
                let pid = pid.to_string();
                let t = times_of_stat(Path::new(&format!("/proc/{pid}/stat")))?;
                Some(Sample {
                    cpu_s: t.cpu_s,
                    sys_s: t.sys_s,
                    minflt: t.minflt,
                    rss_kib: status_kib(&pid, "VmRSS:")?,
                    hwm_kib: status_kib(&pid, "VmHWM:").unwrap_or(0),
                })
            }
            Probe::OwnThreads(prefix) => {
                let mut sum = Times::default();
                for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
                    let dir = entry.path();
                    let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                    if name.trim_end().starts_with(prefix) {
                        let t = times_of_stat(&dir.join("stat")).unwrap_or_default();
                        sum.cpu_s += t.cpu_s;
                        sum.sys_s += t.sys_s;
                        sum.minflt += t.minflt;
                    }
                }
                Some(Sample {
                    cpu_s: sum.cpu_s,
                    sys_s: sum.sys_s,
                    minflt: sum.minflt,
                    rss_kib: status_kib("self", "VmRSS:")?,
                    hwm_kib: status_kib("self", "VmHWM:").unwrap_or(0),
                })
            }
        }
    }
}

/// Several processes read together: the nodes of a deployment, or what they depend on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probes(pub(crate) Vec<Probe>);

impl Probes {
    /// Each probe's reading (a process that is gone reads as zeros).
    pub(crate) fn each(&self) -> Vec<Sample> {
        self.0
            .iter()
            .map(|p| p.sample().unwrap_or_default())
            .collect()
    }

    /// The sum of every probe's reading.
    pub(crate) fn sample(&self) -> Sample {
        self.each()
            .into_iter()
            .fold(Sample::default(), |a, s| Sample {
                cpu_s: a.cpu_s + s.cpu_s,
                sys_s: a.sys_s + s.sys_s,
                minflt: a.minflt + s.minflt,
                rss_kib: a.rss_kib + s.rss_kib,
                hwm_kib: a.hwm_kib + s.hwm_kib,
            })
    }
}

/// The calling thread's CPU seconds so far.
pub(crate) fn thread_cpu_s() -> f64 {
    cpu_of_stat(Path::new("/proc/thread-self/stat")).unwrap_or(0.0)
}

/// This process's CPU seconds, excluding the threads named with `exclude` (the in-process
/// server's), so the generator's own load is reported on its own.
pub(crate) fn own_cpu_s(exclude: Option<&'static str>) -> f64 {
    let total = cpu_of_stat(Path::new("/proc/self/stat")).unwrap_or(0.0);
    match exclude {
        None => total,
        Some(prefix) => {
            let server = Probe::OwnThreads(prefix).sample().map_or(0.0, |s| s.cpu_s);
            (total - server).max(0.0)
        }
    }
}

/// The whole machine's CPU time so far (every core, every process: `/proc/stat`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineTimes {
    /// Seconds busy, so a period can tell how much of the machine went to processes other
    /// than the server and the generator.
    pub(crate) busy_s: f64,
    /// Seconds stolen: a virtual machine's cores waiting for the host to run them.
    pub(crate) steal_s: f64,
}

/// Reads [`MachineTimes`] now (zeros where `/proc/stat` cannot be read).
pub(crate) fn machine_times() -> MachineTimes {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return MachineTimes::default();
    };
    let Some(line) = text.lines().next() else {
        return MachineTimes::default();
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    MachineTimes {
        busy_s: (total - idle) / clk_tck(),
        steal_s: v.get(7).copied().unwrap_or(0.0) / clk_tck(),
    }
}

/// The 1-minute load average.
pub(crate) fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
