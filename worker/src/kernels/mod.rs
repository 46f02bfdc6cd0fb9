//! The project's CUDA kernels (`attention.cu`: the fused hybrid attention, used by
//! [`crate::attention::fused`]; `block.cu`: the element-wise work of a Wan block, used by
//! [`crate::model::fused`]), compiled at run time and launched.
//!
//! NVRTC is LibTorch's own: the GPU install of torch ships `libnvrtc.so.13` under
//! `site-packages/nvidia/cu13/lib`, next to `torch/lib`. cudarc's loader only tries bare
//! names (`libnvrtc.so.13`, ...) on the dynamic loader's search path and panics when none
//! loads, so the library is opened here first, by path (`SURGERY_NVRTC_LIB`, then beside
//! the mapped `libtorch_cpu.so`, then the bare name), with its builtins library: once
//! mapped, cudarc's (and NVRTC's own) `dlopen` of the same soname finds it. A machine
//! without it simply has no fused kernels.
//!
//! One compiled module per device (for its compute capability), cached for the life of
//! the process; kernels launch on the legacy default stream, the stream LibTorch (through
//! tch) runs every op on, so they are ordered with the GEMMs around them and nothing
//! synchronises with the host.

use cudarc::driver::result as cu;
use cudarc::driver::sys as cusys;
use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The kernels' source: one program, so every kernel shares the bf16 helpers.
pub const SOURCE: &str = concat!(include_str!("attention.cu"), "\n", include_str!("block.cu"));

/// Environment variable with a full path to the `libnvrtc.so` to use.
pub const NVRTC_LIB_ENV: &str = "SURGERY_NVRTC_LIB";

/// A kernel argument, kept alive while the launch reads it.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

impl Arg {
    fn as_param(&mut self) -> *mut c_void {
        match self {
            Arg::Ptr(p) => p as *mut u64 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
        }
    }
}

/// The suffix of a kernel for tensors of `kind`: `bf16` or `f32`.
pub fn suffix(kind: tch::Kind) -> Result<&'static str, String> {
    match kind {
        tch::Kind::BFloat16 => Ok("bf16"),
        tch::Kind::Float => Ok("f32"),
        other => Err(format!("the kernels take bf16 or fp32, not {other:?}")),
    }
}

/// The module of the CUDA device `t` lives on.
pub fn module_of(t: &tch::Tensor) -> Result<Arc<Module>, String> {
    match t.device() {
        tch::Device::Cuda(i) => module(i),
        other => Err(format!("the kernels run on CUDA, not {other:?}")),
    }
}

/// A tensor's device pointer as a kernel argument.
pub fn ptr(t: &tch::Tensor) -> Arg {
    Arg::Ptr(t.data_ptr() as u64)
}

/// Environment switch: `0`, `off`, `false` or `no` keeps everything on LibTorch's eager
/// ops (the reference the kernels are tested against).
pub const SWITCH_ENV: &str = "SURGERY_FUSED_KERNELS";

/// Whether the environment allows the kernels (read once).
pub fn allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        !matches!(
            std::env::var(SWITCH_ENV).map(|v| v.to_ascii_lowercase()).as_deref(),
            Ok("0" | "off" | "false" | "no")
        )
    })
}

/// Why the kernels cannot serve tensors of `device` and `kind`, or `Ok` when they can.
pub fn availability(device: tch::Device, kind: tch::Kind) -> Result<(), String> {
    if !allowed() {
        return Err(format!("turned off by {SWITCH_ENV}"));
    }
    let tch::Device::Cuda(index) = device else {
        return Err("the fused kernels run on CUDA; CPU uses the eager path".into());
    };
    suffix(kind)?;
    module(index).map(|_| ())
}

/// True when the kernels serve `t`'s device and dtype; on CUDA, logs once why not.
pub fn usable(t: &tch::Tensor) -> bool {
    match availability(t.device(), t.kind()) {
        Ok(()) => true,
        Err(why) => {
            static WARNED: OnceLock<()> = OnceLock::new();
            if t.device().is_cuda() && allowed() {
                WARNED.get_or_init(|| tracing::warn!("fused kernels unavailable, using LibTorch's eager ops: {why}"));
            }
            false
        }
    }
}

/// The name of CUDA device `index` ("NVIDIA H200"), from the driver.
pub fn device_name(index: usize) -> Option<String> {
    cu::init().ok()?;
    let device = cu::device::get(index as i32).ok()?;
    cu::device::get_name(device).ok()
}

