//! Turning Docker's stats into samples the way Docker's own CLI does.
//!
//! One-shot stats leave `precpu_stats` empty, so CPU % needs the previous sample, which the
//! caller keeps ([`CpuCounters`]).

use bollard::models::ContainerStatsResponse;
use hemostat_common::events::ContainerSample;

/// The cumulative CPU counters of one sample, kept for the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuCounters {
    pub total_usage: u64,
    pub system_usage: u64,
}

/// Computes a sample from a stats response and the previous counters. Returns the sample and
/// the counters to keep.
pub fn sample(
    id: &str,
    name: &str,
    s: &ContainerStatsResponse,
    prev: Option<CpuCounters>,
) -> (ContainerSample, Option<CpuCounters>) {
    let cpu = s.cpu_stats.as_ref();
    let counters = cpu.and_then(|c| {
        Some(CpuCounters {
            total_usage: c.cpu_usage.as_ref()?.total_usage?,
            system_usage: c.system_cpu_usage?,
        })
    });
    // Docker fills precpu_stats when it sampled twice itself; otherwise use ours.
    let pre = s
        .precpu_stats
        .as_ref()
        .and_then(|c| {
            Some(CpuCounters {
                total_usage: c.cpu_usage.as_ref()?.total_usage?,
                system_usage: c.system_cpu_usage?,
            })
        })
        .filter(|c| c.system_usage > 0)
        .or(prev);
    let online = cpu
        .and_then(|c| c.online_cpus.map(u64::from))
        .filter(|n| *n > 0)
        .or_else(|| {
            cpu.and_then(|c| c.cpu_usage.as_ref())
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|p| p.len() as u64)
                .filter(|n| *n > 0)
        })
        .unwrap_or(1);
    let cpu_percent = match (counters, pre) {
        (Some(cur), Some(pre))
            if cur.system_usage > pre.system_usage && cur.total_usage >= pre.total_usage =>
        {
            let cpu_delta = (cur.total_usage - pre.total_usage) as f64;
            let sys_delta = (cur.system_usage - pre.system_usage) as f64;
            Some(round2(cpu_delta / sys_delta * online as f64 * 100.0))
        }
        _ => None,
    };

    let mem = s.memory_stats.as_ref();
    let usage = mem.and_then(|m| m.usage).unwrap_or(0);
    // Page cache that can be dropped is not pressure: cgroup v1 calls it total_inactive_file,
    // v2 inactive_file. Docker's CLI subtracts it the same way.
    let inactive = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| {
            st.get("total_inactive_file")
                .or_else(|| st.get("inactive_file"))
                .copied()
        })
        .unwrap_or(0);
    let used = if inactive < usage {
        usage - inactive
    } else {
        usage
    };
    let limit = mem.and_then(|m| m.limit).filter(|l| *l > 0);
    let memory_percent = limit.map(|l| round2(used as f64 / l as f64 * 100.0));

    let (rx, tx) = s
        .networks
        .as_ref()
        .map(|nets| {
            nets.values().fold((0u64, 0u64), |(rx, tx), n| {
                (
                    rx.saturating_add(n.rx_bytes.unwrap_or(0)),
                    tx.saturating_add(n.tx_bytes.unwrap_or(0)),
                )
            })
        })
        .unwrap_or((0, 0));

    let (read, write) = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref())
        .map(|entries| {
            entries.iter().fold((0u64, 0u64), |(r, w), e| {
                let v = e.value.unwrap_or(0);
                match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("read") => (r.saturating_add(v), w),
                    Some("write") => (r, w.saturating_add(v)),
                    _ => (r, w),
                }
            })
        })
        .unwrap_or((0, 0));

    let sample = ContainerSample {
        id: id.to_owned(),
        name: name.to_owned(),
        cpu_percent,
        memory_usage_bytes: used,
        memory_limit_bytes: limit,
        memory_percent,
        net_rx_bytes: rx,
        net_tx_bytes: tx,
        block_read_bytes: read,
        block_write_bytes: write,
        pids: s.pids_stats.as_ref().and_then(|p| p.current),
    };
    (sample, counters)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A stats response as Docker 20.10 returns it with one-shot on cgroup v1 (trimmed).
    const ONE_SHOT: &str = r#"{
      "read": "2026-11-22T06:00:00.000000000Z",
      "preread": "0001-01-01T00:00:00Z",
      "pids_stats": {"current": 3},
      "blkio_stats": {"io_service_bytes_recursive": [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Write", "value": 8192},
        {"major": 8, "minor": 0, "op": "Total", "value": 12288}
      ]},
      "cpu_stats": {"cpu_usage": {"total_usage": 2000000000, "percpu_usage": [1000000000, 1000000000]},
                    "system_cpu_usage": 20000000000, "online_cpus": 2},
      "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
      "memory_stats": {"usage": 104857600, "limit": 209715200,
                       "stats": {"total_inactive_file": 4857600}},
      "networks": {"eth0": {"rx_bytes": 100, "tx_bytes": 50}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}}
    }"#;

    #[test]
    fn first_one_shot_sample_has_no_cpu_but_everything_else() {
        let s: ContainerStatsResponse = serde_json::from_str(ONE_SHOT).unwrap();
        let (sample, counters) = sample("c1", "web", &s, None);
        assert_eq!(sample.cpu_percent, None);
        assert_eq!(sample.memory_usage_bytes, 100_000_000);
        assert_eq!(sample.memory_percent, Some(47.68));
        assert_eq!((sample.net_rx_bytes, sample.net_tx_bytes), (101, 52));
        assert_eq!(
            (sample.block_read_bytes, sample.block_write_bytes),
            (4096, 8192)
        );
        assert_eq!(sample.pids, Some(3));
        assert_eq!(
            counters,
            Some(CpuCounters {
                total_usage: 2_000_000_000,
                system_usage: 20_000_000_000
            })
        );
    }

    #[test]
    fn cpu_percent_uses_our_previous_sample_like_docker_cli() {
        let s: ContainerStatsResponse = serde_json::from_str(ONE_SHOT).unwrap();
        // Since the previous sample: 1 s of container CPU over 2 s of system time (both cores),
        // i.e. one core busy: Docker's CLI shows 100 %.
        let prev = CpuCounters {
            total_usage: 1_000_000_000,
            system_usage: 18_000_000_000,
        };
        let (sample, _) = sample("c1", "web", &s, Some(prev));
        assert_eq!(sample.cpu_percent, Some(100.0));
    }

    #[test]
    fn counter_reset_gives_no_cpu_rather_than_nonsense() {
        let s: ContainerStatsResponse = serde_json::from_str(ONE_SHOT).unwrap();
        let prev = CpuCounters {
            total_usage: 9_000_000_000,
            system_usage: 18_000_000_000,
        };
        assert_eq!(sample("c1", "web", &s, Some(prev)).0.cpu_percent, None);
    }

    #[test]
    fn cgroup_v2_inactive_file_and_empty_stats() {
        let v2 =
            r#"{"memory_stats": {"usage": 1000, "limit": 4000, "stats": {"inactive_file": 200}}}"#;
        let s: ContainerStatsResponse = serde_json::from_str(v2).unwrap();
        let (sample, counters) = sample("c", "n", &s, None);
        assert_eq!(sample.memory_usage_bytes, 800);
        assert_eq!(sample.memory_percent, Some(20.0));
        assert_eq!(counters, None);
        let empty: ContainerStatsResponse = serde_json::from_str("{}").unwrap();
        let (sample, _) = super::sample("c", "n", &empty, None);
        assert_eq!(sample.memory_percent, None);
    }
}
