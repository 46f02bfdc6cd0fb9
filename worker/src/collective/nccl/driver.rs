//! The CUDA driver (through cudarc, loaded at run time): initialised once per process, and
//! its errors as collective errors.

use crate::collective::CollectiveError;
use cudarc::driver::result as cu;
use cudarc::driver::sys as cusys;
use std::sync::OnceLock;

static DRIVER: OnceLock<Result<(), CollectiveError>> = OnceLock::new();

/// Loads the CUDA driver through cudarc and runs cuInit, once per process.
pub(super) fn driver() -> Result<(), CollectiveError> {
    DRIVER
        .get_or_init(|| {
            // SAFETY: probing only dlopens candidate names.
            if !unsafe { cusys::is_culib_present() } {
                return Err(CollectiveError::Unavailable {
                    library: "libcuda.so.1 (the NVIDIA driver)".into(),
                    detail: "no CUDA driver library could be loaded (cudarc looked for libcuda.so, libcuda.so.1 and \
                             other names on the dynamic loader's search path): this machine has no NVIDIA driver; run \
                             CUDA gangs on GPU workers, or use the TCP ring for CPU tensors"
                        .into(),
                });
            }
            // cudarc panics on a symbol the driver lacks (a very old driver): report it.
            match std::panic::catch_unwind(cu::init) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(CollectiveError::Unavailable {
                    library: "CUDA".into(),
                    detail: format!("cuInit failed: {e}; no usable GPU (check the driver and CUDA_VISIBLE_DEVICES)"),
                }),
                Err(_) => Err(CollectiveError::Unavailable {
                    library: "libcuda.so.1 (the NVIDIA driver)".into(),
                    detail: "the driver library lacks cuInit (too old for CUDA 13?)".into(),
                }),
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(clone_unavailable)
}

fn clone_unavailable(e: &CollectiveError) -> CollectiveError {
    match e {
        CollectiveError::Unavailable { library, detail } => CollectiveError::Unavailable {
            library: library.clone(),
            detail: detail.clone(),
        },
        other => CollectiveError::Unavailable {
            library: "CUDA".into(),
            detail: other.to_string(),
        },
    }
}

pub(super) fn cuda_err(call: &'static str, e: cu::DriverError) -> CollectiveError {
    CollectiveError::Cuda {
        call,
        message: e.to_string(),
    }
}
