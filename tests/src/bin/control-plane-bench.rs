//! Control-plane benchmark (issue: 500 simulated workers heartbeating once a second plus
//! 20 clients polling status for 60 s against one coordinator; and planning + persisting
//! a job of 10,000 tasks). Starts a real coordinator process (the release build of
//! `e2e-coordinator` next to this binary, unless --addr points at a running one), drives
//! it over gRPC, and prints latency percentiles, errors and the coordinator's resident
//! memory as a Markdown table for docs/BENCHMARKS.md.
//!
//! The baseline, measured in the same run with the same load generator, is a "null"
//! server process (this binary with --serve-null) that implements the same services but
//! answers every call at once from memory: no state, no store, no fsync. The difference
//! between the two is what the coordinator itself costs; the baseline is what gRPC and
//! this 2-core machine cost.
//!
//!     cargo run --release -p surgery-e2e --bin control-plane-bench -- --workers 500 --clients 20 --seconds 60

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use surgery_coordinator::cluster::{Cluster, Timing};
use surgery_coordinator::command::{Command, Outcome};
use surgery_coordinator::store::{Batch, Store};
use surgery_core::spec::JobSpec;
use surgery_e2e::{Coordinator, tiny_spec};
use surgery_proto::v1 as pb;
use surgery_proto::v1::job_service_client::JobServiceClient;
use surgery_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 500)]
    workers: usize,
    #[arg(long, default_value_t = 20)]
    clients: usize,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Heartbeats a task gets before its worker completes it.
    #[arg(long, default_value_t = 5)]
    beats_per_task: u32,
    /// Capture shards of the benchmark job (its task count is this plus 10).
    #[arg(long, default_value_t = 9_990)]
    shards: u32,
    /// Use a running coordinator instead of starting one.
    #[arg(long)]
    addr: Option<String>,
    /// Skip the baseline run against a server that answers without doing anything.
    #[arg(long)]
    no_baseline: bool,
    /// Internal: serve the null baseline on 127.0.0.1:0, print the address, run forever.
    #[arg(long, hide = true)]
    serve_null: bool,
}

struct Latencies {
    lease: Histogram<u64>,
    heartbeat: Histogram<u64>,
    complete: Histogram<u64>,
    status: Histogram<u64>,
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

fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bench_spec(shards: u32) -> String {
    tiny_spec(
        "bench",
        &[
            ("train_prompts: 8", &format!("train_prompts: {shards}")),
            ("prompts_per_shard: 4", "prompts_per_shard: 1"),
        ],
    )
}

/// Planning and persisting in-process: the planner plus one store transaction.
fn plan_and_persist(shards: u32) -> anyhow::Result<(usize, Duration, Duration)> {
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
struct Run {
    lat: Latencies,
    completed: u64,
    errors: u64,
    submit_ms: f64,
    total_tasks: u32,
    peak_rss: Option<f64>,
    idle_rss: Option<f64>,
    metrics: String,
}

async fn load(args: &Args, addr: &str, pid: Option<i32>) -> anyhow::Result<Run> {
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
        })
        .await?
        .into_inner();
    let submit_ms = start.elapsed().as_secs_f64() * 1e3;
    let job = submitted.job.context("job")?;
    let total_tasks: u32 = job.stages.iter().map(|s| s.total).sum();
    let idle_rss = pid.and_then(rss_mib);

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
        metrics,
    })
}

/// Starts this binary again as the null server and returns it with its address.
fn start_null_server() -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve-null")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    Ok((child, format!("http://{}", line.trim())))
}

