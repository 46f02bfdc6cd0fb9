//! The Rust half of the autograd Function in `autograd.cpp`: the callbacks LibTorch calls
//! for its forward and backward, and [`apply`], which records the Function on the graph.
//! Tensors cross as tch's `C_tensor` pointers (`at::Tensor*`): borrowed ones are cloned
//! shallowly, returned ones are handed over (C++ deletes the box). A panic never crosses
//! the boundary: it becomes an error message, which C++ raises as an exception and
//! LibTorch reports where the caller ran the graph.

use super::linear::{self, Config, Phi, PhiOut, Saved};
use std::ffi::{CStr, c_char, c_int};
use std::sync::Once;
use tch::Tensor;
use torch_sys::C_tensor;

type ForwardFn = unsafe extern "C" fn(
    *const f64,
    c_int,
    *mut *mut C_tensor,
    c_int,
    *mut *mut C_tensor,
    *mut *mut C_tensor,
    c_int,
    *mut c_int,
    *mut c_char,
    c_int,
) -> c_int;
type BackwardFn = unsafe extern "C" fn(
    *const f64,
    c_int,
    *mut *mut C_tensor,
    c_int,
    *mut C_tensor,
    *mut *mut C_tensor,
    c_int,
    *mut c_char,
    c_int,
) -> c_int;

unsafe extern "C" {
    fn surgery_grad_enabled() -> c_int;
    fn surgery_fused_register(forward: ForwardFn, backward: BackwardFn);
    fn surgery_fused_apply(
        inputs: *mut *mut C_tensor,
        cfg: *const f64,
        n_cfg: c_int,
        err: *mut c_char,
        err_len: c_int,
    ) -> *mut C_tensor;
}

const INPUTS: usize = 12;

/// Whether LibTorch records gradients on this thread (not inside `tch::no_grad`).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { surgery_grad_enabled() != 0 }
}

fn register() {
    static ONCE: Once = Once::new();
    // SAFETY: the callbacks have the C signatures autograd.cpp declares.
    ONCE.call_once(|| unsafe { surgery_fused_register(forward_cb, backward_cb) });
}

/// Hands a tensor to C++ (which deletes the box).
fn into_raw(mut t: Tensor) -> *mut C_tensor {
    let p = t.as_mut_ptr();
    std::mem::forget(t);
    p
}

/// A shallow clone of a borrowed C++ tensor.
///
/// # Safety
/// `p` points to a live `at::Tensor`.
unsafe fn borrow(p: *mut C_tensor) -> Tensor {
    unsafe { Tensor::clone_from_ptr(p) }
}

fn write_err(err: *mut c_char, len: c_int, message: &str) {
    if err.is_null() || len <= 0 {
        return;
    }
    let bytes = message.as_bytes();
    let n = bytes.len().min(len as usize - 1);
    // SAFETY: err has room for len bytes (autograd.cpp's buffer).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, err, n);
        *err.add(n) = 0;
    }
}

fn catch<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

fn flatten(saved: Saved) -> Vec<Tensor> {
    let Saved {
        q,
        kl,
        v_aug,
        phi_q,
        phi_k,
        s_aug,
        y,
        dinv,
        params,
    } = saved;
    let mut out = vec![q, kl, v_aug];
    for p in [phi_q, phi_k] {
        out.extend([p.pre, p.hid, p.psi, p.phi]);
    }
    out.extend([s_aug, y, dinv]);
    out.extend(params);
    out
}

fn unflatten(mut t: Vec<Tensor>) -> Result<Saved, String> {
    if t.len() != 22 {
        return Err(format!("expected 22 saved tensors, got {}", t.len()));
    }
    let params: [Tensor; 8] = t.split_off(14).try_into().map_err(|_| "saved parameters".to_string())?;
    let mut it = t.into_iter();
    let mut next = || it.next().expect("counted");
    let (q, kl, v_aug) = (next(), next(), next());
    let mut phi = || PhiOut {
        pre: next(),
        hid: next(),
        psi: next(),
        phi: next(),
    };
    let (phi_q, phi_k) = (phi(), phi());
    let (s_aug, y, dinv) = (next(), next(), next());
    Ok(Saved {
        q,
        kl,
        v_aug,
        phi_q,
        phi_k,
        s_aug,
        y,
        dinv,
        params,
    })
}

