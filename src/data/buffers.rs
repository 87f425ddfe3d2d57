//! Recycled host memory for batch tensors.
//!
//! A 512 px batch of 32 is 33.5 MB, above glibc's largest mmap threshold, so every batch
//! tensor libtorch allocates is a fresh mapping: 8,000 page faults to fill it and an munmap to
//! free it. On the 2-core machine that was 40 % of the loader's CPU time (system time, not
//! decoding). Tensors from a [`BufferPool`] live in buffers that return to the pool when
//! libtorch frees them, wherever the last reference is dropped.
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use tch::{Device, Kind, Tensor};

/// Free buffers, shared by the loader's threads and the tensors' release callbacks.
#[derive(Debug, Clone)]
pub struct BufferPool(Arc<Free>);

#[derive(Debug)]
struct Free {
    buffers: Mutex<Vec<Box<[f32]>>>,
    /// At most this many buffers are kept; more are freed.
    keep: usize,
}

/// What the release callback needs to give a buffer back.
struct Lease {
    pool: Arc<Free>,
    len: usize,
}

impl BufferPool {
    pub fn new(keep: usize) -> Self {
        Self(Arc::new(Free { buffers: Mutex::new(Vec::new()), keep }))
    }

    /// Buffers waiting for reuse.
    pub fn free(&self) -> usize {
        self.0.buffers.lock().map_or(0, |b| b.len())
    }

    /// A CPU float tensor of `shape` whose elements `fill` writes in place (it receives
    /// whatever the buffer last held, so it must write every element it wants defined).
    pub fn tensor(&self, shape: &[i64], fill: impl FnOnce(&mut [f32])) -> Tensor {
        let n = shape.iter().product::<i64>().max(0) as usize;
        if n == 0 {
            return Tensor::empty(shape, (Kind::Float, Device::Cpu));
        }
        let reused = self.0.buffers.lock().ok().and_then(|mut free| {
            let at = free.iter().position(|b| b.len() == n)?;
            Some(free.swap_remove(at))
        });
        let mut buffer = reused.unwrap_or_else(|| vec![0f32; n].into_boxed_slice());
        fill(&mut buffer);
        let data = Box::into_raw(buffer) as *mut f32;
        let ctx = Box::into_raw(Box::new(Lease { pool: self.0.clone(), len: n })) as *mut c_void;
        // SAFETY: `data` holds `n` floats and stays allocated until `release` takes it back;
        // `ctx` is the lease `release` expects.
        match unsafe { crate::ffi::from_host_buffer(data, shape, ctx, release) } {
            Ok(t) => t,
            Err(_) => {
                // Not expected (libtorch only wraps the pointer); fall back to a copy.
                // SAFETY: libtorch did not take the buffer, so it is released here, once.
                let t = Tensor::from_slice(unsafe { std::slice::from_raw_parts(data, n) }).view(shape);
                unsafe { release(ctx, data as *mut c_void) };
                t
            }
        }
    }
}

/// Gives a tensor's buffer back to its pool (or frees it when the pool is full).
unsafe extern "C" fn release(ctx: *mut c_void, data: *mut c_void) {
    // SAFETY: `ctx` and `data` come from `BufferPool::tensor`, and libtorch calls this once per
    // storage.
    let lease = unsafe { Box::from_raw(ctx as *mut Lease) };
    let buffer = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data as *mut f32, lease.len)) };
    if let Ok(mut free) = lease.pool.buffers.lock()
        && free.len() < lease.pool.keep
    {
        free.push(buffer);
    }
}
