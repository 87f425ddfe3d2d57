//! Where and how the maths runs: device choice, mixed precision, memory format, seeding.
use std::fmt;
use std::str::FromStr;

use tch::{Cuda, Device, Tensor};

use crate::ffi;

/// Errors of device and precision choices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected auto, cpu, cuda or cuda:N")]
    Parse(String),
    #[error("unknown precision '{0}': expected auto, off, bf16 or fp16")]
    ParsePrecision(String),
    #[error("unknown --channels-last '{0}': expected auto, on or off")]
    ParseChannelsLast(String),
    #[error("device {0} requested but no CUDA device is available")]
    CudaUnavailable(String),
    #[error("device cuda:{index} requested but only {count} CUDA device(s) exist")]
    CudaIndex { index: usize, count: i64 },
    #[error("libtorch: {0}")]
    Torch(String),
}

/// A device as the user names it: `auto` picks the first GPU when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The concrete device; asking for a GPU that is not there is an error, not a silent CPU run.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cuda(index) => {
                if !Cuda::is_available() {
                    return Err(DeviceError::CudaUnavailable(self.to_string()));
                }
                let count = Cuda::device_count();
                if index as i64 >= count {
                    return Err(DeviceError::CudaIndex { index, count });
                }
                Ok(Device::Cuda(index))
            }
        }
    }
}

/// Numeric precision of forward passes. Weights, optimiser state and the MoCo queue stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Plain float32.
    #[default]
    F32,
    /// bfloat16 autocast: same range as f32, no loss scaling needed.
    Bf16,
    /// float16 autocast: needs dynamic loss scaling (see [`crate::optim::GradScaler`]).
    Fp16,
}

impl FromStr for Precision {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "f32" | "fp32" | "none" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "fp16" | "f16" | "half" => Ok(Self::Fp16),
            _ => Err(DeviceError::ParsePrecision(s.to_string())),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "off",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        })
    }
}

impl Precision {
    /// c10::ScalarType code of the autocast dtype (Half = 5, BFloat16 = 15).
    fn scalar_type(self) -> Option<i32> {
        match self {
            Self::F32 => None,
            Self::Fp16 => Some(5),
            Self::Bf16 => Some(15),
        }
    }
}

/// A setting resolved for the device a run trains on, and why: printed in the start line and
/// kept in `config.json`, so that `auto` never hides what ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<T> {
    pub value: T,
    pub reason: String,
}

/// Whether `device` computes bf16 natively, and how that was found: a CPU with AVX512_BF16 or
/// AMX (from `/proc/cpuinfo`; oneDNN then runs bf16 convolutions and matmuls in hardware, 1.69x
/// fp32's speed measured on a 2-core EPYC), a CUDA device of compute capability 8.0 or newer (the
/// test `torch.cuda.is_bf16_supported()` makes). Elsewhere bf16 is emulated and slower than fp32.
pub fn native_bf16(device: Device) -> (bool, String) {
    match device {
        Device::Cpu => cpu_bf16_flags(),
        Device::Cuda(_) => match ffi::cuda_bf16_native() {
            Ok(true) => (true, "the CUDA device has compute capability 8.0 or newer".into()),
            Ok(false) => (false, "the CUDA device is older than compute capability 8.0".into()),
            Err(e) => (false, format!("the CUDA device's capability is unknown ({e})")),
        },
        other => (false, format!("{other:?} is neither a CPU nor a CUDA device")),
    }
}

fn cpu_bf16_flags() -> (bool, String) {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return (false, "the CPU's features are unknown (no /proc/cpuinfo)".into());
    };
    let flags: std::collections::HashSet<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let found: Vec<&str> = ["avx512_bf16", "amx_bf16"].into_iter().filter(|f| flags.contains(f)).collect();
    if found.is_empty() {
        (false, "the CPU has neither AVX512_BF16 nor AMX".into())
    } else {
        (true, format!("the CPU has {}", found.join(" and ").to_ascii_uppercase()))
    }
}

/// `--amp`: `auto` is bf16 where the device computes it natively, fp32 elsewhere; any other
/// value is taken as given.
pub fn resolve_precision(spec: &str, device: Device) -> Result<Resolved<Precision>, DeviceError> {
    if spec.trim().eq_ignore_ascii_case("auto") {
        let (native, why) = native_bf16(device);
        let value = if native { Precision::Bf16 } else { Precision::F32 };
        return Ok(Resolved { value, reason: format!("auto: {why}") });
    }
    Ok(Resolved { value: spec.parse()?, reason: "as asked".into() })
}

