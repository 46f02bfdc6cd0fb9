//! Which libnccl, loaded how (see the module docs of [`super`]): the candidates in order,
//! the entry points this module uses resolved once per process, and NCCL's errors with
//! its own text.

use crate::collective::CollectiveError;
use cudarc::nccl::sys as nc;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable with a full path to the `libnccl.so.2` to use.
pub const NCCL_LIB_ENV: &str = "SURGERY_NCCL_LIB";

pub(super) type NcclResult = c_int;
pub(super) type Stream = *mut c_void;

/// The NCCL entry points [`super::Nccl`] uses, resolved once from the first library of
/// [`candidates`] that loads.
pub(super) struct Api {
    pub(super) path: String,
    pub(super) version: c_int,
    pub(super) get_unique_id: unsafe extern "C" fn(*mut nc::ncclUniqueId) -> NcclResult,
    pub(super) comm_init_rank: unsafe extern "C" fn(*mut nc::ncclComm_t, c_int, nc::ncclUniqueId, c_int) -> NcclResult,
    pub(super) comm_init_rank_config: Option<
        unsafe extern "C" fn(*mut nc::ncclComm_t, c_int, nc::ncclUniqueId, c_int, *mut nc::ncclConfig_t) -> NcclResult,
    >,
    pub(super) all_reduce:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, nc::ncclComm_t, Stream) -> NcclResult,
    pub(super) comm_finalize: Option<unsafe extern "C" fn(nc::ncclComm_t) -> NcclResult>,
    pub(super) comm_destroy: unsafe extern "C" fn(nc::ncclComm_t) -> NcclResult,
    pub(super) comm_abort: unsafe extern "C" fn(nc::ncclComm_t) -> NcclResult,
    pub(super) comm_get_async_error: unsafe extern "C" fn(nc::ncclComm_t, *mut NcclResult) -> NcclResult,
    pub(super) get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    pub(super) get_last_error: Option<unsafe extern "C" fn(nc::ncclComm_t) -> *const c_char>,
    // Keeps the library mapped for the life of the process (the fn pointers point into it).
    _lib: libloading::os::unix::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn nccl_unavailable(detail: String) -> CollectiveError {
    CollectiveError::Unavailable {
        library: "libnccl.so.2 (NCCL, LibTorch's copy)".into(),
        detail: format!(
            "{detail}. Install the CUDA build of torch (its nvidia-nccl wheel provides site-packages/nvidia/nccl/lib/\
             libnccl.so.2) or set {NCCL_LIB_ENV} to the full path of LibTorch's libnccl.so.2; a machine without GPUs \
             uses the TCP ring instead"
        ),
    }
}

pub(super) fn api() -> Result<&'static Api, CollectiveError> {
    API.get_or_init(load_api)
        .as_ref()
        .map_err(|e| nccl_unavailable(e.clone()))
}

/// Every library path mapped into this process (from /proc/self/maps), in map order.
fn mapped_libraries() -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(i) = line.find('/') else { continue };
        let path = line[i..].trim_end();
        if path.ends_with(" (deleted)") {
            continue;
        }
        let path = PathBuf::from(path);
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Where to look for libnccl, best first (see the module docs), with what was considered.
fn candidates() -> (Vec<String>, Vec<String>) {
    if let Ok(path) = std::env::var(NCCL_LIB_ENV) {
        return (vec![path.clone()], vec![format!("{NCCL_LIB_ENV}={path}")]);
    }
    let mut found: Vec<String> = Vec::new();
    let mut looked: Vec<String> = Vec::new();
    let maps = mapped_libraries();
    for p in &maps {
        if file_name(p).starts_with("libnccl.so") {
            found.push(p.display().to_string());
        }
    }
    if found.is_empty() {
        looked.push("no libnccl mapped in this process (libtorch_cuda.so not loaded?)".into());
    }
    let torch_dirs: Vec<PathBuf> = maps
        .iter()
        .filter(|p| {
            matches!(
                file_name(p),
                "libtorch_cuda.so" | "libtorch_cpu.so" | "libtorch.so" | "libc10.so"
            )
        })
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .fold(Vec::new(), |mut dirs, d| {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
            dirs
        });
    for dir in &torch_dirs {
        for p in [dir.join("../../nvidia/nccl/lib/libnccl.so.2"), dir.join("libnccl.so.2")] {
            if p.exists() {
                found.push(p.display().to_string());
            } else {
                looked.push(format!("{} (absent)", p.display()));
            }
        }
    }
    found.push("libnccl.so.2".into());
    looked.push("libnccl.so.2 on the dynamic loader's search path".into());
    let mut unique = Vec::new();
    for f in found {
        if !unique.contains(&f) {
            unique.push(f);
        }
    }
    (unique, looked)
}

