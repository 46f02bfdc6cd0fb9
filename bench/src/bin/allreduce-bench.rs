//! All-reduce benchmark and multi-process check of the gang collectives, printing JSON
//! lines. Its PyTorch twin is bench/python/allreduce_torch.py (same cases, same fields).
//!
//! Without `--rank` it is the launcher: it makes a rendezvous folder, starts one process
//! per rank (itself again, with `--rank r --world w --dir D`), forwards their output and
//! fails if any rank failed. The folder stands in for the coordinator's `Rendezvous`: rank
//! 0 writes the NCCL unique id there (GPU), or every rank writes its TCP endpoint (CPU).
//!
//! - GPU (default; one rank per visible GPU): NCCL through [`surgery_worker::collective::Nccl`]
//!   on cases
//!   - `flat-f32-1GiB`: one 1 GiB f32 tensor;
//!   - `wan1.3b-grads-bf16-flat`: the 825 gradients of Wan2.1 1.3B in bf16 (2.84 GB) as
//!     views into one flat buffer, the zero-copy path a trainer with a flat gradient buffer
//!     gets;
//!   - `wan1.3b-grads-bf16-separate`: the same gradients allocated one by one (packed into
//!     512 MiB segments and copied back).
//!
//!   Each case is checked once (every rank fills `rank + 1`, every element must become
//!   `w (w + 1) / 2`), then timed over `--iters` back-to-back calls; rank 0 prints time,
//!   algorithm bandwidth (bytes / time) and bus bandwidth (algbw * 2 (w - 1) / w, the
//!   nccl-tests convention).
//! - `--cpu`: the TCP ring across processes at small sizes (what bench/tests/allreduce.rs
//!   runs): mixed shapes and dtypes with exact expected sums, random data whose result bits every
//!   rank prints as a checksum (they must agree), and a small bandwidth figure.
//!   `--fail-rank R --fail-mode exit|hang` makes rank R exit (or hang) after the first
//!   all-reduce; the others must report a retryable error within `--timeout-s`.
//!
//! NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 are set for
//! every rank (GPU.md: NVLink multicast stays off on the lent machines).

use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use surgery_worker::collective::{Collective, CollectiveError, Nccl, TcpRing, gang_token};
use tch::{Device, Kind, Tensor};

const NCCL_ENV: [(&str, &str); 3] = [
    ("NCCL_NVLS_ENABLE", "0"),
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
    ("NVSHMEM_DISABLE_NVLS", "1"),
];

#[derive(Parser, Debug, Clone)]
#[command(about = "All-reduce benchmark of the gang collectives (NCCL on GPUs, the TCP ring with --cpu)")]
struct Args {
    /// Run the TCP ring between processes on CPU tensors (small sizes) instead of NCCL.
    #[arg(long)]
    cpu: bool,
    /// Number of ranks (default: every visible GPU; 3 with --cpu).
    #[arg(long)]
    world: Option<usize>,
    /// Internal: this process's rank (set by the launcher).
    #[arg(long)]
    rank: Option<usize>,
    /// Internal: the rendezvous folder (set by the launcher).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Timed iterations per case.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed iterations before timing.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Comma-separated cases (GPU).
    #[arg(
        long,
        default_value = "flat-f32-1GiB,wan1.3b-grads-bf16-flat,wan1.3b-grads-bf16-separate"
    )]
    cases: String,
    /// Segment size in MiB (every rank the same).
    #[arg(long)]
    bucket_mib: Option<usize>,
    /// Watchdog timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// --cpu: this rank fails after the first all-reduce.
    #[arg(long)]
    fail_rank: Option<usize>,
    /// --cpu: how --fail-rank fails: `exit` (the process dies) or `hang` (it stops answering).
    #[arg(long, default_value = "exit")]
    fail_mode: String,
}