/// `--channels-last`: `auto` is on for CUDA (tensor-core convolutions run NHWC) and on the CPU
/// (oneDNN, measured on 2 cores with ResNet-18 at 128 px, batch 32, pretraining and fine-tuning:
/// faster in all 8 alternating pairs, by 4 to 8 % in bf16 and 10 to 20 % in fp32; see
/// docs/performance.md); `on`/`off` as given.
pub fn resolve_channels_last(spec: &str, device: Device) -> Result<Resolved<bool>, DeviceError> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(Resolved {
            value: matches!(device, Device::Cpu | Device::Cuda(_)),
            reason: match device {
                Device::Cuda(_) => "auto: CUDA convolutions are fastest NHWC".into(),
                _ => "auto: faster with oneDNN on the CPU (measured)".into(),
            },
        }),
        "on" | "true" | "yes" | "1" => Ok(Resolved { value: true, reason: "as asked".into() }),
        "off" | "false" | "no" | "0" => Ok(Resolved { value: false, reason: "as asked".into() }),
        _ => Err(DeviceError::ParseChannelsLast(spec.to_string())),
    }
}

/// Runs `f` under autocast for `device` with `precision`, as `torch.autocast(device_type, dtype)`
/// does; the previous autocast state is restored afterwards. `Precision::F32` runs `f` as is.
pub fn autocast<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> Result<T, DeviceError> {
    let Some(scalar_type) = precision.scalar_type() else {
        return Ok(f());
    };
    let cuda = match device {
        Device::Cpu => false,
        Device::Cuda(_) => true,
        other => return Err(DeviceError::Torch(format!("autocast is not supported on {other:?}"))),
    };
    let state = ffi::autocast_enter(cuda, scalar_type).map_err(DeviceError::Torch)?;
    // Restore the state even if `f` panics (tch panics on libtorch errors).
    struct Restore(Option<ffi::AutocastState>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(state) = self.0.take() {
                let _ = ffi::autocast_exit(state);
            }
        }
    }
    let mut guard = Restore(Some(state));
    let out = f();
    if let Some(state) = guard.0.take() {
        ffi::autocast_exit(state).map_err(DeviceError::Torch)?;
    }
    Ok(out)
}

/// A channels_last (NHWC in memory) version of a 4-d tensor; other tensors are returned as is.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor, DeviceError> {
    if t.dim() != 4 {
        return Ok(t.shallow_clone());
    }
    ffi::channels_last(t).map_err(DeviceError::Torch)
}

/// Converts 4-d tensors (conv weights) in place, as `module.to(memory_format=channels_last)`.
pub fn set_channels_last<'a>(tensors: impl IntoIterator<Item = &'a mut Tensor>) -> Result<(), DeviceError> {
    for t in tensors {
        tch::no_grad(|| ffi::set_channels_last_(t)).map_err(DeviceError::Torch)?;
    }
    Ok(())
}

/// Whether a tensor is laid out channels_last.
pub fn is_channels_last(t: &Tensor) -> bool {
    t.dim() == 4 && ffi::is_channels_last(t).unwrap_or(false)
}

/// Per-device set-up expected by training: cudnn autotuning on CUDA.
pub fn prepare(device: Device) {
    if device.is_cuda() {
        Cuda::cudnn_set_benchmark(true);
    }
}