fn phis(inputs: &[Tensor]) -> (Phi<'_>, Phi<'_>) {
    (linear::phi_of(&inputs[4..8]), linear::phi_of(&inputs[8..12]))
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn forward_cb(
    cfg: *const f64,
    n_cfg: c_int,
    inputs: *mut *mut C_tensor,
    n_inputs: c_int,
    output: *mut *mut C_tensor,
    saved: *mut *mut C_tensor,
    max_saved: c_int,
    n_saved: *mut c_int,
    err: *mut c_char,
    err_len: c_int,
) -> c_int {
    let result = catch(|| {
        // SAFETY: autograd.cpp passes n_cfg doubles and n_inputs live tensors.
        let cfg = Config::decode(unsafe { std::slice::from_raw_parts(cfg, n_cfg as usize) })?;
        let inputs: Vec<Tensor> = (0..n_inputs as usize)
            .map(|i| unsafe { borrow(*inputs.add(i)) })
            .collect();
        let (pq, pk) = phis(&inputs);
        let o = cfg.has_anchors.then_some(&inputs[0]);
        let (y, kept) = linear::forward(o, &inputs[1], &inputs[2], &inputs[3], &pq, &pk, &cfg)?;
        // Twelve saved tensors (the inputs) tell the backward to recompute in fp32.
        let kept = if linear::recomputes_in_fp32(inputs[1].kind()) {
            inputs
        } else {
            flatten(kept)
        };
        if kept.len() > max_saved as usize {
            return Err(format!("{} tensors to save, room for {max_saved}", kept.len()));
        }
        Ok((y, kept))
    });
    match result {
        Ok((y, kept)) => {
            // SAFETY: output, saved and n_saved point to autograd.cpp's slots.
            unsafe {
                *output = into_raw(y);
                *n_saved = kept.len() as c_int;
                for (i, t) in kept.into_iter().enumerate() {
                    *saved.add(i) = into_raw(t);
                }
            }
            0
        }
        Err(message) => {
            write_err(err, err_len, &message);
            1
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn backward_cb(
    cfg: *const f64,
    n_cfg: c_int,
    saved: *mut *mut C_tensor,
    n_saved: c_int,
    grad_output: *mut C_tensor,
    grads: *mut *mut C_tensor,
    n_grads: c_int,
    err: *mut c_char,
    err_len: c_int,
) -> c_int {
    let result = catch(|| {
        // SAFETY: as in forward_cb.
        let cfg = Config::decode(unsafe { std::slice::from_raw_parts(cfg, n_cfg as usize) })?;
        let kept: Vec<Tensor> = (0..n_saved as usize)
            .map(|i| unsafe { borrow(*saved.add(i)) })
            .collect();
        let dy = unsafe { borrow(grad_output) };
        if kept.len() == INPUTS {
            linear::backward_recomputed(&kept, &dy, &cfg)
        } else {
            linear::backward(&unflatten(kept)?, &dy, &cfg)
        }
    });
    match result {
        Ok(out) => {
            for (i, g) in out.into_iter().enumerate().take(n_grads as usize) {
                // SAFETY: grads has n_grads slots.
                unsafe { *grads.add(i) = g.map_or(std::ptr::null_mut(), into_raw) };
            }
            0
        }
        Err(message) => {
            write_err(err, err_len, &message);
            1
        }
    }
}

/// Records the fused Function on the autograd graph: y with a backward to O (when
/// given), q, k_L, v_L and both maps' parameters.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    o: Option<&Tensor>,
    q: &Tensor,
    kl: &Tensor,
    vl: &Tensor,
    phi_q: &Phi,
    phi_k: &Phi,
    cfg: &Config,
) -> Result<Tensor, String> {
    register();
    // The linear rate has no O: an empty stand-in keeps the Function's arity fixed.
    let empty = Tensor::empty([0], (q.kind(), q.device()));
    let inputs: [&Tensor; INPUTS] = [
        o.unwrap_or(&empty),
        q,
        kl,
        vl,
        phi_q.w1,
        phi_q.b1,
        phi_q.w2,
        phi_q.b2,
        phi_k.w1,
        phi_k.b1,
        phi_k.w2,
        phi_k.b2,
    ];
    let mut ptrs: Vec<*mut C_tensor> = inputs.iter().map(|t| t.as_ptr() as *mut C_tensor).collect();
    let cfg = cfg.encode();
    let mut err = vec![0 as c_char; 4096];
    // SAFETY: twelve live tensors; the Function reads them and returns a new box.
    let out = unsafe {
        surgery_fused_apply(
            ptrs.as_mut_ptr(),
            cfg.as_ptr(),
            cfg.len() as c_int,
            err.as_mut_ptr(),
            err.len() as c_int,
        )
    };
    if out.is_null() {
        // SAFETY: autograd.cpp NUL-terminates the message.
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(message);
    }
    // SAFETY: a new at::Tensor box we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}