fn main() {
    surgery_worker::runtime::init();
    let args = Args::parse();
    let code = match args.rank {
        None => launch(&args),
        Some(rank) => match run_rank(&args, rank) {
            Ok(code) => code,
            Err(e) => {
                emit(serde_json::json!({"event": "error", "rank": rank, "error": e}));
                1
            }
        },
    };
    std::process::exit(code);
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

// ------------------------------------------------------------------ launcher

fn launch(args: &Args) -> i32 {
    let world = args.world.unwrap_or_else(|| {
        if args.cpu {
            3
        } else {
            tch::Cuda::device_count() as usize
        }
    });
    if world == 0 {
        eprintln!(
            "allreduce-bench: no CUDA device ({}); pass --cpu for the TCP ring",
            surgery_worker::runtime::describe_devices()
        );
        return 2;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("allreduce-bench-{}-{nanos}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("allreduce-bench: cannot create {}: {e}", dir.display());
        return 2;
    }
    let exe = std::env::current_exe().expect("own path");
    let mut children = Vec::new();
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(["--rank", &rank.to_string(), "--world", &world.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args(["--iters", &args.iters.to_string(), "--warmup", &args.warmup.to_string()])
            .args(["--cases", &args.cases, "--timeout-s", &args.timeout_s.to_string()])
            .args(["--fail-mode", &args.fail_mode])
            .envs(NCCL_ENV)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if args.cpu {
            cmd.arg("--cpu");
        }
        if let Some(b) = args.bucket_mib {
            cmd.args(["--bucket-mib", &b.to_string()]);
        }
        if let Some(f) = args.fail_rank {
            cmd.args(["--fail-rank", &f.to_string()]);
        }
        match cmd.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                eprintln!("allreduce-bench: cannot start rank {rank}: {e}");
                for (_, c) in &mut children {
                    let _ = c.kill();
                }
                return 2;
            }
        }
    }
    // Forward each rank's lines as they come (one reader thread per rank).
    let readers: Vec<_> = children
        .iter_mut()
        .map(|(_, c)| {
            let out = c.stdout.take().expect("piped");
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    println!("{line}");
                }
            })
        })
        .collect();
    let mut failed = false;
    let hang = args.fail_mode == "hang";
    for (rank, child) in &mut children {
        if hang && Some(*rank) == args.fail_rank {
            continue;
        }
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) if Some(*rank) == args.fail_rank => {
                let _ = status; // The rank told to fail did.
            }
            Ok(status) => {
                eprintln!("allreduce-bench: rank {rank} failed: {status}");
                failed = true;
            }
            Err(e) => {
                eprintln!("allreduce-bench: waiting for rank {rank}: {e}");
                failed = true;
            }
        }
    }
    // A hung rank is stopped once the others finished.
    for (rank, child) in &mut children {
        if hang && Some(*rank) == args.fail_rank {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed { 1 } else { 0 }
}

// ------------------------------------------------------------------ rendezvous by files

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

fn wait_for_file(path: &Path, deadline: Instant) -> Result<Vec<u8>, String> {
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return Ok(bytes);
        }
        if Instant::now() >= deadline {
            return Err(format!("{} did not appear in time", path.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_rank(args: &Args, rank: usize) -> Result<i32, String> {
    let world = args.world.ok_or("--rank needs --world")?;
    let dir = args.dir.clone().ok_or("--rank needs --dir")?;
    let timeout = Duration::from_secs_f64(args.timeout_s);
    // Meeting the other ranks waits for their processes to start (LibTorch loads in
    // seconds on a busy machine); --timeout-s is the collective's watchdog, not this.
    let deadline = Instant::now() + timeout.max(Duration::from_secs(120));
    if args.cpu {
        let (listener, endpoint) = TcpRing::bind("127.0.0.1").map_err(|e| e.to_string())?;
        write_atomic(&dir.join(format!("endpoint-{rank}")), endpoint.as_bytes())?;
        let mut endpoints = Vec::new();
        for r in 0..world {
            let bytes = wait_for_file(&dir.join(format!("endpoint-{r}")), deadline)?;
            endpoints.push(String::from_utf8(bytes).map_err(|e| e.to_string())?);
        }
        let token = gang_token(&dir.display().to_string(), 1);
        let mut ring = listener
            .connect(rank, &endpoints, &token, timeout)
            .map_err(|e| e.to_string())?;
        if let Some(mib) = args.bucket_mib {
            ring = ring.with_bucket_bytes(mib << 20);
        }
        cpu_checks(args, &mut ring)
    } else {
        let id_path = dir.join("nccl-id");
        let id: [u8; 128] = if rank == 0 {
            let id = Nccl::unique_id().map_err(|e| e.to_string())?;
            write_atomic(&id_path, &id)?;
            id
        } else {
            wait_for_file(&id_path, deadline)?
                .try_into()
                .map_err(|_| "the NCCL id file is not 128 bytes")?
        };
        let mut nccl = Nccl::new(rank, rank, world, id, timeout).map_err(|e| e.to_string())?;
        if let Some(mib) = args.bucket_mib {
            nccl = nccl.with_bucket_bytes(mib << 20);
        }
        gpu_cases(args, &mut nccl)?;
        Ok(0)
    }
}

// ------------------------------------------------------------------ GPU

/// Parameter shapes of Wan2.1 1.3B (diffusers' WanTransformer3DModel, text-to-video): 825
/// tensors, 1,418,996,800 elements.
fn wan13b_shapes() -> Vec<Vec<i64>> {
    let (d, ffn, text, freq, out) = (1536i64, 8960i64, 4096i64, 256i64, 64i64);
    let mut s: Vec<Vec<i64>> = vec![vec![d, 16, 1, 2, 2], vec![d]];
    for (o, i) in [(d, freq), (d, d), (6 * d, d), (d, text), (d, d)] {
        s.push(vec![o, i]);
        s.push(vec![o]);
    }
    for _ in 0..30 {
        for _attn in 0..2 {
            for _proj in 0..4 {
                s.push(vec![d, d]);
                s.push(vec![d]);
            }
            s.push(vec![d]); // norm_q
            s.push(vec![d]); // norm_k
        }
        s.push(vec![d]); // norm2 weight
        s.push(vec![d]); // norm2 bias
        s.push(vec![ffn, d]);
        s.push(vec![ffn]);
        s.push(vec![d, ffn]);
        s.push(vec![d]);
        s.push(vec![1, 6, d]); // scale_shift_table
    }
    s.push(vec![out, d]);
    s.push(vec![out]);
    s.push(vec![1, 2, d]);
    debug_assert_eq!(s.iter().map(|x| x.iter().product::<i64>()).sum::<i64>(), 1_418_996_800);
    s
}

struct Case {
    name: String,
    tensors: Vec<Tensor>,
    /// What to check for correctness (the flat buffer when there is one).
    check: Vec<Tensor>,
    kind: Kind,
}

fn make_case(name: &str, device: Device) -> Result<Case, String> {
    let numel = |s: &[i64]| s.iter().product::<i64>();
    Ok(match name {
        "flat-f32-1GiB" => {
            let t = Tensor::zeros([1 << 28], (Kind::Float, device));
            Case {
                name: name.into(),
                check: vec![t.shallow_clone()],
                tensors: vec![t],
                kind: Kind::Float,
            }
        }
        "wan1.3b-grads-bf16-flat" => {
            let shapes = wan13b_shapes();
            let total: i64 = shapes.iter().map(|s| numel(s)).sum();
            let flat = Tensor::zeros([total], (Kind::BFloat16, device));
            let mut offset = 0;
            let tensors = shapes
                .iter()
                .map(|s| {
                    let t = flat.narrow(0, offset, numel(s)).view(s.as_slice());
                    offset += numel(s);
                    t
                })
                .collect();
            Case {
                name: name.into(),
                tensors,
                check: vec![flat],
                kind: Kind::BFloat16,
            }
        }
        "wan1.3b-grads-bf16-separate" => {
            let tensors: Vec<Tensor> = wan13b_shapes()
                .iter()
                .map(|s| Tensor::zeros(s.as_slice(), (Kind::BFloat16, device)))
                .collect();
            Case {
                name: name.into(),
                check: tensors.iter().map(Tensor::shallow_clone).collect(),
                tensors,
                kind: Kind::BFloat16,
            }
        }
        other => return Err(format!("unknown case {other:?}")),
    })
}

fn gpu_cases(args: &Args, nccl: &mut Nccl) -> Result<(), String> {
    let (rank, world) = (nccl.rank(), nccl.world_size());
    let device = nccl.device();
    let (lib, version) = Nccl::library().map_err(|e| e.to_string())?;
    let device_name = cudarc::driver::result::device::get(rank as i32)
        .and_then(cudarc::driver::result::device::get_name)
        .unwrap_or_else(|e| format!("? ({e})"));
    for name in args.cases.split(',').filter(|c| !c.is_empty()) {
        let case = make_case(name, device)?;
        let bytes: usize = case
            .tensors
            .iter()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum();
        // Correctness: every rank fills rank + 1; the sum is w (w + 1) / 2 everywhere.
        for t in &case.check {
            let _ = t.shallow_clone().fill_((rank + 1) as f64);
        }
        nccl.all_reduce_sum(&case.tensors).map_err(|e| e.to_string())?;
        let expected = (world * (world + 1) / 2) as f64;
        for t in &case.check {
            let worst = (t.to_kind(Kind::Float) - expected).abs().max().double_value(&[]);
            if worst != 0.0 {
                return Err(format!("{}: an element differs from {expected} by {worst}", case.name));
            }
            let _ = t.shallow_clone().zero_();
        }
        for _ in 0..args.warmup {
            nccl.all_reduce_sum(&case.tensors).map_err(|e| e.to_string())?;
        }
        nccl.barrier().map_err(|e| e.to_string())?;
        let start = Instant::now();
        for _ in 0..args.iters {
            // Returns once the reduction finished on the GPU (the watchdog waits for it).
            nccl.all_reduce_sum(&case.tensors).map_err(|e| e.to_string())?;
        }
        let secs = start.elapsed().as_secs_f64() / args.iters.max(1) as f64;
        let algbw = bytes as f64 / secs / 1e9;
        let busbw = algbw * 2.0 * (world as f64 - 1.0) / world as f64;
        if rank == 0 {
            emit(serde_json::json!({
                "bench": "allreduce",
                "impl": "surgery-nccl",
                "case": case.name,
                "world": world,
                "dtype": if case.kind == Kind::Float { "f32" } else { "bf16" },
                "tensors": case.tensors.len(),
                "bytes": bytes,
                "iters": args.iters,
                "time_ms": secs * 1e3,
                "algbw_gbps": algbw,
                "busbw_gbps": busbw,
                "device": device_name,
                "nccl": format!("{lib} ({version})"),
            }));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ CPU

fn checksum(tensors: &[Tensor]) -> String {
    // FNV-1a over the result bits: equal on every rank iff the results are bit-identical.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tensors {
        let t = t.contiguous();
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut bytes = vec![0u8; n];
        t.copy_data_u8(&mut bytes, t.numel());
        for b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn cpu_checks(args: &Args, ring: &mut TcpRing) -> Result<i32, String> {
    let (rank, world) = (ring.rank(), ring.world_size());
    let cpu = Device::Cpu;
    // 1. Mixed shapes and dtypes, integer values so every summation order is exact.
    let shapes: [&[i64]; 6] = [&[3, 5], &[7], &[], &[2, 3, 4], &[1000], &[0]];
    let mut tensors = Vec::new();
    let mut expected = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let kind = if i % 2 == 0 { Kind::Float } else { Kind::BFloat16 };
        let pattern = Tensor::arange(s.iter().product::<i64>(), (Kind::Float, cpu))
            .fmod(7)
            .view(*s);
        let scale = (i % 5 + 1) as f64;
        tensors.push((&pattern * ((rank + 1) as f64 * scale)).to_kind(kind));
        expected.push((&pattern * ((world * (world + 1) / 2) as f64 * scale)).to_kind(kind));
    }
    // A non-contiguous view (reduced through a contiguous copy and written back).
    let base = Tensor::arange(12, (Kind::Float, cpu)).view([3, 4]) * (rank + 1) as f64;
    tensors.push(base.transpose(0, 1));
    expected
        .push((Tensor::arange(12, (Kind::Float, cpu)).view([3, 4]) * (world * (world + 1) / 2) as f64).transpose(0, 1));
    ring.all_reduce_sum(&tensors).map_err(|e| e.to_string())?;
    let exact = tensors
        .iter()
        .zip(&expected)
        .all(|(a, b)| a.kind() == b.kind() && a.equal(b));
    emit(
        serde_json::json!({"bench": "allreduce", "impl": "surgery-tcp", "case": "mixed-exact", "rank": rank,
        "world": world, "ok": exact, "checksum": checksum(&tensors)}),
    );
    if !exact {
        return Ok(1);
    }

    if args.fail_rank == Some(rank) {
        if args.fail_mode == "hang" {
            // Stop answering but keep the sockets open: the others must time out.
            std::thread::sleep(Duration::from_secs(3600));
        }
        // Die without closing anything gracefully.
        std::process::exit(3);
    }

    // 2. Random data: the sums depend on the order, so the check is that every rank got
    // the same bits (the test compares the checksums).
    tch::manual_seed(1000 + rank as i64);
    let random = vec![
        Tensor::randn([4097], (Kind::Float, cpu)),
        Tensor::randn([33, 31], (Kind::Float, cpu)),
        Tensor::randn([10], (Kind::BFloat16, cpu)),
    ];
    let start = Instant::now();
    let result = ring.all_reduce_sum(&random);
    if args.fail_rank.is_some() {
        // A peer was told to fail: the right outcome is a retryable error, in time.
        let elapsed = start.elapsed();
        let (kind, retryable) = match &result {
            Ok(()) => ("none", false),
            Err(e) => (error_kind(e), e.is_retryable()),
        };
        emit(
            serde_json::json!({"event": "peer-failure", "rank": rank, "error_kind": kind,
            "retryable": retryable, "elapsed_ms": elapsed.as_millis() as u64,
            "error": result.as_ref().err().map(|e| e.to_string())}),
        );
        return Ok(if retryable { 0 } else { 1 });
    }
    result.map_err(|e| e.to_string())?;
    emit(
        serde_json::json!({"bench": "allreduce", "impl": "surgery-tcp", "case": "random-bits", "rank": rank,
        "world": world, "ok": true, "checksum": checksum(&random)}),
    );

    // 3. A small bandwidth figure (loopback TCP, informational).
    let buf = Tensor::zeros([1 << 22], (Kind::Float, cpu));
    let bufs = [buf];
    ring.all_reduce_sum(&bufs).map_err(|e| e.to_string())?;
    ring.barrier().map_err(|e| e.to_string())?;
    let iters = args.iters.clamp(1, 5);
    let start = Instant::now();
    for _ in 0..iters {
        ring.all_reduce_sum(&bufs).map_err(|e| e.to_string())?;
    }
    let secs = start.elapsed().as_secs_f64() / iters as f64;
    let bytes = (1usize << 22) * 4;
    if rank == 0 {
        let algbw = bytes as f64 / secs / 1e9;
        emit(
            serde_json::json!({"bench": "allreduce", "impl": "surgery-tcp", "case": "flat-f32-16MiB", "world": world,
            "dtype": "f32", "tensors": 1, "bytes": bytes, "iters": iters, "time_ms": secs * 1e3, "algbw_gbps": algbw,
            "busbw_gbps": algbw * 2.0 * (world as f64 - 1.0) / world as f64}),
        );
    }
    ring.barrier().map_err(|e| e.to_string())?;
    Ok(0)
}

fn error_kind(e: &CollectiveError) -> &'static str {
    match e {
        CollectiveError::Timeout { .. } => "timeout",
        CollectiveError::Io { .. } => "io",
        CollectiveError::Peer { .. } => "peer",
        CollectiveError::Nccl { .. } => "nccl",
        CollectiveError::Cuda { .. } => "cuda",
        CollectiveError::Unavailable { .. } => "unavailable",
        CollectiveError::Invalid(_) => "invalid",
        CollectiveError::Broken(_) => "broken",
    }
}
