//! Helpers for end-to-end tests and benchmarks: start a real coordinator process on a
//! free port with its own data folder, kill or stop it, and talk to it as a user
//! (JobService) or as a worker (WorkerService) over real gRPC. Every wait has a
//! [`Deadline`]: a test that waits for something that never happens fails, saying what it
//! waited for and what it last saw, instead of hanging.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use surgery_proto::v1 as pb;
use surgery_proto::v1::job_service_client::JobServiceClient;
use surgery_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

/// How long a test waits for something that should happen: minutes, so a slow or loaded
/// machine never fails a test, while a hang still ends (and says what it waited for).
pub const PATIENCE: Duration = Duration::from_secs(300);

/// The end of a wait: past it, [`Deadline::check`] fails with what was awaited and the
/// last state seen.
#[derive(Debug, Clone)]
pub struct Deadline {
    what: String,
    started: Instant,
    limit: Duration,
}

impl Deadline {
    /// A deadline `limit` from now for `what` ("a running distill task with a checkpoint").
    pub fn after(limit: Duration, what: impl Into<String>) -> Deadline {
        Deadline {
            what: what.into(),
            started: Instant::now(),
            limit,
        }
    }

    /// [`PATIENCE`] from now.
    pub fn patient(what: impl Into<String>) -> Deadline {
        Deadline::after(PATIENCE, what)
    }

    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.started.elapsed())
    }

    /// Ok while time is left; after, the failure naming what was awaited and `last_seen()`.
    pub fn check(&self, last_seen: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.started.elapsed() <= self.limit {
            return Ok(());
        }
        Err(self.expired(&last_seen()))
    }

    /// `future`'s output, or the failure if it is not ready within the time left.
    pub async fn within<T>(
        &self,
        future: impl Future<Output = T>,
        last_seen: impl FnOnce() -> String,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(self.remaining(), future)
            .await
            .map_err(|_| self.expired(&last_seen()))
    }

    /// [`Deadline::check`] for a wait on something a job does: fails at once when the job
    /// has ended (what was awaited can no longer happen), and shows the job as last seen.
    pub fn check_job(&self, view: &pb::GetJobResponse) -> anyhow::Result<()> {
        if job_ended(view) {
            bail!("the job ended while waiting for {}: {}", self.what, describe_job(view));
        }
        self.check(|| describe_job(view))
    }

    fn expired(&self, last_seen: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "gave up after {:.0?} waiting for {}; last seen: {last_seen}",
            self.started.elapsed(),
            self.what
        )
    }
}

