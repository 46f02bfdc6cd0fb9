//! NCCL for CUDA tensors: one rank per GPU, across worker processes and hosts.
//!
//! # Which libnccl, and why we load it ourselves
//!
//! LibTorch (the pip wheel) links `libnccl.so.2` from `site-packages/nvidia/nccl/lib`, and
//! NCCL must be the same library in the whole process: the GPU image also has a different
//! system `libnccl.so`, and mixing the two fails with `ncclInvalidArgument` ("corrupted comm
//! object", GPU.md point 3). cudarc 0.19.10's NCCL loader (`nccl::sys::culib`) dlopens the
//! names of `cudarc::get_lib_name_candidates("nccl")` (`libnccl.so`, `libnccl.so.13`,
//! `.12`, ..., `.1`) through the dynamic loader's search path: it never asks for
//! `libnccl.so.2`, takes no path or environment override, and panics when nothing loads.
//! So this module loads NCCL itself with libloading and resolves the few entry points it
//! needs, in this order:
//!
//! 1. `SURGERY_NCCL_LIB`, a full path, if set (and nothing else then);
//! 2. a `libnccl.so*` already mapped into this process: the one `libtorch_cuda.so` pulled
//!    in when [`crate::runtime::init`] loaded it, i.e. exactly LibTorch's NCCL;
//! 3. next to the LibTorch that is mapped: `<dir of libtorch_cuda.so or libtorch_cpu.so>/
//!    ../../nvidia/nccl/lib/libnccl.so.2` (pip's layout), then `<that dir>/libnccl.so.2`;
//! 4. the bare name `libnccl.so.2` through the dynamic loader's search path.
//!
//! It does not depend on the operator's `LD_LIBRARY_PATH`. cudarc still supplies the C
//! types (`ncclUniqueId`, `ncclConfig_t` of NCCL 2.28) and the CUDA driver API (libcuda,
//! found by cudarc's own candidates, which include the driver's `libcuda.so.1`).
//!
//! # Context and stream
//!
//! [`Nccl::new`] makes the device's primary context current (cuInit, cuDeviceGet,
//! cuDevicePrimaryCtxRetain, cuCtxSetCurrent): the context LibTorch's runtime uses. Every
//! call makes it current again, so the communicator may move between threads. Collectives
//! run on the null (legacy default) stream with the tensors' `data_ptr()`: the stream tch
//! runs on, so they are ordered after the kernels that produced the gradients and before
//! whatever reads them, with no extra synchronisation.
//!
//! # The watchdog
//!
//! NCCL calls return at once; a hang shows only when waiting for the work. The
//! communicator is created non-blocking (`ncclConfig_t.blocking = 0`) so that even
//! `ncclCommInitRank`, which waits for every member, returns at once. Each call then polls,
//! until the call's deadline (`timeout` after it started): `ncclCommGetAsyncError` (init
//! and enqueue progress, errors such as a peer's broken connection) and a CUDA event
//! recorded on the null stream after the last collective (completion). Polling spins
//! (yielding the thread) for the first 50 ms, then sleeps 1 ms per round: a late
//! completion costs at most a millisecond, and only for calls that already took 50 ms.
//! On timeout the communicator is aborted (`ncclCommAbort`, which also makes NCCL's kernels
//! return, freeing the stream) and the call fails with [`CollectiveError::Timeout`]: the
//! task fails as retryable and the coordinator requeues the whole gang. `all_reduce_sum`
//! therefore returns only once the reduction finished on the GPU.
//!
//! Here: the communicator and its watchdog; `library`: finding and loading libnccl, its
//! entry points and errors; `driver`: the CUDA driver.

mod driver;
mod library;

