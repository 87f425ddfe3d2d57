//! Data-parallel training on libtorch's own distributed engine (c10d), as `torch.distributed`
//! uses it: processes are started by `torchrun --no-python`, meet through a TCPStore and talk
//! through Gloo (CPU tensors) or NCCL (CUDA tensors). We add no transport of our own.
//!
//! [`Launch::from_env`] reads what torchrun sets; [`ProcessGroup`] holds the group and its
//! collectives; [`GradReducer`] averages gradients during the backward pass and
//! [`all_reduce_mean_packed`] other tensors (BN statistics) in buckets, as DDP does;
//! [`DataParallel`] puts them together for any model.
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

use tch::{Kind, Tensor};
use torch_sys::C_tensor;

use crate::ffi;

/// Errors of joining a group or of a collective; a collective that fails (a peer died, a
/// timeout passed) leaves the group unusable, so a run should stop with this message.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("torchrun environment: {0}")]
    Env(String),
    #[error("rank {rank}: joining the {backend} group at {addr}:{port} failed: {reason}")]
    Join { rank: usize, backend: &'static str, addr: String, port: u16, reason: String },
    #[error("rank {rank}: {op} failed (a rank stopped, or the {timeout:?} timeout passed): {reason}")]
    Collective { rank: usize, op: &'static str, timeout: Duration, reason: String },
}

/// Where this process sits in a torchrun launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// Rank within this node: the CUDA device index.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the TCPStore (`TORCHELASTIC_USE_AGENT_STORE`): every rank
    /// connects as a client. Otherwise rank 0 serves it.
    pub agent_store: bool,
    /// Elastic restarts so far (`TORCHELASTIC_RESTART_COUNT`): a fresh key space per attempt.
    pub restart_count: u64,
}

impl Launch {
    /// `None` unless `WORLD_SIZE` is set (a plain run); a world of one still forms a group,
    /// which exercises the distributed path on a single GPU.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable source (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let num = |k: &str, default: Option<&str>| -> Result<u64, DistError> {
            let v = var(k).or(default.map(str::to_string)).ok_or_else(|| {
                DistError::Env(format!("WORLD_SIZE is set but {k} is not (launch with torchrun)"))
            })?;
            v.trim().parse().map_err(|_| DistError::Env(format!("{k}={v} is not a number")))
        };
        let world_size = world
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&w| w >= 1)
            .ok_or_else(|| DistError::Env(format!("WORLD_SIZE={world} is not a positive number")))?;
        let rank = num("RANK", None)? as usize;
        if rank >= world_size {
            return Err(DistError::Env(format!("RANK={rank} is not below WORLD_SIZE={world_size}")));
        }
        let local_rank = num("LOCAL_RANK", Some("0"))? as usize;
        let master_port = u16::try_from(num("MASTER_PORT", None)?)
            .map_err(|_| DistError::Env("MASTER_PORT is not a port number".into()))?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            restart_count: num("TORCHELASTIC_RESTART_COUNT", Some("0"))?,
        }))
    }
}

/// Which c10d backend carries the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, over TCP.
    Gloo,
    /// CUDA tensors, over NVLink / InfiniBand / sockets.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => Err(format!("unknown backend {s:?} (gloo or nccl)")),
        }
    }
}

/// A joined c10d process group. Collectives must be called in the same order on every rank.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
}

// SAFETY: c10d backends are made to be called from any thread (Gloo queues work under a mutex,
// NCCL guards its communicators); the handle is freed once, on drop. Collectives must still be
// issued in the same order on every rank, which a run ensures by issuing them from one thread.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

