//! Latency percentiles and process figures from /proc.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Percentiles of a set of samples in microseconds, reported in milliseconds.
#[derive(Debug, Serialize, Default, Clone)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn latency(mut micros: Vec<u64>) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    Latency {
        count: micros.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: micros[micros.len() - 1] as f64 / 1000.0,
    }
}

/// Resident memory of a process, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user + system) a process has used. Assumes the usual 100 clock ticks a second.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_pid_stat(&stat).map(|(_, seconds)| seconds)
}

/// CPU seconds (user + system) the calling thread has used.
pub fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    parse_pid_stat(&stat).map(|(_, seconds)| seconds)
}

/// The command name and CPU seconds (user + system) in a `/proc/PID/stat` line.
fn parse_pid_stat(stat: &str) -> Option<(String, f64)> {
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name.to_owned(), (utime + stime) / 100.0))
}

/// Every process's command name and CPU seconds, by pid.
fn processes() -> HashMap<u32, (String, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parse_pid_stat(&stat)?))
        })
        .collect()
}

/// The program a command name stands for: a kernel worker renames itself after the work queue it
/// serves (`kworker/u8:0-writeback`, then `kworker/u8:0-events_unbound`), and stays the same
/// thread.
fn program(name: &str) -> &str {
    if name.starts_with("kworker/") {
        name.split('-').next().unwrap_or(name)
    } else {
        name
    }
}

/// Cores' worth of CPU each program used between two readings of [`processes`] taken `wall`
/// seconds apart; a process that appeared meanwhile counts from zero, programs under 0.005
/// cores are left out.
fn by_name(
    before: &HashMap<u32, (String, f64)>,
    after: &HashMap<u32, (String, f64)>,
    wall: f64,
) -> BTreeMap<String, f64> {
    let mut cores: BTreeMap<String, f64> = BTreeMap::new();
    if wall <= 0.0 {
        return cores;
    }
    for (pid, (name, seconds)) in after {
        let name = program(name);
        let earlier = before
            .get(pid)
            .filter(|(n, _)| program(n) == name)
            .map_or(0.0, |(_, s)| *s);
        *cores.entry(name.to_owned()).or_default() += (seconds - earlier).max(0.0) / wall;
    }
    cores.retain(|_, c| *c >= 0.005);
    for c in cores.values_mut() {
        *c = (*c * 1000.0).round() / 1000.0;
    }
    cores
}

/// CPU time of the whole machine (all cores together, the first line of /proc/stat) and of this
/// process, at one moment, in clock ticks (assumed 100 a second, as in [`cpu_seconds`]).
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    busy: u64,
    steal: u64,
    total: u64,
    own_seconds: f64,
    processes: HashMap<u32, (String, f64)>,
    at: std::time::Instant,
}

/// How busy the machine was between two [`CpuSnapshot`]s, in cores: every figure here that is
/// bound by CPU depends on it, as the load generator shares the machine with the stack.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MachineCpu {
    /// Cores the machine has.
    pub cores: usize,
    /// Cores' worth of time spent on anything but idling or waiting for I/O.
    pub busy_cores: f64,
    /// Cores' worth of time the hypervisor ran something else on this machine's CPUs.
    pub steal_cores: f64,
    /// Cores' worth of time this load generator used (part of `busy_cores`).
    pub generator_cores: f64,
    /// Cores' worth of time by command name (`gateway`, `postgres`, `redis-server`, …), each
    /// name's processes summed. Softirq work the kernel does outside a process's context is in
    /// `busy_cores` only.
    pub by_process: BTreeMap<String, f64>,
}

/// Busy, steal and total ticks from the aggregate `cpu` line of /proc/stat: `user nice system
/// idle iowait irq softirq steal …` (guest time is already counted in user).
fn parse_proc_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
        return None;
    };
    let total = user + nice + system + idle + iowait + irq + softirq + steal;
    Some((total - idle - iowait - steal, steal, total))
}

