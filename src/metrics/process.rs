//! The process's own stats, as the Prometheus process collector exports
//! them (`process_*`), read from `/proc/self` at scrape time. On a system
//! without procfs the families are left out rather than made up.

use std::time::SystemTime;

use super::{family, sample};

/// Clock ticks per second of `/proc/self/stat` times: Linux reports them
/// in USER_HZ, which is 100 on every architecture it runs on (the
/// Prometheus procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// The fields of `/proc/self/stat` after the command name, which may
/// itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// `name:  value kB` from `/proc/self/status`, in bytes.
fn status_kb(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Soft limit of open files from `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Boot time (unix seconds) from `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Appends the `process_*` families.
pub(super) fn write(o: &mut String, _now: SystemTime) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        family(
            o,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        sample(o, "process_open_fds", &[], dir.count());
    }
    if let Some(n) = read("/proc/self/limits").as_deref().and_then(max_fds) {
        family(
            o,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        sample(o, "process_max_fds", &[], n);
    }
    if let Some(status) = read("/proc/self/status") {
        if let Some(rss) = status_kb(&status, "VmRSS:") {
            family(
                o,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            sample(o, "process_resident_memory_bytes", &[], rss);
        }
        if let Some(vm) = status_kb(&status, "VmSize:") {
            family(
                o,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
            );
            sample(o, "process_virtual_memory_bytes", &[], vm);
        }
    }
    let Some(stat) = read("/proc/self/stat") else {
        return;
    };
    let Some(f) = stat_fields(&stat) else {
        return;
    };
    // After the name: state is field 3, so field N is at index N - 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        family(
            o,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        sample(
            o,
            "process_cpu_seconds_total",
            &[],
            (utime + stime) as f64 / USER_HZ,
        );
    }
    if let (Some(start), Some(btime)) =
        (field(22), read("/proc/stat").as_deref().and_then(boot_time))
    {
        family(
            o,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        sample(
            o,
            "process_start_time_seconds",
            &[],
            btime as f64 + start as f64 / USER_HZ,
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proc_files_parse_with_odd_command_names() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1234 1000 10 18446744073709551615";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "250");
        assert_eq!(f[22 - 3], "1234");
        assert_eq!(
            status_kb("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048 * 1024)
        );
        assert_eq!(
            max_fds("Limit  Soft Limit  Hard Limit  Units\nMax open files            1024                 524288               files\n"),
            Some(1024)
        );
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_reports_fds_memory_cpu_and_start_time() {
        let mut o = String::new();
        write(&mut o, SystemTime::now());
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
        ] {
            assert!(o.contains(name), "{name}: {o}");
        }
    }
}
