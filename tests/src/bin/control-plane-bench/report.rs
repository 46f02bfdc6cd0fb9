//! The report: the latency table (coordinator beside the null baseline), the store's
//! commit and fsync percentiles read from the coordinator's /metrics histograms, and the
//! disk's floor, so a slow disk shows as what it is.

use crate::load::{Latencies, Run};
use hdrhistogram::Histogram;
use std::time::Duration;

fn cell(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
    }
}

pub fn latency_table(run: &Run, baseline: Option<&Run>) {
    println!("| call | count | coordinator p50 ms | p99 ms | p99.9 ms | max ms | null baseline p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    type Pick = fn(&Latencies) -> &Histogram<u64>;
    let rows: [(&str, Pick); 4] = [
        ("Heartbeat", |l| &l.heartbeat),
        ("LeaseTask (answered with a task)", |l| &l.lease),
        ("CompleteTask", |l| &l.complete),
        ("GetJob, status view", |l| &l.status),
    ];
    for (name, pick) in rows {
        let h = pick(&run.lat);
        let (b50, b99) = baseline.map_or(("-".into(), "-".into()), |b| {
            (cell(pick(&b.lat), 0.5), cell(pick(&b.lat), 0.99))
        });
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} | {b50} | {b99} |",
            h.len(),
            cell(h, 0.5),
            cell(h, 0.99),
            cell(h, 0.999),
            h.max() as f64 / 1000.0
        );
    }
}

/// One Prometheus histogram of the /metrics text: cumulative counts by upper bound, the
/// sum and the count.
#[derive(Debug, Default)]
pub struct Buckets {
    pub le: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Buckets {
    pub fn parse(metrics: &str, name: &str) -> Buckets {
        let mut out = Buckets::default();
        let bucket = format!("{name}_bucket{{le=\"");
        for line in metrics.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let Some((le, count)) = rest.split_once("\"} ") else {
                    continue;
                };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                out.le.push((le, count.trim().parse().unwrap_or(0.0)));
            } else if let Some(sum) = line.strip_prefix(&format!("{name}_sum ")) {
                out.sum = sum.trim().parse().unwrap_or(0.0);
            } else if let Some(count) = line.strip_prefix(&format!("{name}_count ")) {
                out.count = count.trim().parse().unwrap_or(0.0);
            }
        }
        out.le.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The `q` quantile, interpolated linearly inside its bucket (as Prometheus'
    /// histogram_quantile does); the largest finite bound if it falls past them.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.le.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.le {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let share = if count > below {
                    (rank - below) / (count - below)
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }

    /// `count, p50, p99, p99.9 and mean in ms` for the report.
    pub fn summary(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.2}", s * 1e3));
        format!(
            "{:.0} commits, p50 {} ms, p99 {} ms, p99.9 {} ms, mean {} ms",
            self.count,
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
            ms((self.count > 0.0).then(|| self.sum / self.count)),
        )
    }
}

pub fn store_lines(metrics: &str) {
    let commit = Buckets::parse(metrics, "surgery_store_commit_seconds");
    let fsync = Buckets::parse(metrics, "surgery_store_fsync_seconds");
    println!("store, whole group-commit transaction: {}", commit.summary());
    println!("store, redb commit alone (page writes + fsync): {}", fsync.summary());
}

/// How much CPU the server took, and how busy the machine was: the load generator shares
/// it, and so does anything else running meanwhile (a load average above the core count
/// means the numbers above include waiting for a CPU).
pub fn machine_line(server: &str, run: &Run, seconds: u64) {
    let cpu = run.cpu_seconds.map_or("-".to_string(), |s| {
        format!(
            "{s:.1} CPU s in {seconds} s ({:.0}% of one core)",
            s / seconds as f64 * 100.0
        )
    });
    let load = run.load_average.map_or("-".to_string(), |l| format!("{l:.2}"));
    println!("{server}: {cpu}; machine load average (1 min) at the end of its run: {load}");
}

/// The disk's floor, from sorted fsync times.
pub fn floor_line(times: &[Duration]) {
    if times.is_empty() {
        return;
    }
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "disk floor, 4 KiB write + fsync x {} before the run: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let text = "x_bucket{le=\"0.001\"} 50\nx_bucket{le=\"0.002\"} 90\nx_bucket{le=\"0.004\"} 100\n\
                    x_bucket{le=\"+Inf\"} 100\nx_sum 0.15\nx_count 100\n";
        let b = Buckets::parse(text, "x");
        assert_eq!(b.count, 100.0);
        assert!((b.quantile(0.5).unwrap() - 0.001).abs() < 1e-12);
        assert!((b.quantile(0.7).unwrap() - 0.0015).abs() < 1e-12);
        assert!((b.quantile(0.99).unwrap() - 0.0038).abs() < 1e-12);
        assert_eq!(Buckets::parse("", "x").quantile(0.5), None);
    }
}