impl CpuSnapshot {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (busy, steal, total) = parse_proc_stat(&stat)?;
        Some(Self {
            busy,
            steal,
            total,
            own_seconds: cpu_seconds(std::process::id())?,
            processes: processes(),
            at: std::time::Instant::now(),
        })
    }

    /// The machine's use of its cores from `self` to `later`.
    pub fn until(&self, later: &Self) -> Option<MachineCpu> {
        let cores = std::thread::available_parallelism().ok()?.get();
        let total = later.total.checked_sub(self.total)?;
        if total == 0 {
            return None;
        }
        let share = |ticks: u64| ticks as f64 / total as f64 * cores as f64;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        Some(MachineCpu {
            cores,
            busy_cores: share(later.busy.checked_sub(self.busy)?),
            steal_cores: share(later.steal.checked_sub(self.steal)?),
            generator_cores: if wall > 0.0 {
                (later.own_seconds - self.own_seconds) / wall
            } else {
                0.0
            },
            by_process: by_name(&self.processes, &later.processes, wall),
        })
    }
}

impl MachineCpu {
    /// For a report row: "machine 1.85 of 2 cores busy (generator 0.55)".
    pub fn describe(&self) -> String {
        format!(
            "machine {:.2} of {} cores busy (generator {:.2})",
            self.busy_cores, self.cores, self.generator_cores
        )
    }
}

/// The machine's use of its cores since `before`, if both readings could be taken.
pub fn machine_cpu_since(before: Option<CpuSnapshot>) -> Option<MachineCpu> {
    before?.until(&CpuSnapshot::now()?)
}

pub fn now_us() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = latency((1..=1000).map(|v| v * 1000).collect());
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert_eq!(latency(vec![]).count, 0);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_seconds(me).is_some());
        assert!(thread_cpu_seconds().is_some());
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_iowait_and_steal() {
        let stat = "cpu  100 5 50 1000 20 3 7 15 0 0\ncpu0 50 2 25 500 10 1 3 7 0 0\nintr 1 2\n";
        assert_eq!(parse_proc_stat(stat), Some((165, 15, 1200)));
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn a_busy_loop_shows_in_the_machine_and_the_generator_figures() {
        let me = std::process::id();
        let before = CpuSnapshot::now();
        let spun_from = cpu_seconds(me).unwrap_or(0.0);
        // Spin until this process has used 0.2 s of CPU (ticks are 10 ms), however long a
        // shared machine takes to give it that; give up after 20 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds(me).unwrap_or(0.0) - spun_from < 0.2
            && started.elapsed() < std::time::Duration::from_secs(20)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        let cpu = machine_cpu_since(before).expect("/proc/stat and /proc/self/stat are readable");
        assert!(cpu.cores >= 1);
        assert!(cpu.generator_cores > 0.0, "{cpu:?}");
        assert!(cpu.busy_cores > 0.0, "{cpu:?}");
        assert!(cpu.busy_cores <= cpu.cores as f64 + 0.01, "{cpu:?}");
        assert!(cpu.describe().starts_with("machine "));
        // This process shows under its own command name (the test binary's).
        let name = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_pid_stat(&s))
            .map(|(name, _)| name)
            .expect("/proc/self/stat parses");
        assert!(
            cpu.by_process.get(&name).is_some_and(|c| *c > 0.0),
            "{name}: {cpu:?}"
        );
    }

    #[test]
    fn cpu_is_summed_by_command_name_over_the_window() {
        let p = |name: &str, s: f64| (name.to_owned(), s);
        let before = HashMap::from([
            (1, p("gateway", 10.0)),
            (2, p("gateway", 4.0)),
            (3, p("postgres", 1.0)),
            (5, p("kworker/u8:0-flush-254:0", 30.0)),
        ]);
        // Pid 3 was reused by another program; pid 4 is new; kernel worker 5 took other work.
        let after = HashMap::from([
            (1, p("gateway", 12.0)),
            (2, p("gateway", 5.0)),
            (3, p("redis-server", 0.5)),
            (4, p("postgres", 1.0)),
            (5, p("kworker/u8:0-writeback", 30.2)),
        ]);
        let cores = by_name(&before, &after, 2.0);
        assert_eq!(
            cores,
            BTreeMap::from([
                ("gateway".to_owned(), 1.5),
                ("kworker/u8:0".to_owned(), 0.1),
                ("postgres".to_owned(), 0.5),
                ("redis-server".to_owned(), 0.25)
            ])
        );
        assert!(by_name(&before, &after, 0.0).is_empty());
        assert_eq!(program("kworker/1:1H-events_highpri"), "kworker/1:1H");
        assert_eq!(program("kworker/0:2"), "kworker/0:2");
        assert_eq!(program("chat-service"), "chat-service");
        let stat = "42 (chat service) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(parse_pid_stat(stat), Some(("chat service".to_owned(), 3.0)));
    }
}