unsafe extern "C" {
    fn chess_dist_new(
        backend: *const c_char,
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn chess_dist_free(group: *mut c_void);
    fn chess_dist_all_reduce(
        group: *mut c_void,
        ts: *const *mut C_tensor,
        n: c_int,
        average: c_int,
    ) -> *mut c_char;
    fn chess_dist_all_gather(group: *mut c_void, out: *mut C_tensor, input: *mut C_tensor) -> *mut c_char;
    fn chess_dist_broadcast(
        group: *mut c_void,
        ts: *const *mut C_tensor,
        n: c_int,
        root: c_int,
    ) -> *mut c_char;
    fn chess_dist_barrier(group: *mut c_void) -> *mut c_char;
    fn chess_reducer_new(
        group: *mut c_void,
        params: *const *mut C_tensor,
        n: c_int,
        bucket_bytes: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn chess_reducer_arm(reducer: *mut c_void) -> *mut c_char;
    fn chess_reducer_finish(reducer: *mut c_void) -> *mut c_char;
    fn chess_reducer_buckets(reducer: *mut c_void) -> c_int;
    fn chess_reducer_launched_in_backward(reducer: *mut c_void) -> c_int;
    fn chess_reducer_free(reducer: *mut c_void);
}

impl ProcessGroup {
    /// Joins the group of `launch` (blocks until every rank has joined or `timeout` passes).
    /// `device` is the CUDA index NCCL binds to (ignored by Gloo).
    pub fn join(
        launch: &Launch,
        backend: Backend,
        timeout: Duration,
        device: usize,
    ) -> Result<Self, DistError> {
        let fail = |reason: String| DistError::Join {
            rank: launch.rank,
            backend: backend.name(),
            addr: launch.master_addr.clone(),
            port: launch.master_port,
            reason,
        };
        let cstr = |s: &str| CString::new(s).map_err(|_| fail(format!("{s:?} contains a NUL byte")));
        let (name, host) = (cstr(backend.name())?, cstr(&launch.master_addr)?);
        let prefix = cstr(&format!("chess/attempt_{}/", launch.restart_count))?;
        let is_server = !launch.agent_store && launch.rank == 0;
        let mut raw = std::ptr::null_mut();
        ffi::check(unsafe {
            chess_dist_new(
                name.as_ptr(),
                host.as_ptr(),
                c_int::from(launch.master_port),
                c_int::from(is_server),
                prefix.as_ptr(),
                launch.rank as c_int,
                launch.world_size as c_int,
                timeout.as_millis().min(i64::MAX as u128) as i64,
                device as c_int,
                &mut raw,
            )
        })
        .map_err(fail)?;
        Ok(Self { raw, rank: launch.rank, world_size: launch.world_size, backend, timeout })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn check(&self, op: &'static str, err: *mut c_char) -> Result<(), DistError> {
        ffi::check(err).map_err(|reason| DistError::Collective {
            rank: self.rank,
            op,
            timeout: self.timeout,
            reason,
        })
    }

    fn sum_or_mean(&self, tensors: &[Tensor], average: bool) -> Result<(), DistError> {
        let raw = ffi::raw(tensors);
        self.check("all_reduce", unsafe {
            chess_dist_all_reduce(self.raw, raw.as_ptr(), raw.len() as c_int, c_int::from(average))
        })
    }

    /// Sums each (contiguous) tensor over the ranks, in place. All are in flight at once.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        self.sum_or_mean(tensors, false)
    }

    /// Averages each (contiguous) tensor over the ranks, in place.
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        self.sum_or_mean(tensors, true)
    }

    /// Every rank's `x` (`[N, ...]`, the same shape everywhere), concatenated in rank order.
    pub fn all_gather(&self, x: &Tensor) -> Result<Tensor, DistError> {
        let mut input = x.contiguous();
        let mut size = x.size();
        size[0] *= self.world_size as i64;
        let mut out = Tensor::empty(size.as_slice(), (x.kind(), x.device()));
        self.check("all_gather", unsafe {
            chess_dist_all_gather(self.raw, out.as_mut_ptr(), input.as_mut_ptr())
        })?;
        Ok(out)
    }

    /// Rank `root`'s values of every tensor, written in place on the others.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), DistError> {
        let raw = ffi::raw(tensors);
        self.check("broadcast", unsafe {
            chess_dist_broadcast(self.raw, raw.as_ptr(), raw.len() as c_int, root as c_int)
        })
    }

    pub fn barrier(&self) -> Result<(), DistError> {
        self.check("barrier", unsafe { chess_dist_barrier(self.raw) })
    }

    /// Whether any rank passes `flag` true: ranks agree, for example, to stop at the same step.
    pub fn any(&self, flag: bool, device: tch::Device) -> Result<bool, DistError> {
        let t = Tensor::from_slice(&[i32::from(flag)]).to_device(device);
        self.all_reduce_sum(std::slice::from_ref(&t))?;
        Ok(t.int64_value(&[0]) > 0)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { chess_dist_free(self.raw) }
    }
}