use super::{Collective, CollectiveError, Segment, Staged, kind_name, segments};
use cudarc::driver::result as cu;
use cudarc::driver::sys as cusys;
use cudarc::nccl::sys as nc;
use driver::{cuda_err, driver};
pub use library::NCCL_LIB_ENV;
use library::{Api, NcclResult, api, nccl_error};
use std::ffi::{c_char, c_int, c_void};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
/// `NCCL_CONFIG_UNDEF_INT`: let NCCL choose.
const UNDEF_INT: c_int = c_int::MIN;
/// `NCCL_VERSION(2, 28, 0)`: the header version whose `ncclConfig_t` cudarc binds. NCCL
/// reads `min(config.size, its own sizeof)` bytes, so newer and older (>= 2.14) libraries
/// accept it.
const CONFIG_VERSION: u32 = 2 * 10000 + 28 * 100;
/// Spin (yielding) this long before sleeping between polls.
const SPIN: Duration = Duration::from_millis(50);
const SLEEP: Duration = Duration::from_millis(1);
/// The longest a dropped communicator waits for its peers to finalize before aborting.
const DROP_WAIT: Duration = Duration::from_secs(30);

fn nccl_dtype(kind: Kind) -> Option<c_int> {
    Some(match kind {
        Kind::Float => nc::ncclDataType_t::ncclFloat32 as c_int,
        Kind::BFloat16 => nc::ncclDataType_t::ncclBfloat16 as c_int,
        Kind::Half => nc::ncclDataType_t::ncclFloat16 as c_int,
        Kind::Double => nc::ncclDataType_t::ncclFloat64 as c_int,
        _ => return None,
    })
}

/// An NCCL communicator for one GPU of a gang.
pub struct Nccl {
    api: &'static Api,
    /// Null once aborted or destroyed.
    comm: nc::ncclComm_t,
    rank: usize,
    world: usize,
    device: usize,
    cu_device: cusys::CUdevice,
    ctx: cusys::CUcontext,
    event: Option<cusys::CUevent>,
    nonblocking: bool,
    timeout: Duration,
    bucket_bytes: usize,
    broken: Option<String>,
}