/// The compiled module of one device.
pub struct Module {
    ctx: cusys::CUcontext,
    functions: HashMap<String, cusys::CUfunction>,
}

// SAFETY: CUDA driver handles are process-wide and may be used from any thread once the
// context is made current there (launch does so).
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Launches `name` with a 1-D grid covering `work` items (grid-stride kernels) on the
    /// default stream.
    pub fn launch(&self, name: &str, work: i64, args: &mut [Arg]) -> Result<(), String> {
        let f = *self
            .functions
            .get(name)
            .ok_or_else(|| format!("no kernel `{name}` in the module"))?;
        let threads: i64 = 256;
        let blocks = ((work.max(1) + threads - 1) / threads).clamp(1, 16_384) as u32;
        self.launch_grid(f, name, blocks, args)
    }

    /// Launches a per-head kernel: grid y = `slabs` ((batch, head) slabs), x covering
    /// `per_slab` work items per slab.
    pub fn launch_slabs(&self, name: &str, slabs: i64, per_slab: i64, args: &mut [Arg]) -> Result<(), String> {
        let f = *self
            .functions
            .get(name)
            .ok_or_else(|| format!("no kernel `{name}` in the module"))?;
        let blocks_x = ((per_slab.max(1) + 255) / 256).clamp(1, 4096) as u32;
        if slabs > 65_535 {
            return Err(format!("{slabs} (batch, head) slabs exceed the grid's 65,535"));
        }
        self.launch_grid2(f, name, (blocks_x, slabs.max(1) as u32), args)
    }

    /// Launches a row-wise kernel (one block of 256 threads per row, grid-stride over
    /// rows) for `rows` rows.
    pub fn launch_rows(&self, name: &str, rows: i64, args: &mut [Arg]) -> Result<(), String> {
        let f = *self
            .functions
            .get(name)
            .ok_or_else(|| format!("no kernel `{name}` in the module"))?;
        self.launch_grid(f, name, rows.clamp(1, 65_535) as u32, args)
    }

    fn launch_grid(&self, f: cusys::CUfunction, name: &str, blocks: u32, args: &mut [Arg]) -> Result<(), String> {
        self.launch_grid2(f, name, (blocks, 1), args)
    }

    fn launch_grid2(&self, f: cusys::CUfunction, name: &str, grid: (u32, u32), args: &mut [Arg]) -> Result<(), String> {
        let threads: u32 = 256;
        let mut params: Vec<*mut c_void> = args.iter_mut().map(Arg::as_param).collect();
        // SAFETY: the context is the device's primary context (LibTorch's); the arguments
        // match the kernel's signature (the callers in this module are its only users) and
        // outlive the call, which copies them.
        unsafe {
            cu::ctx::set_current(self.ctx).map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
            cu::launch_kernel(
                f,
                (grid.0, grid.1, 1),
                (threads, 1, 1),
                0,
                std::ptr::null_mut(),
                &mut params,
            )
            .map_err(|e| format!("launching {name}: {e:?}"))
        }
    }
}

/// Each device's module, or why it has none.
type ModuleCache = Mutex<HashMap<usize, Result<Arc<Module>, String>>>;

static MODULES: OnceLock<ModuleCache> = OnceLock::new();

/// The module for CUDA device `index`, compiled on first use; the error says why there
/// is none (no NVRTC, a compile error), and is cached too.
pub fn module(index: usize) -> Result<Arc<Module>, String> {
    let cache = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry(index).or_insert_with(|| build(index).map(Arc::new)).clone()
}