/// Averages the gradients of a fixed set of parameters over the ranks while the backward pass
/// runs, as DDP's reducer does: parameters are packed into buckets in reverse order (the order
/// backward produces their gradients), a hook on each parameter's gradient accumulation counts
/// its bucket down, and a complete bucket is all-reduced at once, asynchronously, while
/// backward goes on with earlier layers. Buckets are launched in order, so every rank issues
/// the same collectives in the same order.
///
/// ```text
/// reducer.arm()?; loss.backward(); reducer.finish()?;   // gradients now hold the averages
/// ```
#[derive(Debug)]
pub struct GradReducer {
    raw: *mut c_void,
    group: std::sync::Arc<ProcessGroup>,
}

// SAFETY: the reducer's state is guarded by a mutex in the shim; hooks may run on autograd's
// device threads, which is what it is built for.
unsafe impl Send for GradReducer {}

impl GradReducer {
    /// Installs the hooks on `params` (leaf tensors that require grad; their other
    /// post-accumulate hooks are replaced).
    pub fn new(
        group: std::sync::Arc<ProcessGroup>,
        params: &[Tensor],
        bucket_bytes: usize,
    ) -> Result<Self, DistError> {
        let raw_params = ffi::raw(params);
        let mut raw = std::ptr::null_mut();
        group.check("reducer set-up", unsafe {
            chess_reducer_new(
                group.raw,
                raw_params.as_ptr(),
                raw_params.len() as c_int,
                bucket_bytes as i64,
                &mut raw,
            )
        })?;
        Ok(Self { raw, group })
    }

    /// Buckets the gradients travel in.
    pub fn buckets(&self) -> usize {
        unsafe { chess_reducer_buckets(self.raw) as usize }
    }

    /// Of the last [`GradReducer::finish`]: how many buckets were already on their way when
    /// backward ended (all of them when every parameter got a gradient).
    pub fn launched_during_backward(&self) -> usize {
        unsafe { chess_reducer_launched_in_backward(self.raw) as usize }
    }

    /// Call before the backward pass whose gradients are to be averaged.
    pub fn arm(&self) -> Result<(), DistError> {
        self.group.check("gradient all_reduce", unsafe { chess_reducer_arm(self.raw) })
    }

    /// Call after it: waits for every bucket and writes the averages into the gradients.
    pub fn finish(&self) -> Result<(), DistError> {
        self.group.check("gradient all_reduce", unsafe { chess_reducer_finish(self.raw) })
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        unsafe { chess_reducer_free(self.raw) }
    }
}

/// Data-parallel training of any model, as `DistributedDataParallel` wraps one: the state is
/// copied from rank 0 at the start, gradients are averaged during each backward pass, and the
/// floating-point buffers (BN running statistics) are averaged after each step, so that every
/// rank holds the same model at every step.
#[derive(Debug)]
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    reducer: GradReducer,
}

impl DataParallel {
    /// `params` are what the optimisers update (their gradients are averaged); `state` is every
    /// tensor that must start equal on all ranks (parameters, buffers, optimiser state).
    pub fn new(group: Arc<ProcessGroup>, params: &[Tensor], state: &[Tensor]) -> Result<Self, DistError> {
        tch::no_grad(|| group.broadcast(state, 0))?;
        let reducer = GradReducer::new(group.clone(), params, BUCKET_BYTES)?;
        Ok(Self { group, reducer })
    }

