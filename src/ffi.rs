//! Bindings to `csrc/shim.cpp`: the few libtorch calls tch 0.24 does not wrap.
use std::ffi::{CStr, c_char, c_int};
use torch_sys::C_tensor;

unsafe extern "C" {
    fn chess_free_error(err: *mut c_char);
    fn chess_autocast_enter(
        cuda: c_int,
        scalar_type: c_int,
        prev_enabled: *mut c_int,
        prev_type: *mut c_int,
    ) -> *mut c_char;
    fn chess_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_type: c_int) -> *mut c_char;
    fn chess_set_channels_last_(t: *mut C_tensor) -> *mut c_char;
    fn chess_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn chess_is_channels_last(t: *const C_tensor, out: *mut c_int) -> *mut c_char;
    fn chess_pin_memory(t: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn chess_set_exact_cuda_math(exact: c_int) -> *mut c_char;
    fn chess_cuda_bf16_native(out: *mut c_int) -> *mut c_char;
    fn chess_seeded_randn(n: i64, seed: u64, like: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn chess_leaky_relu(x: *const C_tensor, slope: f64, out: *mut *mut C_tensor) -> *mut c_char;
    fn chess_from_host_buffer(
        data: *mut f32,
        sizes: *const i64,
        ndim: c_int,
        ctx: *mut std::ffi::c_void,
        release: unsafe extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_void),
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn chess_sgd_step(
        params: *const *mut C_tensor,
        bufs: *mut *mut C_tensor,
        n: c_int,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        foreach: c_int,
    ) -> *mut c_char;
    fn chess_adam_step(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        max_exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        amsgrad: c_int,
        decoupled_weight_decay: c_int,
    ) -> *mut c_char;
    fn chess_momentum_update(
        keys: *const *mut C_tensor,
        queries: *const *mut C_tensor,
        n: c_int,
        m: f64,
    ) -> *mut c_char;
}

/// Turns the shim's error convention (NULL or an owned C string) into a `Result`.
pub(crate) fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string from malloc, freed right after copying.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { chess_free_error(err) };
    Err(msg)
}

/// Previous autocast state of one device type, restored by [`autocast_exit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct AutocastState {
    cuda: bool,
    enabled: c_int,
    scalar_type: c_int,
}

pub(crate) fn autocast_enter(cuda: bool, scalar_type: i32) -> Result<AutocastState, String> {
    let (mut enabled, mut prev_type) = (0, 0);
    check(unsafe { chess_autocast_enter(c_int::from(cuda), scalar_type, &mut enabled, &mut prev_type) })?;
    Ok(AutocastState { cuda, enabled, scalar_type: prev_type })
}

pub(crate) fn autocast_exit(state: AutocastState) -> Result<(), String> {
    check(unsafe { chess_autocast_exit(c_int::from(state.cuda), state.enabled, state.scalar_type) })
}

pub(crate) fn set_channels_last_(t: &mut tch::Tensor) -> Result<(), String> {
    check(unsafe { chess_set_channels_last_(t.as_mut_ptr()) })
}

pub(crate) fn channels_last(t: &tch::Tensor) -> Result<tch::Tensor, String> {
    let mut out = std::ptr::null_mut();
    check(unsafe { chess_channels_last(t.as_ptr(), &mut out) })?;
    // SAFETY: the shim allocated a fresh `at::Tensor` with `new`, which tch frees on drop.
    Ok(unsafe { tch::Tensor::from_ptr(out) })
}

pub(crate) fn pin_memory(t: &tch::Tensor) -> Result<tch::Tensor, String> {
    let mut out = std::ptr::null_mut();
    check(unsafe { chess_pin_memory(t.as_ptr(), &mut out) })?;
    // SAFETY: as in `channels_last`.
    Ok(unsafe { tch::Tensor::from_ptr(out) })
}

pub(crate) fn set_exact_cuda_math(exact: bool) -> Result<(), String> {
    check(unsafe { chess_set_exact_cuda_math(c_int::from(exact)) })
}

/// Whether the current CUDA device has compute capability 8.0 or newer.
pub(crate) fn cuda_bf16_native() -> Result<bool, String> {
    let mut out: c_int = 0;
    check(unsafe { chess_cuda_bf16_native(&mut out) })?;
    Ok(out != 0)
}

/// `n` normal values on `like`'s device from a private generator seeded with `seed`.
pub(crate) fn seeded_randn(n: i64, seed: u64, like: &tch::Tensor) -> Result<tch::Tensor, String> {
    let mut out = std::ptr::null_mut();
    check(unsafe { chess_seeded_randn(n, seed, like.as_ptr(), &mut out) })?;
    // SAFETY: as in `channels_last`.
    Ok(unsafe { tch::Tensor::from_ptr(out) })
}

/// `at::leaky_relu(x, slope)`, with autograd.
pub(crate) fn leaky_relu(x: &tch::Tensor, slope: f64) -> Result<tch::Tensor, String> {
    let mut out = std::ptr::null_mut();
    check(unsafe { chess_leaky_relu(x.as_ptr(), slope, &mut out) })?;
    // SAFETY: as in `channels_last`.
    Ok(unsafe { tch::Tensor::from_ptr(out) })
}