fn build(index: usize) -> Result<Module, String> {
    load_nvrtc()?;
    cu::init().map_err(|e| format!("cuInit: {e:?}"))?;
    let device = cu::device::get(index as i32).map_err(|e| format!("cuDeviceGet({index}): {e:?}"))?;
    // SAFETY: a valid device; attribute queries have no other precondition.
    let (major, minor) = unsafe {
        (
            cu::device::get_attribute(
                device,
                cusys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            ),
            cu::device::get_attribute(
                device,
                cusys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            ),
        )
    };
    let (major, minor) = (
        major.map_err(|e| format!("{e:?}"))?,
        minor.map_err(|e| format!("{e:?}"))?,
    );
    let ptx = compile(&format!("compute_{major}{minor}"))?;
    // SAFETY: the primary context LibTorch uses; retained for the life of the process.
    let ctx = unsafe { cu::primary_ctx::retain(device) }.map_err(|e| format!("cuDevicePrimaryCtxRetain: {e:?}"))?;
    unsafe { cu::ctx::set_current(ctx) }.map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
    let image = CString::new(ptx).map_err(|_| "the PTX holds a NUL byte".to_string())?;
    // SAFETY: a NUL-terminated PTX image; the module lives for the process.
    let module = unsafe { cu::module::load_data(image.as_ptr() as *const c_void) }
        .map_err(|e| format!("cuModuleLoadData: {e:?}"))?;
    let mut functions = HashMap::new();
    for name in kernel_names() {
        let c_name = CString::new(name.clone()).expect("kernel names are plain");
        // SAFETY: a loaded module; the name is NUL-terminated.
        let f = unsafe { cu::module::get_function(module, c_name) }.map_err(|e| format!("kernel {name}: {e:?}"))?;
        functions.insert(name, f);
    }
    Ok(Module { ctx, functions })
}

/// Every `extern "C" __global__` kernel of [`SOURCE`]: the attention kernels for both
/// element types and both vector widths (`_v1`, `_v8`), the block kernels for both types.
pub fn kernel_names() -> Vec<String> {
    const ATTENTION: [&str; 7] = [
        "bias_gelu",
        "bias_chunks",
        "augment",
        "combine",
        "combine_backward",
        "chunks_backward",
        "gelu_backward",
    ];
    const BLOCK: [&str; 3] = ["layer_norm_modulate", "gated_residual", "rms_rope"];
    let mut names = Vec::new();
    for t in ["bf16", "f32"] {
        for base in ATTENTION {
            names.extend([format!("{base}_{t}_v1"), format!("{base}_{t}_v8")]);
        }
        names.extend(BLOCK.iter().map(|base| format!("{base}_{t}")));
    }
    names
}

/// The vector width a kernel moves per thread for rows `widths` wide: 8 when every width
/// is a multiple of 8 (16-byte loads for bf16), else 1.
pub fn vector_width(widths: &[i64]) -> i64 {
    if widths.iter().all(|w| w % 8 == 0) { 8 } else { 1 }
}

/// Compiles [`SOURCE`] to PTX for a virtual architecture (`compute_90`); the driver
/// finishes it for the exact device when the module loads. Needs NVRTC, not a GPU.
pub fn compile(arch: &str) -> Result<String, String> {
    load_nvrtc()?;
    let arch: &'static str = Box::leak(arch.to_string().into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            format!("NVRTC could not compile the fused kernels:\n{}", log.to_string_lossy())
        }
        other => format!("NVRTC: {other:?}"),
    })?;
    Ok(ptx.to_src())
}

/// Maps LibTorch's NVRTC into the process (see the module documentation).
pub fn load_nvrtc() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
            let mut tried = Vec::new();
            for candidate in nvrtc_candidates() {
                // NVRTC opens its builtins by bare name when it compiles; map the copy that
                // sits beside it first, so that name finds it without LD_LIBRARY_PATH.
                let builtins = candidate.with_file_name("libnvrtc-builtins.so.13.0");
                if candidate.is_absolute() && builtins.exists() {
                    // SAFETY: as below.
                    if let Ok(lib) = unsafe { Library::open(Some(&builtins), RTLD_NOW | RTLD_GLOBAL) } {
                        std::mem::forget(lib);
                    }
                }
                // SAFETY: NVRTC's initialisers have no preconditions.
                match unsafe { Library::open(Some(&candidate), RTLD_NOW | RTLD_GLOBAL) } {
                    Ok(lib) => {
                        std::mem::forget(lib);
                        return Ok(());
                    }
                    Err(e) => tried.push(format!("{}: {e}", candidate.display())),
                }
            }
            Err(format!(
                "NVRTC (libnvrtc.so.13, shipped with LibTorch's CUDA install) was not found; tried {}. Set {NVRTC_LIB_ENV} to its path",
                tried.join("; ")
            ))
        })
        .clone()
}

fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(path) = std::env::var(NVRTC_LIB_ENV) {
        out.push(PathBuf::from(path));
    }
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        let torch_lib = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libtorch_cpu.so"))
            .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from));
        if let Some(dir) = torch_lib {
            out.push(dir.join("../../nvidia/cu13/lib/libnvrtc.so.13"));
            out.push(dir.join("libnvrtc.so.13"));
        }
    }
    out.push(PathBuf::from("libnvrtc.so.13"));
    out
}