// SAFETY: a communicator may be used from any thread as long as calls do not overlap
// (`&mut self` ensures that); every call makes the primary context current first.
unsafe impl Send for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("device", &self.device)
            .field("library", &self.api.path)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Nccl {
    /// Default segment size: 512 MiB. NCCL reaches its peak bus bandwidth from a few
    /// hundred MB per call; a packed segment costs one temporary buffer of this size.
    pub const DEFAULT_BUCKET_BYTES: usize = 512 << 20;

    /// Rank 0's half of the rendezvous: a fresh NCCL unique id (128 bytes) for the
    /// coordinator to relay to the other members. It also starts NCCL's bootstrap listener
    /// in this process, so the process that made it must be rank 0.
    pub fn unique_id() -> Result<[u8; 128], CollectiveError> {
        let api = api()?;
        let mut id = nc::ncclUniqueId { internal: [0; 128] };
        // SAFETY: `id` is a valid out-pointer.
        let code = unsafe { (api.get_unique_id)(&mut id) };
        if code != NCCL_SUCCESS {
            return Err(nccl_error(api, std::ptr::null_mut(), 0, "ncclGetUniqueId", code));
        }
        Ok(id.internal.map(|c| c as u8))
    }

    /// Where NCCL was loaded from, and its version code (e.g. 22805 for 2.28.5).
    pub fn library() -> Result<(String, i32), CollectiveError> {
        api().map(|a| (a.path.clone(), a.version))
    }

    /// Joins the gang as `rank` of `world` on CUDA device `device_index` (as tch numbers
    /// it), with rank 0's `unique_id`. Waits for every member up to `timeout`; the same
    /// `timeout` then bounds every call.
    pub fn new(
        device_index: usize,
        rank: usize,
        world: usize,
        unique_id: [u8; 128],
        timeout: Duration,
    ) -> Result<Nccl, CollectiveError> {
        if world == 0 || rank >= world {
            return Err(CollectiveError::Invalid(format!("rank {rank} of world size {world}")));
        }
        driver()?;
        let api = api()?;
        let start = Instant::now();
        let cu_device = cu::device::get(device_index as c_int).map_err(|e| cuda_err("cuDeviceGet", e))?;
        // SAFETY: a valid device handle; released in Drop (or below on failure).
        let ctx = unsafe { cu::primary_ctx::retain(cu_device) }.map_err(|e| cuda_err("cuDevicePrimaryCtxRetain", e))?;
        let mut nccl = Nccl {
            api,
            comm: std::ptr::null_mut(),
            rank,
            world,
            device: device_index,
            cu_device,
            ctx,
            event: None,
            nonblocking: api.comm_init_rank_config.is_some(),
            timeout,
            bucket_bytes: Nccl::DEFAULT_BUCKET_BYTES,
            broken: None,
        };
        // From here Drop releases what was acquired.
        nccl.make_current()?;
        nccl.event = Some(
            cu::event::create(cusys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| cuda_err("cuEventCreate", e))?,
        );
        let id = nc::ncclUniqueId {
            internal: unique_id.map(|b| b as c_char),
        };
        let mut comm: nc::ncclComm_t = std::ptr::null_mut();
        let code = match api.comm_init_rank_config {
            Some(init) => {
                let mut config = nc::ncclConfig_t {
                    size: std::mem::size_of::<nc::ncclConfig_t>(),
                    magic: 0xcafe_beef,
                    version: CONFIG_VERSION,
                    blocking: 0,
                    cgaClusterSize: UNDEF_INT,
                    minCTAs: UNDEF_INT,
                    maxCTAs: UNDEF_INT,
                    netName: std::ptr::null(),
                    splitShare: UNDEF_INT,
                    trafficClass: UNDEF_INT,
                    commName: std::ptr::null(),
                    collnetEnable: UNDEF_INT,
                    CTAPolicy: UNDEF_INT,
                    shrinkShare: UNDEF_INT,
                    nvlsCTAs: UNDEF_INT,
                    nChannelsPerNetPeer: UNDEF_INT,
                    nvlinkCentricSched: UNDEF_INT,
                };
                // SAFETY: valid out-pointer and config; NCCL copies the config.
                unsafe { init(&mut comm, world as c_int, id, rank as c_int, &mut config) }
            }
            // NCCL older than 2.14: blocking init, no watchdog until it returns.
            // SAFETY: valid out-pointer.
            None => unsafe { (api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int) },
        };
        nccl.comm = comm;
        if code != NCCL_SUCCESS && code != NCCL_IN_PROGRESS {
            let err = nccl_error(api, comm, rank, "ncclCommInitRank", code);
            nccl.abort(&err.to_string());
            return Err(err);
        }
        nccl.settle(
            "ncclCommInitRank",
            "initialising the communicator (waiting for every member)",
            start,
        )?;
        Ok(nccl)
    }

    /// Sets the segment size in bytes (every rank must use the same).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Nccl {
        self.bucket_bytes = bytes.max(16);
        self
    }

    /// The CUDA device this rank reduces on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.device)
    }

    fn err_broken(&self) -> Result<(), CollectiveError> {
        match &self.broken {
            Some(why) => Err(CollectiveError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    fn make_current(&self) -> Result<(), CollectiveError> {
        // SAFETY: `ctx` is the retained primary context of our device.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| cuda_err("cuCtxSetCurrent", e))
    }

    /// Aborts the communicator (NCCL's kernels return, its threads stop) and marks this
    /// collective broken.
    fn abort(&mut self, why: &str) {
        if self.broken.is_none() {
            self.broken = Some(why.to_string());
        }
        if !self.comm.is_null() {
            // SAFETY: a live communicator, aborted once.
            unsafe { (self.api.comm_abort)(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }

    fn async_error(&self) -> NcclResult {
        let mut state = NCCL_SUCCESS;
        // SAFETY: a live communicator and a valid out-pointer.
        let code = unsafe { (self.api.comm_get_async_error)(self.comm, &mut state) };
        if code != NCCL_SUCCESS { code } else { state }
    }

    /// Polls until `done` says so, NCCL reports an error, or `timeout` after `start`.
    fn poll(
        &mut self,
        call: &'static str,
        during: &str,
        start: Instant,
        mut done: impl FnMut(&Self) -> Result<bool, CollectiveError>,
    ) -> Result<(), CollectiveError> {
        let deadline = start + self.timeout;
        loop {
            let state = self.async_error();
            if state != NCCL_SUCCESS && state != NCCL_IN_PROGRESS {
                let err = nccl_error(self.api, self.comm, self.rank, call, state);
                self.abort(&err.to_string());
                return Err(err);
            }
            match done(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(err) => {
                    self.abort(&err.to_string());
                    return Err(err);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let err = CollectiveError::Timeout {
                    rank: self.rank,
                    world: self.world,
                    during: during.to_string(),
                    waited: now - start,
                };
                self.abort(&err.to_string());
                return Err(err);
            }
            if now - start < SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(SLEEP);
            }
        }
    }

    /// After a call that may return `ncclInProgress` on a non-blocking communicator: waits
    /// until NCCL finished enqueueing it (only then may the next NCCL call come, and only
    /// then is the work ordered on the stream).
    fn settle(&mut self, call: &'static str, during: &str, start: Instant) -> Result<(), CollectiveError> {
        if !self.nonblocking {
            return Ok(());
        }
        self.poll(call, during, start, |s| Ok(s.async_error() == NCCL_SUCCESS))
    }

    fn launch(&mut self, ptr: usize, count: usize, dtype: c_int, start: Instant) -> Result<(), CollectiveError> {
        let sum = nc::ncclRedOp_t::ncclSum as c_int;
        // SAFETY: `ptr` addresses `count` live elements of `dtype` on our device (in place:
        // send and receive buffers are the same, which NCCL allows), kept alive by the
        // caller until the work is enqueued and ordered on the null stream.
        let code = unsafe {
            (self.api.all_reduce)(
                ptr as *const c_void,
                ptr as *mut c_void,
                count,
                dtype,
                sum,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        if code != NCCL_SUCCESS && code != NCCL_IN_PROGRESS {
            let err = nccl_error(self.api, self.comm, self.rank, "ncclAllReduce", code);
            self.abort(&err.to_string());
            return Err(err);
        }
        self.settle("ncclAllReduce", "enqueueing an all-reduce", start)
    }

    /// Records the event on the null stream and polls it until the GPU got there.
    fn wait_for_stream(&mut self, during: &str, start: Instant) -> Result<(), CollectiveError> {
        let event = self.event.expect("event created in new");
        // SAFETY: a live event; the null stream of the current (primary) context.
        unsafe { cu::event::record(event, std::ptr::null_mut()) }.map_err(|e| cuda_err("cuEventRecord", e))?;
        self.poll("ncclAllReduce", during, start, |_| {
            // SAFETY: a live event.
            match unsafe { cu::event::query(event) } {
                Ok(()) => Ok(true),
                Err(e) if e.0 == cusys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                Err(e) => Err(cuda_err("cuEventQuery", e)),
            }
        })
    }

    fn validate(&self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        for (i, t) in tensors.iter().enumerate() {
            if !t.defined() {
                return Err(CollectiveError::Invalid(format!(
                    "tensor {i} is undefined (a gradient not computed yet?)"
                )));
            }
            if t.device() != Device::Cuda(self.device) {
                return Err(CollectiveError::Invalid(format!(
                    "tensor {i} is on {:?}; this NCCL rank reduces tensors on cuda:{}",
                    t.device(),
                    self.device
                )));
            }
            if nccl_dtype(t.kind()).is_none() {
                return Err(CollectiveError::Invalid(format!(
                    "tensor {i} has dtype {}; NCCL here reduces f32, bf16, f16 and f64",
                    kind_name(t.kind())
                )));
            }
        }
        Ok(())
    }

    fn all_reduce_inner(&mut self, tensors: &[Tensor], start: Instant) -> Result<(), CollectiveError> {
        let staged = Staged::new(tensors, |k| k);
        staged.check_disjoint()?;
        let numels: Vec<usize> = staged.work.iter().map(|t| t.numel()).collect();
        // One stream of segments per dtype, dtypes in order of first appearance (the same
        // on every rank).
        let mut kinds: Vec<Kind> = Vec::new();
        for t in &staged.work {
            if !kinds.contains(&t.kind()) {
                kinds.push(t.kind());
            }
        }
        for kind in kinds {
            let order: Vec<usize> = (0..staged.work.len())
                .filter(|&i| staged.work[i].kind() == kind)
                .collect();
            let dtype = nccl_dtype(kind).expect("validated");
            let max_elems = self.bucket_bytes / kind.elt_size_in_bytes();
            for seg in segments(&numels, &order, max_elems) {
                self.reduce_segment(&staged, &seg, dtype, start)?;
            }
        }
        staged.finish(tensors);
        self.wait_for_stream("waiting for the all-reduce to finish on the GPU", start)
    }

    fn reduce_segment(
        &mut self,
        staged: &Staged,
        seg: &Segment,
        dtype: c_int,
        start: Instant,
    ) -> Result<(), CollectiveError> {
        match staged.contiguous_span(seg) {
            Some(addr) => self.launch(addr, seg.numel, dtype, start),
            None => {
                let packed = staged.pack(seg);
                self.launch(packed.data_ptr() as usize, seg.numel, dtype, start)?;
                // Enqueued after the all-reduce on the same stream; `packed` may be freed
                // once this is enqueued (the caching allocator orders reuse on the stream).
                staged.unpack(seg, &packed);
                Ok(())
            }
        }
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        self.err_broken()?;
        self.validate(tensors)?;
        if tensors.iter().all(|t| t.numel() == 0) {
            return Ok(());
        }
        let start = Instant::now();
        self.make_current()?;
        let result = tch::no_grad(|| self.all_reduce_inner(tensors, start));
        if let Err(e) = &result {
            // Timeouts and NCCL errors aborted already; anything else mid-call also ends
            // the communicator, whose peers may be waiting in a collective.
            if !matches!(e, CollectiveError::Invalid(_)) {
                self.abort(&e.to_string());
            }
        }
        result
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.err_broken()?;
        let token = Tensor::ones([1], (Kind::Float, Device::Cuda(self.device)));
        self.all_reduce_sum(&[token])
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let _ = self.make_current();
        if !self.comm.is_null() {
            // Finalize flushes outstanding work with the peers; on a non-blocking
            // communicator it is polled with the watchdog (at most 30 s here), and a gang
            // that is gone gets an abort instead of a hang.
            self.timeout = self.timeout.min(DROP_WAIT);
            let start = Instant::now();
            let finalized = match (self.nonblocking, self.api.comm_finalize) {
                (true, Some(finalize)) => {
                    // SAFETY: a live communicator.
                    let code = unsafe { finalize(self.comm) };
                    (code == NCCL_SUCCESS || code == NCCL_IN_PROGRESS)
                        && self
                            .settle("ncclCommFinalize", "finalizing the communicator", start)
                            .is_ok()
                }
                _ => true,
            };
            if finalized && !self.comm.is_null() {
                // SAFETY: a live, finalized communicator, destroyed once.
                unsafe { (self.api.comm_destroy)(self.comm) };
                self.comm = std::ptr::null_mut();
            } else {
                self.abort("dropped");
            }
        }
        if let Some(event) = self.event.take() {
            // SAFETY: a live event, destroyed once.
            let _ = unsafe { cu::event::destroy(event) };
        }
        // SAFETY: balances the retain in `new`.
        let _ = unsafe { cu::primary_ctx::release(self.cu_device) };
    }
}
