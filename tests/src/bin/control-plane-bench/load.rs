//! The load: simulated workers (register, lease, heartbeat with progress, complete) and
//! status clients, each on its own connection, for a fixed time; latencies measured by
//! the clients, end to end.

use crate::{Args, bench_spec};
use anyhow::Context;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use surgery_proto::v1 as pb;
use surgery_proto::v1::job_service_client::JobServiceClient;
use surgery_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;

pub struct Latencies {
    pub lease: Histogram<u64>,
    pub heartbeat: Histogram<u64>,
    pub complete: Histogram<u64>,
    pub status: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            lease: histogram(),
            heartbeat: histogram(),
            complete: histogram(),
            status: histogram(),
        }
    }
    fn merge(&mut self, other: &Latencies) {
        self.lease.add(&other.lease).unwrap();
        self.heartbeat.add(&other.heartbeat).unwrap();
        self.complete.add(&other.complete).unwrap();
        self.status.add(&other.status).unwrap();
    }
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().max(1) as u64
}

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// The machine's 1-minute load average: how much else wanted the CPUs meanwhile.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn worker_loop(
    channel: Channel,
    index: usize,
    beats_per_task: u32,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
) -> Latencies {
    let mut lat = Latencies::new();
    let mut client = WorkerServiceClient::new(channel);
    let id = match client
        .register(pb::RegisterRequest {
            name: format!("bench-{index}"),
            host: "bench".into(),
            version: "bench".into(),
            slots: vec![pb::Slot {
                device: "cpu".into(),
                model: String::new(),
                memory_bytes: 0,
            }],
        })
        .await
    {
        Ok(r) => r.into_inner().worker_id,
        Err(e) => {
            eprintln!("register failed: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
            return lat;
        }
    };
    // Spread the heartbeats over the second.
    tokio::time::sleep(Duration::from_millis((index as u64 * 1000) / 500 % 1000)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut task: Option<(pb::TaskAssignment, u32)> = None;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if task.is_none() {
            let start = Instant::now();
            match client
                .lease_task(pb::LeaseTaskRequest {
                    worker_id: id.clone(),
                    slot: 0,
                    wait_ms: 1000,
                })
                .await
            {
                Ok(r) => {
                    if let Some(a) = r.into_inner().assignment {
                        // Only leases answered with a task measure the scheduler, not the poll.
                        lat.lease.record(micros(start)).unwrap();
                        task = Some((a, 0));
                    }
                }
                Err(e) => {
                    eprintln!("lease failed: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let report: Vec<pb::TaskReport> = task
            .as_ref()
            .map(|(a, step)| pb::TaskReport {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                progress: Some(pb::Progress {
                    step: u64::from(*step),
                    total_steps: u64::from(beats_per_task),
                    metrics: [("loss".to_string(), 1.0 / (f64::from(*step) + 1.0))]
                        .into_iter()
                        .collect(),
                    message: String::new(),
                    updated_unix_ms: 0,
                }),
                logs: vec![],
            })
            .into_iter()
            .collect();
        let start = Instant::now();
        match client
            .heartbeat(pb::HeartbeatRequest {
                worker_id: id.clone(),
                tasks: report,
            })
            .await
        {
            Ok(r) => {
                lat.heartbeat.record(micros(start)).unwrap();
                if !r.into_inner().stop.is_empty() {
                    task = None;
                }
            }
            Err(e) => {
                eprintln!("heartbeat failed: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some((a, step)) = task.as_mut() {
            *step += 1;
            if *step >= beats_per_task {
                let start = Instant::now();
                let result = client
                    .complete_task(pb::CompleteTaskRequest {
                        worker_id: id.clone(),
                        task_id: a.task_id.clone(),
                        attempt: a.attempt,
                        result: Some(pb::TaskResult::default()),
                    })
                    .await;
                match result {
                    Ok(_) => {
                        lat.complete.record(micros(start)).unwrap();
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("complete failed: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                task = None;
            }
        }
    }
    lat
}

async fn status_loop(channel: Channel, job_id: String, stop: Arc<AtomicBool>, errors: Arc<AtomicU64>) -> Latencies {
    let mut lat = Latencies::new();
    let mut client = JobServiceClient::new(channel);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let start = Instant::now();
        // What `surgeryctl status` asks for.
        match client
            .get_job(pb::GetJobRequest {
                job_id: job_id.clone(),
                include_tasks: true,
                task_stages: vec![pb::Stage::Distill as i32],
            })
            .await
        {
            Ok(_) => lat.status.record(micros(start)).unwrap(),
            Err(e) => {
                eprintln!("status failed: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    lat
}

/// The coordinator's /metrics text (plain HTTP/1.1 on the gRPC port).
async fn scrape_metrics(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// Latencies and counts of one load run against one server.
pub struct Run {
    pub lat: Latencies,
    pub completed: u64,
    pub errors: u64,
    pub submit_ms: f64,
    pub total_tasks: u32,
    pub peak_rss: Option<f64>,
    pub idle_rss: Option<f64>,
    /// CPU seconds the server used during the load.
    pub cpu_seconds: Option<f64>,
    /// The machine's 1-minute load average when the load ended.
    pub load_average: Option<f64>,
    pub metrics: String,
}

pub async fn load(args: &Args, addr: &str, pid: Option<i32>) -> anyhow::Result<Run> {
    let connect = || async {
        Channel::from_shared(addr.to_string())
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .context("connect")
    };
    let mut jobs = JobServiceClient::new(connect().await?);
    let start = Instant::now();
    let submitted = jobs
        .submit_job(pb::SubmitJobRequest {
            request_id: "bench".into(),
            spec_yaml: bench_spec(args.shards),
            fork_of: String::new(),
        })
        .await?
        .into_inner();
    let submit_ms = start.elapsed().as_secs_f64() * 1e3;
    let job = submitted.job.context("job")?;
    let total_tasks: u32 = job.stages.iter().map(|s| s.total).sum();
    let idle_rss = pid.and_then(rss_mib);
    let cpu_before = pid.and_then(cpu_seconds);

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    // One connection per simulated worker, as real workers have.
    for index in 0..args.workers {
        let channel = connect().await?;
        handles.push(tokio::spawn(worker_loop(
            channel,
            index,
            args.beats_per_task,
            stop.clone(),
            errors.clone(),
            completed.clone(),
        )));
    }
    for _ in 0..args.clients {
        let channel = connect().await?;
        handles.push(tokio::spawn(status_loop(
            channel,
            job.id.clone(),
            stop.clone(),
            errors.clone(),
        )));
    }
    let peak_rss = Arc::new(Mutex::new(0f64));
    let sampler = {
        let peak = peak_rss.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = pid.and_then(rss_mib) {
                    let mut p = peak.lock().await;
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let metrics = scrape_metrics(addr).await.unwrap_or_default();
    let cpu = pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let load_average = load_average();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Latencies::new();
    for handle in handles {
        lat.merge(&handle.await?);
    }
    sampler.await?;
    let peak = *peak_rss.lock().await;
    Ok(Run {
        lat,
        completed: completed.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        submit_ms,
        total_tasks,
        peak_rss: pid.map(|_| peak),
        idle_rss,
        cpu_seconds: cpu,
        load_average,
        metrics,
    })
}
