//! The TCP ring across real processes, through allreduce-bench --cpu: every rank ends with
//! the same bits, and a rank that exits or hangs fails its gang with a retryable error
//! within the watchdog.

use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A generous bound that only a hang would exceed.
const HANG: Duration = Duration::from_secs(60);

/// Runs `f` on a thread and fails the test if it does not return within `limit` (a hang
/// is a failure, never a stuck test run).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("allreduce-bench hung past its watchdog")
}

fn bench(args: &[&str]) -> (bool, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_allreduce-bench"))
        .args(args)
        .output()
        .expect("start allreduce-bench");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    if !out.status.success() {
        eprintln!(
            "allreduce-bench {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), lines)
}

#[test]
fn ring_across_processes_agrees_bit_for_bit() {
    for world in ["2", "3"] {
        let (ok, lines) = within(HANG, move || {
            bench(&["--cpu", "--world", world, "--iters", "2", "--timeout-s", "30"])
        });
        assert!(ok, "{lines:?}");
        for case in ["mixed-exact", "random-bits"] {
            let rows: Vec<_> = lines.iter().filter(|l| l["case"] == case).collect();
            assert_eq!(rows.len(), world.parse::<usize>().unwrap(), "{case}: {lines:?}");
            assert!(rows.iter().all(|r| r["ok"] == true), "{case}: {rows:?}");
            assert!(
                rows.iter().all(|r| r["checksum"] == rows[0]["checksum"]),
                "{case}: ranks disagree: {rows:?}"
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l["case"] == "flat-f32-16MiB" && l["busbw_gbps"].as_f64().unwrap() > 0.0)
        );
    }
}

#[test]
fn a_process_that_dies_or_hangs_fails_its_gang_with_a_retryable_error() {
    for mode in ["exit", "hang"] {
        let (ok, lines) = within(HANG, move || {
            bench(&[
                "--cpu",
                "--world",
                "3",
                "--fail-rank",
                "1",
                "--fail-mode",
                mode,
                "--timeout-s",
                "2",
            ])
        });
        let failures: Vec<_> = lines.iter().filter(|l| l["event"] == "peer-failure").collect();
        assert!(ok, "{mode}: {lines:?}");
        assert_eq!(failures.len(), 2, "{mode}: both survivors report: {lines:?}");
        assert!(failures.iter().all(|f| f["retryable"] == true), "{mode}: {failures:?}");
        if mode == "hang" {
            assert!(
                failures.iter().any(|f| f["error_kind"] == "timeout"),
                "{mode}: {failures:?}"
            );
        }
    }
}