/// A CPU float tensor of `sizes` over `data`; libtorch calls `release(ctx, data)` once when it
/// frees the storage.
///
/// # Safety
/// `data` must hold `sizes.iter().product()` floats and stay valid until `release` runs; `ctx`
/// must be what `release` expects, and `release` must not unwind.
pub(crate) unsafe fn from_host_buffer(
    data: *mut f32,
    sizes: &[i64],
    ctx: *mut std::ffi::c_void,
    release: unsafe extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_void),
) -> Result<tch::Tensor, String> {
    let mut out = std::ptr::null_mut();
    check(unsafe {
        chess_from_host_buffer(data, sizes.as_ptr(), sizes.len() as c_int, ctx, release, &mut out)
    })?;
    // SAFETY: as in `channels_last`.
    Ok(unsafe { tch::Tensor::from_ptr(out) })
}

pub(crate) fn is_channels_last(t: &tch::Tensor) -> Result<bool, String> {
    let mut out = 0;
    check(unsafe { chess_is_channels_last(t.as_ptr(), &mut out) })?;
    Ok(out != 0)
}

/// Tensor handles as the shim takes them. The shim only reads through these pointers or updates
/// the tensors in place, which tch's shared handles allow.
pub(crate) fn raw(ts: &[tch::Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

/// One SGD update (see `chess_sgd_step`); `buffers` gains the momentum buffers created.
pub(crate) fn sgd_step(
    params: &[tch::Tensor],
    buffers: &mut [Option<tch::Tensor>],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    foreach: bool,
) -> Result<(), String> {
    assert_eq!(params.len(), buffers.len());
    let ps = raw(params);
    let mut bs: Vec<*mut C_tensor> = buffers
        .iter()
        .map(|b| b.as_ref().map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut C_tensor))
        .collect();
    let n = c_int::try_from(ps.len()).map_err(|_| "too many parameters".to_string())?;
    check(unsafe {
        chess_sgd_step(ps.as_ptr(), bs.as_mut_ptr(), n, lr, momentum, weight_decay, c_int::from(foreach))
    })?;
    for (slot, ptr) in buffers.iter_mut().zip(bs) {
        if slot.is_none() && !ptr.is_null() {
            // SAFETY: allocated by the shim with `new at::Tensor`, ownership passes to tch.
            *slot = Some(unsafe { tch::Tensor::from_ptr(ptr) });
        }
    }
    Ok(())
}

/// `k = k * m + q * (1 - m)` over paired tensors.
pub(crate) fn momentum_update(keys: &[tch::Tensor], queries: &[tch::Tensor], m: f64) -> Result<(), String> {
    assert_eq!(keys.len(), queries.len());
    let (ks, qs) = (raw(keys), raw(queries));
    let n = c_int::try_from(ks.len()).map_err(|_| "too many parameters".to_string())?;
    check(unsafe { chess_momentum_update(ks.as_ptr(), qs.as_ptr(), n, m) })
}

/// Tensors of one Adam step, index-aligned; `max_exp_avg_sqs` is empty unless `amsgrad`.
pub(crate) struct AdamTensors<'a> {
    pub params: &'a [tch::Tensor],
    pub grads: &'a [tch::Tensor],
    pub exp_avgs: &'a [tch::Tensor],
    pub exp_avg_sqs: &'a [tch::Tensor],
    pub max_exp_avg_sqs: &'a [tch::Tensor],
    pub steps: &'a [tch::Tensor],
}

/// Adam's scalars for [`adam_step`].
pub(crate) struct AdamScalars {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub decoupled_weight_decay: bool,
}

/// One Adam/AdamW update with torch's single-tensor arithmetic (see `chess_adam_step`).
pub(crate) fn adam_step(t: &AdamTensors<'_>, s: &AdamScalars) -> Result<(), String> {
    let n = t.params.len();
    let aligned =
        [t.grads.len(), t.exp_avgs.len(), t.exp_avg_sqs.len(), t.steps.len()].iter().all(|&l| l == n);
    if !aligned || (s.amsgrad && t.max_exp_avg_sqs.len() != n) {
        return Err("Adam tensors are not aligned with the parameters".to_string());
    }
    let n = c_int::try_from(n).map_err(|_| "too many parameters".to_string())?;
    let (ps, gs, ms, vs, maxs, steps) = (
        raw(t.params),
        raw(t.grads),
        raw(t.exp_avgs),
        raw(t.exp_avg_sqs),
        raw(t.max_exp_avg_sqs),
        raw(t.steps),
    );
    check(unsafe {
        chess_adam_step(
            ps.as_ptr(),
            gs.as_ptr(),
            ms.as_ptr(),
            vs.as_ptr(),
            maxs.as_ptr(),
            steps.as_ptr(),
            n,
            s.lr,
            s.beta1,
            s.beta2,
            s.eps,
            s.weight_decay,
            c_int::from(s.amsgrad),
            c_int::from(s.decoupled_weight_decay),
        )
    })
}