/// Whether the job has succeeded, failed or been cancelled.
pub fn job_ended(view: &pb::GetJobResponse) -> bool {
    let state = view.job.as_ref().map(|j| j.state()).unwrap_or_default();
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// One line per task of a job view, for failure messages: the job's state and reasons,
/// then each task's state, step and holders.
pub fn describe_job(view: &pb::GetJobResponse) -> String {
    let mut out = match &view.job {
        Some(job) => format!(
            "job {} {:?} (pending: {:?}, failure: {:?})",
            job.id,
            job.state(),
            job.pending_reason,
            job.failure
        ),
        None => "no job in the answer".to_string(),
    };
    for task in &view.tasks {
        let step = task
            .progress
            .as_ref()
            .map(|p| format!(" step {}/{}", p.step, p.total_steps))
            .unwrap_or_default();
        let holders: Vec<&str> = task.holders.iter().map(|h| h.worker_id.as_str()).collect();
        out.push_str(&format!(
            "\n  {} {:?} attempt {}{step} {holders:?} {}",
            task.id,
            task.state(),
            task.attempt,
            task.failure
        ));
    }
    out
}

/// A coordinator running as a child process.
pub struct Coordinator {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Everything it wrote to stderr (JSON log lines), for assertions and post-mortems.
    pub log: Arc<Mutex<Vec<String>>>,
    binary: PathBuf,
    args: Vec<String>,
}

/// Short timings so expiry tests run in seconds.
pub const FAST: &[&str] = &[
    "--lease-ttl",
    "2s",
    "--heartbeat-interval",
    "500ms",
    "--worker-timeout",
    "6s",
    "--max-poll",
    "3s",
    "--tick",
    "100ms",
];

impl Coordinator {
    /// Starts `binary` on 127.0.0.1:0 with `data_dir` and `extra` flags, and waits until
    /// it serves.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Coordinator> {
        Self::start_on(binary, data_dir, "127.0.0.1:0".parse()?, extra)
    }

    pub fn start_on(binary: &Path, data_dir: &Path, listen: SocketAddr, extra: &[&str]) -> anyhow::Result<Coordinator> {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        // A local object store under the data folder unless the test names one.
        if !extra.contains(&"--object-store-url") {
            args.extend([
                "--object-store-url".into(),
                format!("file://{}", object_root(data_dir).display()),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(binary)
            .args(&args)
            .env_remove("SURGERY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            // Keep draining stderr for the life of the process, or it blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("coordinator serving")
                        && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                        && let Some(listen) = json["fields"]["listen"].as_str()
                    {
                        let _ = addr_tx.send(listen.to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Deadline::patient(format!("{} to serve", binary.display()));
        loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Coordinator {
                    child,
                    addr: addr.parse()?,
                    data_dir: data_dir.to_path_buf(),
                    log,
                    binary: binary.to_path_buf(),
                    args,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "coordinator exited with {status} before serving:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            if let Err(e) = deadline.check(|| format!("its log:\n{}", log.lock().unwrap().join("\n"))) {
                let _ = child.kill();
                return Err(e);
            }
        }
    }

    /// The root of its object store (`--object-store-url`); a job's objects are under
    /// `surgery_core::layout::job_root(job)` there.
    pub fn object_root(&self) -> PathBuf {
        object_root(&self.data_dir)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Deadline::patient("the coordinator to exit after SIGTERM");
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            deadline.check(|| format!("still running; its log:\n{}", self.log.lock().unwrap().join("\n")))?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new process on the same port and data folder (after kill or terminate).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let mut extra: Vec<String> = self.args.clone();
        let listen = extra.iter().position(|a| a == "--listen").expect("listen flag") + 1;
        extra[listen] = self.addr.to_string();
        let deadline = Deadline::patient(format!("the coordinator to serve again on {}", self.addr));
        let log_text = |log: &Arc<Mutex<Vec<String>>>| format!("its log:\n{}", log.lock().unwrap().join("\n"));
        loop {
            let mut child = Command::new(&self.binary)
                .args(&extra)
                .env_remove("SURGERY_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let stderr = child.stderr.take().expect("piped stderr");
            let log = self.log.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("coordinator serving") {
                        let _ = ready_tx.send(());
                    }
                    log.lock().unwrap().push(line);
                }
            });
            loop {
                if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                    self.child = child;
                    return Ok(());
                }
                if child.try_wait()?.is_some() {
                    break;
                }
                if let Err(e) = deadline.check(|| log_text(&self.log)) {
                    let _ = child.kill();
                    return Err(e);
                }
            }
            // The port may linger for a moment after a kill; try again.
            deadline.check(|| format!("the new process exited; {}", log_text(&self.log)))?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.url())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<Channel>> {
        Ok(JobServiceClient::new(self.channel().await?))
    }

    pub async fn worker_client(&self) -> anyhow::Result<WorkerServiceClient<Channel>> {
        Ok(WorkerServiceClient::new(self.channel().await?))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test acting as a worker over real gRPC.
pub struct FakeWorker {
    pub client: WorkerServiceClient<Channel>,
    pub id: String,
}

impl FakeWorker {
    pub async fn register(
        coordinator: &Coordinator,
        name: &str,
        device: &str,
        slots: u32,
    ) -> anyhow::Result<FakeWorker> {
        let mut client = coordinator.worker_client().await?;
        let id = client
            .register(pb::RegisterRequest {
                name: name.into(),
                host: "localhost".into(),
                version: "test".into(),
                slots: (0..slots)
                    .map(|_| pb::Slot {
                        device: device.into(),
                        model: if device == "cuda" {
                            "Fake GPU".into()
                        } else {
                            String::new()
                        },
                        memory_bytes: 80 << 30,
                    })
                    .collect(),
            })
            .await?
            .into_inner()
            .worker_id;
        Ok(FakeWorker { client, id })
    }

    pub async fn lease(&mut self, slot: u32, wait_ms: u32) -> Result<Option<pb::TaskAssignment>, tonic::Status> {
        Ok(self
            .client
            .lease_task(pb::LeaseTaskRequest {
                worker_id: self.id.clone(),
                slot,
                wait_ms,
            })
            .await?
            .into_inner()
            .assignment)
    }

    pub async fn heartbeat(
        &mut self,
        task: &pb::TaskAssignment,
        step: u64,
        metrics: &[(&str, f64)],
    ) -> Result<pb::HeartbeatResponse, tonic::Status> {
        Ok(self
            .client
            .heartbeat(pb::HeartbeatRequest {
                worker_id: self.id.clone(),
                tasks: vec![pb::TaskReport {
                    task_id: task.task_id.clone(),
                    attempt: task.attempt,
                    progress: Some(pb::Progress {
                        step,
                        total_steps: 100,
                        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                        message: String::new(),
                        updated_unix_ms: 0,
                    }),
                    logs: vec![pb::LogLine {
                        level: "info".into(),
                        message: format!("{} step {step}", task.task_id),
                        ..Default::default()
                    }],
                }],
            })
            .await?
            .into_inner())
    }

    pub async fn complete(&mut self, task: &pb::TaskAssignment, metrics: &[(&str, f64)]) -> Result<(), tonic::Status> {
        self.client
            .complete_task(pb::CompleteTaskRequest {
                worker_id: self.id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                result: Some(pb::TaskResult {
                    metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(())
    }

    pub async fn fail(
        &mut self,
        task: &pb::TaskAssignment,
        class: pb::FailureClass,
        message: &str,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .client
            .fail_task(pb::FailTaskRequest {
                worker_id: self.id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                class: class as i32,
                message: message.into(),
            })
            .await?
            .into_inner()
            .outcome)
    }

    /// Completes a task with the metrics a distill task would report.
    pub async fn complete_like_a_worker(&mut self, task: &pb::TaskAssignment) -> Result<(), tonic::Status> {
        use surgery_core::results::*;
        let metrics: Vec<(&str, f64)> = match task.params.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(pb::task_params::Kind::Distill(d)) => vec![
                (HELDOUT_ERROR, fake_heldout_error(d.block, d.rate)),
                (ATTENTION_MS, 5.0),
                (SOFTMAX_ATTENTION_MS, 11.0),
            ],
            _ => vec![],
        };
        self.complete(task, &metrics).await
    }
}

/// The held-out error [`FakeWorker::complete_like_a_worker`] reports for a distill task
/// of `block` at rate code `rate`. Metrics read back bit for bit (serde_json's
/// `float_roundtrip`), so tests compare with this value, not a decimal that reads
/// close to it (block 0 at rate 2 is 0.10200000000000001, not 0.102).
pub fn fake_heldout_error(block: u32, rate: u32) -> f64 {
    0.1 + 0.01 * f64::from(block) + 0.001 * f64::from(rate)
}

/// The tiny CPU job of configs/, renamed and with overrides applied by string
/// replacement.
pub fn tiny_spec(name: &str, replacements: &[(&str, &str)]) -> String {
    edited_spec("tiny.yaml", include_str!("../../configs/tiny.yaml"), name, replacements)
}

/// The quality testbed's CPU job (configs/testbed-cpu.yaml), renamed and with overrides
/// applied by string replacement.
pub fn testbed_cpu_spec(name: &str, replacements: &[(&str, &str)]) -> String {
    edited_spec(
        "testbed-cpu.yaml",
        include_str!("../../configs/testbed-cpu.yaml"),
        name,
        replacements,
    )
}

/// `yaml` (the config `file`) with its first `name:` line set to `name` and every
/// replacement applied; a replacement that matches nothing fails the test, so a config
/// edit cannot silently turn an override off.
fn edited_spec(file: &str, yaml: &str, name: &str, replacements: &[(&str, &str)]) -> String {
    let old_name = yaml
        .lines()
        .find(|line| line.starts_with("name: "))
        .unwrap_or_else(|| panic!("{file} has no name"));
    let mut yaml = yaml.replacen(old_name, &format!("name: {name}"), 1);
    for (from, to) in replacements {
        assert!(yaml.contains(from), "{file} has no `{from}`");
        yaml = yaml.replace(from, to);
    }
    yaml
}

pub async fn submit(
    jobs: &mut JobServiceClient<Channel>,
    request_id: &str,
    yaml: &str,
) -> Result<pb::SubmitJobResponse, tonic::Status> {
    Ok(jobs
        .submit_job(pb::SubmitJobRequest {
            request_id: request_id.into(),
            spec_yaml: yaml.into(),
            fork_of: String::new(),
        })
        .await?
        .into_inner())
}

pub async fn get_job(jobs: &mut JobServiceClient<Channel>, job_id: &str) -> anyhow::Result<pb::GetJobResponse> {
    Ok(jobs
        .get_job(pb::GetJobRequest {
            job_id: job_id.into(),
            include_tasks: true,
            task_stages: Vec::new(),
        })
        .await?
        .into_inner())
}

/// The coordinator's log and each worker's, for a failing assertion to show.
pub fn cluster_logs(coordinator: &Coordinator, workers: &[WorkerProcess]) -> String {
    let mut all = coordinator.log.lock().unwrap().join("\n");
    for w in workers {
        all.push_str(&format!("\n--- {} ---\n{}", w.name, w.log_text()));
    }
    all
}

/// A worker (`surgery-worker run`) as a child process, logging to a file.
pub struct WorkerProcess {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn start(binary: &Path, coordinator: &Coordinator, name: &str, dir: &Path) -> anyhow::Result<WorkerProcess> {
        Self::start_with_env(binary, coordinator, name, dir, &[])
    }

    /// [`WorkerProcess::start`] with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        coordinator: &Coordinator,
        name: &str,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<WorkerProcess> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args([
                "run",
                "--coordinator",
                &coordinator.url(),
                "--name",
                name,
                "--device",
                "cpu",
                "--cache-dir",
                &dir.join(format!("cache-{name}")).display().to_string(),
                "--collective-timeout",
                "5s",
                "--lease-wait",
                "2s",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .env_remove("SURGERY_TOKEN")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(WorkerProcess {
            child,
            name: name.to_string(),
            log,
        })
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the tiny teacher and prompts with `surgery-worker init-demo` into `dir` and
/// returns configs/tiny.yaml pointing at them (absolute URLs, so every process agrees),
/// renamed and with `replacements` applied.
pub fn tiny_job(worker: &Path, dir: &Path, name: &str, replacements: &[(&str, &str)]) -> anyhow::Result<String> {
    if !dir.join("models/tiny-teacher/config.json").exists() {
        let out = Command::new(worker)
            .args(["init-demo", "--dir", &dir.display().to_string()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "init-demo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let teacher = format!("file://{}/models/tiny-teacher", dir.display());
    let prompts = format!("file://{}/data/prompts.safetensors", dir.display());
    let mut all: Vec<(&str, &str)> = vec![
        ("file://.demo/models/tiny-teacher", teacher.as_str()),
        ("file://.demo/data/prompts.safetensors", prompts.as_str()),
    ];
    all.extend_from_slice(replacements);
    Ok(tiny_spec(name, &all))
}

/// Polls the job until it ends (or `limit` passes) and returns its final view; past the
/// limit the failure shows the last view (or the last error of GetJob).
pub async fn wait_for_job(
    jobs: &mut JobServiceClient<Channel>,
    job_id: &str,
    limit: Duration,
) -> anyhow::Result<pb::GetJobResponse> {
    let deadline = Deadline::after(limit, format!("job {job_id} to end"));
    loop {
        let last_seen = match get_job(jobs, job_id).await {
            Ok(view) => {
                if job_ended(&view) {
                    return Ok(view);
                }
                describe_job(&view)
            }
            Err(e) => format!("GetJob failed: {e:#}"),
        };
        deadline.check(|| last_seen)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl WorkerProcess {
    /// SIGTERM, then the exit status once it is gone.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Deadline::patient(format!("worker {} to exit after SIGTERM", self.name));
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            deadline.check(|| format!("still running; its log:\n{}", self.log_text()))?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where a coordinator started with `data_dir` keeps its object store.
fn object_root(data_dir: &Path) -> PathBuf {
    data_dir.join("objects")
}

/// A real S3-compatible server, s3s-fs (crates.io; scripts/setup.sh installs it into
/// `.tools/bin`, or `S3S_FS_BIN` names one), serving a local folder with one bucket,
/// [`S3Server::BUCKET`], and fixed credentials. It can be SIGKILLed and restarted on the
/// same port and folder, as a store that goes away mid-job.
pub struct S3Server {
    child: Option<Child>,
    pub root: PathBuf,
    pub port: u16,
}

impl S3Server {
    pub const BUCKET: &'static str = "surgery";
    pub const ACCESS_KEY: &'static str = "surgery-access";
    pub const SECRET_KEY: &'static str = "surgery-secret-key";

    /// The s3s-fs binary; a missing one fails the test with how to get it.
    pub fn binary() -> PathBuf {
        let path = std::env::var_os("S3S_FS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/s3s-fs"));
        assert!(
            path.is_file(),
            "{} is missing: run scripts/setup.sh (make test does), which installs s3s-fs from crates.io",
            path.display()
        );
        path
    }

    /// Starts the server on a free port over `root` (created, with the bucket's folder).
    pub fn start(root: &Path) -> anyhow::Result<S3Server> {
        std::fs::create_dir_all(root.join(Self::BUCKET))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = S3Server {
            child: None,
            root: root.to_path_buf(),
            port,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.root.with_extension("log"))?;
        let child = Command::new(Self::binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting s3s-fs")?;
        self.child = Some(child);
        let deadline = Deadline::patient("s3s-fs to accept connections");
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            deadline.check(|| format!("port {} closed", self.port))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL: in-flight requests fail, nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and folder.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// `s3://surgery/{prefix}`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", Self::BUCKET)
    }

    /// The standard AWS environment that points object_store's S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The folder an object of the bucket lives at.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(Self::BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
