//! Host measurements: CPU and memory from `/proc`, disk from `statvfs`, and Docker's own disk
//! use. In a container, mount the host's `/proc` and data root and point the monitor at them.

use std::path::Path;

/// Cumulative CPU jiffies from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses the aggregate `cpu ` line of `/proc/stat`. Returns the times and the number of cores.
pub fn parse_proc_stat(text: &str) -> Option<(CpuTimes, u32)> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let cores = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Some((
        CpuTimes {
            busy: total.saturating_sub(idle),
            total,
        },
        cores.max(1),
    ))
}

/// CPU % (all cores: 100 = every core busy) between two readings.
pub fn cpu_percent(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let busy = cur.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64 * 10_000.0).round() / 100.0)
}

/// `(MemTotal, MemAvailable)` in bytes from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// `(total, available)` bytes of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = st.fragment_size() as u64;
    Ok((
        (st.blocks() as u64).saturating_mul(frag),
        (st.blocks_available() as u64).saturating_mul(frag),
    ))
}

/// Reads `name` under `proc_root` (`/proc`, or `/host/proc` in a container).
pub fn read_proc(proc_root: &Path, name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(proc_root.join(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STAT: &str = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\n";

    #[test]
    fn proc_stat() {
        let (t, cores) = parse_proc_stat(STAT).unwrap();
        assert_eq!(cores, 2);
        assert_eq!(
            t,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        let later = CpuTimes {
            busy: 250,
            total: 1200,
        };
        assert_eq!(cpu_percent(t, later), Some(50.0));
        assert_eq!(cpu_percent(later, t), None, "counters went backwards");
        assert!(parse_proc_stat("garbage").is_none());
        assert!(parse_proc_stat("").is_none());
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((24_000_000 * 1024, 12_000_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn this_machine_is_readable() {
        let (total, avail) = disk_usage(Path::new("/")).unwrap();
        assert!(total > 0 && avail <= total);
        let stat = read_proc(Path::new("/proc"), "stat").unwrap();
        assert!(parse_proc_stat(&stat).is_some());
        let mem = read_proc(Path::new("/proc"), "meminfo").unwrap();
        assert!(parse_meminfo(&mem).is_some());
    }
}