/// Keeps the memory libtorch frees on the CPU in the process (glibc only; elsewhere a no-op),
/// returning whether it applied.
///
/// A training step frees and reallocates the same activations every step. By default glibc
/// serves blocks over 32 MB with fresh mappings and returns the heap's free top to the kernel,
/// so every step page-faults its activations in again: measured on 2 cores, 20 % of a
/// ResNet-50 step (batch 16, 224 px) was kernel time, for PyTorch as for us. Serving every block
/// from the heap (`M_MMAP_MAX` 0) and never trimming it (`M_TRIM_THRESHOLD` -1) made the step
/// 18 % faster, at the price of a resident size that stays at its peak. Call it first in a
/// training process. PyTorch users get the same with `MALLOC_MMAP_MAX_=0
/// MALLOC_TRIM_THRESHOLD_=-1` in the environment; setting `CHESS_KEEP_FREED_MEMORY=0` skips it.
pub fn keep_freed_host_memory() -> bool {
    if std::env::var("CHESS_KEEP_FREED_MEMORY").is_ok_and(|v| v == "0") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_MAX: std::ffi::c_int = -4;
        // SAFETY: mallopt only sets allocator parameters; both are documented values.
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Page-locked copy of a CPU tensor, for copies to a GPU that do not block the host.
pub fn pin_memory(t: &Tensor) -> Result<Tensor, DeviceError> {
    ffi::pin_memory(t).map_err(DeviceError::Torch)
}

/// `t` (on the CPU) on `device`. To a GPU the copy goes through page-locked memory with
/// `non_blocking`: a plain copy from pageable memory makes the host wait until the GPU has
/// finished all queued work, which idles the GPU while the host prepares the next step.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if !device.is_cuda() || t.device() == device {
        return t.to_device(device);
    }
    // Pinning a pinned tensor returns it as is.
    let src = pin_memory(t).unwrap_or_else(|_| t.shallow_clone());
    src.to_device_(device, src.kind(), true, false)
}

/// Reproducible CUDA maths (for parity checks against PyTorch): cudnn autotuning off,
/// deterministic cudnn kernels, no TF32. `false` restores what [`prepare`] sets for training.
/// Call it after [`prepare`] (which `MocoTrainer::new` calls).
pub fn set_exact_cuda_math(exact: bool) -> Result<(), DeviceError> {
    ffi::set_exact_cuda_math(exact).map_err(DeviceError::Torch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_host_memory_is_kept_on_glibc() {
        assert_eq!(keep_freed_host_memory(), cfg!(all(target_os = "linux", target_env = "gnu")));
    }

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn parses_precisions() {
        assert_eq!("off".parse::<Precision>().unwrap(), Precision::F32);
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert!("int8".parse::<Precision>().is_err());
    }

    #[test]
    fn cpu_resolves_and_missing_gpu_is_an_error() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        if !Cuda::is_available() {
            assert!(matches!(DeviceSpec::Cuda(0).resolve(), Err(DeviceError::CudaUnavailable(_))));
            assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cpu);
        }
    }

    #[test]
    fn bf16_autocast_on_cpu_runs_matmul_in_bf16_and_restores() {
        let a = Tensor::ones([4, 4], (tch::Kind::Float, Device::Cpu));
        let inside = autocast(Device::Cpu, Precision::Bf16, || a.matmul(&a)).unwrap();
        assert_eq!(inside.kind(), tch::Kind::BFloat16);
        let after = a.matmul(&a);
        assert_eq!(after.kind(), tch::Kind::Float);
    }

    #[test]
    fn channels_last_round_trip() {
        let mut t = Tensor::randn([2, 3, 4, 5], (tch::Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&t));
        let cl = to_channels_last(&t).unwrap();
        assert!(is_channels_last(&cl));
        assert_eq!(cl.size(), t.size());
        assert_eq!(f64::try_from((&cl - &t).abs().max()).unwrap(), 0.0);
        let alias = t.shallow_clone();
        set_channels_last([&mut t]).unwrap();
        assert!(is_channels_last(&alias), "in-place conversion is seen by every handle");
    }

    #[test]
    fn amp_auto_is_bf16_exactly_where_the_cpu_has_native_bf16() {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let native = flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .take(1)
            .any(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"));
        let auto = resolve_precision("auto", Device::Cpu).unwrap();
        assert_eq!(auto.value, if native { Precision::Bf16 } else { Precision::F32 });
        assert!(auto.reason.starts_with("auto: the CPU has"), "{}", auto.reason);
        let off = resolve_precision("off", Device::Cpu).unwrap();
        assert_eq!((off.value, off.reason.as_str()), (Precision::F32, "as asked"));
        assert_eq!(resolve_precision("bf16", Device::Cpu).unwrap().value, Precision::Bf16);
        assert!(resolve_precision("fp8", Device::Cpu).is_err());
    }

    #[test]
    fn channels_last_settings() {
        assert!(resolve_channels_last("auto", Device::Cpu).unwrap().value);
        assert!(resolve_channels_last("on", Device::Cpu).unwrap().value);
        assert!(!resolve_channels_last("off", Device::Cpu).unwrap().value);
        let e = resolve_channels_last("maybe", Device::Cpu).unwrap_err().to_string();
        assert_eq!(e, "unknown --channels-last 'maybe': expected auto, on or off");
    }
}