fn cell(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_null {
        return null_server::serve().await;
    }

    let (tasks, planned, persisted) = plan_and_persist(args.shards)?;
    println!(
        "in-process: planned {tasks} tasks in {:.1} ms, planned + persisted (one fsynced transaction) in {:.1} ms",
        planned.as_secs_f64() * 1e3,
        persisted.as_secs_f64() * 1e3
    );

    let dir = tempfile::tempdir()?;
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
    let run = load(&args, &addr, pid).await?;
    // Stop the coordinator so the baseline run has the machine to itself.
    drop(started.take());
    println!(
        "SubmitJob over gRPC: {} tasks planned, persisted and answered in {:.1} ms",
        run.total_tasks, run.submit_ms
    );
    let baseline = if args.no_baseline {
        None
    } else {
        let (mut child, null_addr) = start_null_server()?;
        let result = load(&args, &null_addr, Some(child.id() as i32)).await;
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
        let (b50, b99) = baseline.as_ref().map_or(("-".into(), "-".into()), |b| {
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
    println!();
    for line in run
        .metrics
        .lines()
        .filter(|l| l.starts_with("surgery_store_commit_seconds_"))
    {
        if let Some(rest) = line.strip_prefix("surgery_store_commit_seconds_sum ") {
            let count: f64 = run
                .metrics
                .lines()
                .find_map(|l| l.strip_prefix("surgery_store_commit_seconds_count "))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1.0);
            let sum: f64 = rest.parse().unwrap_or(0.0);
            println!("store: {count:.0} group commits, mean {:.3} ms each", sum / count * 1e3);
        }
    }
    if let (Some(idle), Some(peak)) = (run.idle_rss, run.peak_rss) {
        println!("coordinator resident memory: {idle:.1} MiB after submit, {peak:.1} MiB peak under load");
    }
    if let Some(peak) = baseline.as_ref().and_then(|b| b.peak_rss) {
        println!("null baseline resident memory: {peak:.1} MiB peak");
    }
    Ok(())
}

/// The baseline server: the same services, answered from memory at once.
mod null_server {
    use super::pb;
    use futures::Stream;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use surgery_proto::v1::job_service_server::{JobService, JobServiceServer};
    use surgery_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
    use tonic::{Request, Response, Status};

    type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[derive(Default)]
    struct Null {
        next_task: AtomicU64,
    }

    fn job() -> pb::Job {
        pb::Job {
            id: "bench-null".into(),
            name: "bench".into(),
            state: pb::JobState::Running as i32,
            stages: vec![pb::StageSummary {
                stage: pb::Stage::Capture as i32,
                total: 10_000,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl JobService for Null {
        async fn submit_job(
            &self,
            _: Request<pb::SubmitJobRequest>,
        ) -> Result<Response<pb::SubmitJobResponse>, Status> {
            Ok(Response::new(pb::SubmitJobResponse {
                job: Some(job()),
                created: true,
            }))
        }
        async fn get_job(&self, _: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
            let tasks = (0..6)
                .map(|i| pb::Task {
                    id: format!("distill/block-0{}/rate-2", i),
                    state: pb::TaskState::Pending as i32,
                    ..Default::default()
                })
                .collect();
            Ok(Response::new(pb::GetJobResponse {
                job: Some(job()),
                tasks,
            }))
        }
        async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
            Err(Status::unimplemented("null server"))
        }
        async fn cancel_job(
            &self,
            _: Request<pb::CancelJobRequest>,
        ) -> Result<Response<pb::CancelJobResponse>, Status> {
            Err(Status::unimplemented("null server"))
        }
        async fn resume_job(
            &self,
            _: Request<pb::ResumeJobRequest>,
        ) -> Result<Response<pb::ResumeJobResponse>, Status> {
            Err(Status::unimplemented("null server"))
        }
        type WatchJobStream = Streamed<pb::JobEvent>;
        async fn watch_job(&self, _: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
            Err(Status::unimplemented("null server"))
        }
        type GetLogsStream = Streamed<pb::LogLine>;
        async fn get_logs(&self, _: Request<pb::GetLogsRequest>) -> Result<Response<Self::GetLogsStream>, Status> {
            Err(Status::unimplemented("null server"))
        }
        async fn get_metrics(
            &self,
            _: Request<pb::GetMetricsRequest>,
        ) -> Result<Response<pb::GetMetricsResponse>, Status> {
            Err(Status::unimplemented("null server"))
        }
        async fn list_workers(
            &self,
            _: Request<pb::ListWorkersRequest>,
        ) -> Result<Response<pb::ListWorkersResponse>, Status> {
            Err(Status::unimplemented("null server"))
        }
    }

    #[tonic::async_trait]
    impl WorkerService for Null {
        async fn register(
            &self,
            request: Request<pb::RegisterRequest>,
        ) -> Result<Response<pb::RegisterResponse>, Status> {
            Ok(Response::new(pb::RegisterResponse {
                worker_id: request.into_inner().name,
                heartbeat_interval_ms: 1000,
                lease_ttl_ms: 20_000,
            }))
        }
        async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
            Ok(Response::new(pb::HeartbeatResponse::default()))
        }
        async fn lease_task(
            &self,
            _: Request<pb::LeaseTaskRequest>,
        ) -> Result<Response<pb::LeaseTaskResponse>, Status> {
            let n = self.next_task.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(pb::LeaseTaskResponse {
                assignment: Some(pb::TaskAssignment {
                    job_id: "bench-null".into(),
                    task_id: format!("bench-null:capture/shard-{n:04}"),
                    attempt: 1,
                    spec_yaml: super::bench_spec(10),
                    ..Default::default()
                }),
            }))
        }
        async fn complete_task(
            &self,
            _: Request<pb::CompleteTaskRequest>,
        ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
            Ok(Response::new(pb::CompleteTaskResponse {}))
        }
        async fn fail_task(&self, _: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
            Ok(Response::new(pb::FailTaskResponse::default()))
        }
        async fn rendezvous(
            &self,
            _: Request<pb::RendezvousRequest>,
        ) -> Result<Response<pb::RendezvousResponse>, Status> {
            Ok(Response::new(pb::RendezvousResponse::default()))
        }
    }

    pub async fn serve() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        let null = std::sync::Arc::new(Null::default());
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(JobServiceServer::from_arc(null.clone()))
            .add_service(WorkerServiceServer::from_arc(null))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
        Ok(())
    }
}
