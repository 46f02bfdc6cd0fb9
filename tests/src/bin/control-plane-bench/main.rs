//! Control-plane benchmark (issue: 500 simulated workers heartbeating once a second plus
//! 20 clients polling status for 60 s against one coordinator; and planning + persisting
//! a job of 10,000 tasks). Starts a real coordinator process (the release build of
//! `e2e-coordinator` next to this binary, unless --addr points at a running one), drives
//! it over gRPC, and prints latency percentiles, errors and the coordinator's resident
//! memory as a Markdown table for docs/BENCHMARKS.md, then the store's commit and fsync
//! percentiles (from the coordinator's /metrics) and the disk's own fsync floor.
//!
//! The baseline, measured in the same run with the same load generator, is a "null"
//! server process (this binary with --serve-null) that implements the same services but
//! answers every call at once from memory: no state, no store, no fsync. The difference
//! between the two is what the coordinator itself costs; the baseline is what gRPC and
//! this 2-core machine cost.
//!
//!     cargo run --release -p surgery-e2e --bin control-plane-bench -- --workers 500 --clients 20 --seconds 60
//!
//! Modules: `load` drives the clients, `null_server` is the baseline, `disk` measures
//! in-process (planning, the fsync floor), `report` prints.

mod disk;
mod load;
mod null_server;
mod report;

use clap::Parser;
use std::path::PathBuf;
use surgery_e2e::{Coordinator, tiny_spec};

#[derive(Parser, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 500)]
    pub workers: usize,
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Heartbeats a task gets before its worker completes it.
    #[arg(long, default_value_t = 5)]
    pub beats_per_task: u32,
    /// Capture shards of the benchmark job (its task count is this plus 10).
    #[arg(long, default_value_t = 9_990)]
    pub shards: u32,
    /// Use a running coordinator instead of starting one.
    #[arg(long)]
    pub addr: Option<String>,
    /// Skip the baseline run against a server that answers without doing anything.
    #[arg(long)]
    pub no_baseline: bool,
    /// Internal: serve the null baseline on 127.0.0.1:0, print the address, run forever.
    #[arg(long, hide = true)]
    pub serve_null: bool,
}

pub fn bench_spec(shards: u32) -> String {
    tiny_spec(
        "bench",
        &[
            ("train_prompts: 8", &format!("train_prompts: {shards}")),
            ("prompts_per_shard: 4", "prompts_per_shard: 1"),
        ],
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_null {
        return null_server::serve().await;
    }

    let (tasks, planned, persisted) = disk::plan_and_persist(args.shards)?;
    println!(
        "in-process: planned {tasks} tasks in {:.1} ms, planned + persisted (one fsynced transaction) in {:.1} ms",
        planned.as_secs_f64() * 1e3,
        persisted.as_secs_f64() * 1e3
    );

    let dir = tempfile::tempdir()?;
    // The disk's floor, in the folder the store will use, before any load.
    let floor = disk::fsync_floor(dir.path(), 200)?;
    let mut started: Option<Coordinator> = None;
    let (addr, pid) = match &args.addr {
        Some(addr) => (addr.clone(), None),
        None => {
            let binary: PathBuf = std::env::current_exe()?.with_file_name("e2e-coordinator");
            anyhow::ensure!(
                binary.exists(),
                "{} is missing: build with `cargo build --release -p surgery-e2e`",
                binary.display()
            );
            let coordinator = Coordinator::start(
                &binary,
                dir.path(),
                &[
                    "--heartbeat-interval",
                    "1s",
                    "--log-level",
                    "warn,surgery_coordinator::server=info",
                ],
            )?;
            let found = (coordinator.url(), Some(coordinator.pid()));
            started = Some(coordinator);
            found
        }
    };
    let run = load::load(&args, &addr, pid).await?;
    // Stop the coordinator so the baseline run has the machine to itself.
    drop(started.take());
    println!(
        "SubmitJob over gRPC: {} tasks planned, persisted and answered in {:.1} ms",
        run.total_tasks, run.submit_ms
    );
    let baseline = if args.no_baseline {
        None
    } else {
        let (mut child, null_addr) = null_server::start()?;
        let result = load::load(&args, &null_addr, Some(child.id() as i32)).await;
        let _ = child.kill();
        let _ = child.wait();
        Some(result?)
    };

    println!();
    println!(
        "{} workers heartbeating every second, {} status clients polling every second, {} s per run",
        args.workers, args.clients, args.seconds
    );
    println!(
        "coordinator: {} tasks completed, {} errors; null baseline: {}",
        run.completed,
        run.errors,
        baseline.as_ref().map_or("not run".to_string(), |b| format!(
            "{} tasks completed, {} errors",
            b.completed, b.errors
        ))
    );
    println!();
    report::latency_table(&run, baseline.as_ref());
    println!();
    report::store_lines(&run.metrics);
    report::floor_line(&floor);
    if let (Some(idle), Some(peak)) = (run.idle_rss, run.peak_rss) {
        println!("coordinator resident memory: {idle:.1} MiB after submit, {peak:.1} MiB peak under load");
    }
    if let Some(peak) = baseline.as_ref().and_then(|b| b.peak_rss) {
        println!("null baseline resident memory: {peak:.1} MiB peak");
    }
    report::machine_line("coordinator", &run, args.seconds);
    if let Some(baseline) = &baseline {
        report::machine_line("null baseline", baseline, args.seconds);
    }
    Ok(())
}