    pub fn group(&self) -> &Arc<ProcessGroup> {
        &self.group
    }

    /// `loss.backward()` with the gradients averaged over the ranks when it returns.
    pub fn backward(&self, loss: &Tensor) -> Result<(), DistError> {
        self.reducer.arm()?;
        loss.backward();
        self.reducer.finish()
    }

    /// Averages the floating-point buffers among `tensors` over the ranks (integer counters,
    /// equal on every rank, are left as they are).
    pub fn average_buffers(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        let floats: Vec<Tensor> =
            tensors.iter().filter(|t| t.is_floating_point()).map(Tensor::shallow_clone).collect();
        tch::no_grad(|| all_reduce_mean_packed(&self.group, &floats, BUCKET_BYTES))
    }
}

/// Joins the torchrun group of this process, if torchrun started it (`None` for a plain run):
/// each rank trains on `cuda:LOCAL_RANK` when `device` is a GPU. The backend defaults to NCCL
/// on CUDA and Gloo on the CPU.
pub fn join_from_env(
    device: tch::Device,
    backend: Option<Backend>,
    timeout: Duration,
) -> Result<(tch::Device, Option<Arc<ProcessGroup>>), DistError> {
    let Some(launch) = Launch::from_env()? else { return Ok((device, None)) };
    let device = if device.is_cuda() { tch::Device::Cuda(launch.local_rank) } else { device };
    let backend = backend.unwrap_or(if device.is_cuda() { Backend::Nccl } else { Backend::Gloo });
    let group = ProcessGroup::join(&launch, backend, timeout, launch.local_rank)?;
    if launch.rank == 0 {
        eprintln!(
            "joined a {} group of {} ranks at {}:{} (this is rank 0, {device:?})",
            backend.name(),
            launch.world_size,
            launch.master_addr,
            launch.master_port
        );
    }
    Ok((device, Some(Arc::new(group))))
}

/// DDP's default bucket: 25 MiB.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Averages tensors over the ranks in place, packed as DDP packs gradients: small tensors go
/// into flat buckets of about `bucket_bytes`, so a ResNet-50's 212 BN statistics travel as one
/// message rather than 212 (each collective has a fixed cost), and every bucket is in flight
/// at once.
pub fn all_reduce_mean_packed(
    group: &ProcessGroup,
    tensors: &[Tensor],
    bucket_bytes: usize,
) -> Result<(), DistError> {
    let mut buckets: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0;
    for g in tensors {
        let size = g.numel() * g.kind().elt_size_in_bytes();
        let fits = buckets.last().is_some_and(|b: &Vec<&Tensor>| {
            bytes + size <= bucket_bytes && b[0].kind() == g.kind() && b[0].device() == g.device()
        });
        if fits {
            buckets.last_mut().unwrap().push(g);
            bytes += size;
        } else {
            buckets.push(vec![g]);
            bytes = size;
        }
    }
    let flat: Vec<Tensor> = tch::no_grad(|| {
        buckets
            .iter()
            .map(|b| match b.as_slice() {
                [one] if one.is_contiguous() => one.shallow_clone(),
                many => Tensor::cat(&many.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(), 0),
            })
            .collect()
    });
    group.all_reduce_mean(&flat)?;
    tch::no_grad(|| {
        for (bucket, flat) in buckets.iter().zip(&flat) {
            if bucket.len() == 1 && bucket[0].is_contiguous() {
                continue; // reduced in place
            }
            let mut offset = 0;
            for g in bucket {
                let n = g.numel() as i64;
                g.shallow_clone().copy_(&flat.narrow(0, offset, n).view(g.size().as_slice()));
                offset += n;
            }
        }
    });
    Ok(())
}

/// A digest of tensors' bytes (FNV-1a over their CPU float64 values): equal digests across
/// ranks show bit-identical state.
pub fn checksum<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tensors {
        let values = Vec::<f64>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Double).reshape([-1]))
            .expect("tensor values");
        for v in values {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}
