//! In-process measurements that need no server: planning and persisting a large job, and
//! the disk's own floor - a 4 KiB write and fsync in the folder the store will use, the
//! least any durable commit can cost on this machine.

use crate::bench_spec;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgery_coordinator::cluster::{Cluster, Timing};
use surgery_coordinator::command::{Command, Outcome};
use surgery_coordinator::store::{Batch, Store};
use surgery_core::spec::JobSpec;

/// Planning and persisting in-process: the planner plus one store transaction.
pub fn plan_and_persist(shards: u32) -> anyhow::Result<(usize, Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("bench.redb"))?;
    let yaml = bench_spec(shards);
    let start = Instant::now();
    let spec = Arc::new(JobSpec::parse(&yaml)?);
    let mut cluster = Cluster::default();
    let timing = Timing {
        lease_ttl_ms: 20_000,
        worker_timeout_ms: 60_000,
    };
    let submit = Command::Submit {
        request_id: "r".into(),
        spec_yaml: yaml.clone(),
        spec,
        id_suffix: "x".into(),
        fork_of: None,
    };
    let job = match cluster.apply(0, timing, submit) {
        Ok(Outcome::Submitted(submitted)) => submitted,
        other => anyhow::bail!("submit: {other:?}"),
    };
    let planned = start.elapsed();
    let batch = Batch::capture(cluster.take_changes(), &cluster);
    store.write(&batch)?;
    let total = start.elapsed();
    Ok((cluster.tasks[&job.job_id].list.len(), planned, total))
}

/// `rounds` 4 KiB writes, each followed by an fsync, in `dir`: the sorted fsync times.
pub fn fsync_floor(dir: &Path, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let page = [0x5au8; 4096];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        file.write_all(&page)?;
        let start = Instant::now();
        file.sync_data()?;
        times.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort();
    Ok(times)
}