fn load_api() -> Result<Api, String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    let (candidates, looked) = candidates();
    let mut errors = Vec::new();
    for path in &candidates {
        // SAFETY: loading NCCL runs only its initialisers; if LibTorch already mapped this
        // file, dlopen returns the same handle.
        let lib = match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) } {
            Ok(lib) => lib,
            Err(e) => {
                errors.push(format!("{path}: {}", error_chain(&e)));
                continue;
            }
        };
        match resolve(lib, path) {
            Ok(api) => return Ok(api),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    Err(format!(
        "could not load NCCL: {}; also looked at: {}",
        errors.join("; "),
        looked.join("; ")
    ))
}

/// An error with its sources (libloading puts dlerror's text in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

fn resolve(lib: libloading::os::unix::Library, path: &str) -> Result<Api, String> {
    // SAFETY (every `get`): the signatures are those of nccl.h (NCCL 2.14 and later);
    // enums are C ints.
    unsafe fn sym<T: Copy>(lib: &libloading::os::unix::Library, name: &str) -> Result<T, String> {
        // SAFETY: see above.
        unsafe {
            lib.get::<T>(name.as_bytes())
                .map(|s| *s)
                .map_err(|e| format!("missing {name}: {e}"))
        }
    }
    unsafe {
        let get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult = sym(&lib, "ncclGetVersion")?;
        let mut version = 0;
        get_version(&mut version);
        Ok(Api {
            path: path.to_string(),
            version,
            get_unique_id: sym(&lib, "ncclGetUniqueId")?,
            comm_init_rank: sym(&lib, "ncclCommInitRank")?,
            comm_init_rank_config: sym(&lib, "ncclCommInitRankConfig").ok(),
            all_reduce: sym(&lib, "ncclAllReduce")?,
            comm_finalize: sym(&lib, "ncclCommFinalize").ok(),
            comm_destroy: sym(&lib, "ncclCommDestroy")?,
            comm_abort: sym(&lib, "ncclCommAbort")?,
            comm_get_async_error: sym(&lib, "ncclCommGetAsyncError")?,
            get_error_string: sym(&lib, "ncclGetErrorString")?,
            get_last_error: sym(&lib, "ncclGetLastError").ok(),
            _lib: lib,
        })
    }
}

fn code_name(code: c_int) -> &'static str {
    match code {
        0 => "ncclSuccess",
        1 => "ncclUnhandledCudaError",
        2 => "ncclSystemError",
        3 => "ncclInternalError",
        4 => "ncclInvalidArgument",
        5 => "ncclInvalidUsage",
        6 => "ncclRemoteError",
        7 => "ncclInProgress",
        8 => "ncclTimeout",
        _ => "unknown NCCL result",
    }
}

pub(super) fn nccl_error(
    api: &Api,
    comm: nc::ncclComm_t,
    rank: usize,
    call: &'static str,
    code: c_int,
) -> CollectiveError {
    // SAFETY: NCCL returns static, NUL-terminated strings.
    let mut message = unsafe { CStr::from_ptr((api.get_error_string)(code)) }
        .to_string_lossy()
        .into_owned();
    if let Some(last) = api.get_last_error {
        // SAFETY: as above; NCCL accepts a null communicator here.
        let detail = unsafe { last(comm) };
        if !detail.is_null() {
            let detail = unsafe { CStr::from_ptr(detail) }.to_string_lossy();
            if !detail.is_empty() {
                message = format!("{message}; last error: {detail}");
            }
        }
    }
    CollectiveError::Nccl {
        rank,
        call,
        code,
        code_name: code_name(code),
        message,
    }
}
