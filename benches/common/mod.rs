//! Shared by the benchmarks: settings from the environment, the Python baseline, results file.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;

/// `cargo test --all-targets` also runs harness-less benches, without `--bench`: they then only
/// say so and return.
pub fn benching(name: &str) -> bool {
    let on = std::env::args().any(|a| a == "--bench");
    if !on {
        println!("{name}: benchmark skipped (run it with `make bench`)");
    }
    on
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The repository: `CHESS_ROOT` (a bench binary carried to another machine), else where it
/// was built.
pub fn root() -> PathBuf {
    std::env::var_os("CHESS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `BENCH_DEVICE`: `cpu` (default) or `cuda` (benches/gpu.sh).
#[allow(dead_code)]
pub fn device() -> anyhow::Result<tch::Device> {
    Ok(match std::env::var("BENCH_DEVICE").as_deref().unwrap_or("cpu") {
        "cpu" => tch::Device::Cpu,
        "cuda" => {
            anyhow::ensure!(tch::Cuda::is_available(), "BENCH_DEVICE=cuda but libtorch sees no CUDA device");
            tch::Device::Cuda(0)
        }
        other => anyhow::bail!("BENCH_DEVICE={other}: expected cpu or cuda"),
    })
}

/// The shared radiographs: `CHESS_DATA`, else `../shared/data` beside the checkout.
pub fn data_dir() -> PathBuf {
    std::env::var_os("CHESS_DATA").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/data"))
}

/// The project venv's Python (torch, torchvision, albumentations).
pub fn python() -> Command {
    let py = std::env::var_os("CHESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    Command::new(py)
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs `cmd`, fails with its output if it fails, returns stdout.
pub fn run(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "{cmd:?} failed:\n{so}{se}");
    Ok(so.into_owned())
}

/// The last line of `stdout` that parses as a JSON object.
pub fn last_json(stdout: &str) -> anyhow::Result<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok().filter(|v| v.is_object()))
        .ok_or_else(|| anyhow::anyhow!("no JSON line in:\n{stdout}"))
}

/// The median (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) { (v[n / 2 - 1] + v[n / 2]) / 2.0 } else { v[n / 2] }
}

/// Prints the `BENCH` line and adds the comparison to target/bench/results.json; `ratio` is
/// Rust's speed over Python's (above 1: Rust is faster).
pub fn record(
    name: &str,
    rust: f64,
    python: f64,
    ratio: f64,
    unit: &str,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    // benches/gpu.sh names its comparisons gpu_<name> and keeps them apart.
    let name = format!("{}{name}", std::env::var("BENCH_PREFIX").unwrap_or_default());
    println!("BENCH {name} rust={rust:.3} python={python:.3} ratio={ratio:.2}");
    let path = std::env::var_os("BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/bench/results.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut all: serde_json::Map<String, serde_json::Value> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut entry = serde_json::json!({ "rust": rust, "python": python, "ratio": ratio, "unit": unit,
        "cores": num_cpus(), "libtorch": chess::LIBTORCH_VERSION });
    if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
        e.extend(x.clone());
    }
    all.insert(name, entry);
    std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
    Ok(())
}

/// Resident memory of this process now (MB), from /proc/self/statm.
#[allow(dead_code)]
pub fn rss_mb() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    pages * 4096 / (1 << 20)
}

/// What every step bench reads from the environment (`BENCH_THREADS`, every core by default;
/// `BENCH_DEVICE`; `BENCH_AMP` off | bf16 | fp16; `BENCH_CHANNELS_LAST` 0 | 1), applied to
/// libtorch as the programs apply it, and passed to the Python side in the same words.
#[allow(dead_code)]
pub struct StepSetup {
    pub threads: i32,
    pub device: tch::Device,
    pub amp: String,
    pub channels_last: bool,
}

#[allow(dead_code)]
impl StepSetup {
    pub fn from_env() -> anyhow::Result<Self> {
        // As the programs do (see chess::device::keep_freed_host_memory); the Python side runs
        // with glibc's defaults, as the original does.
        chess::device::keep_freed_host_memory();
        let setup = Self {
            threads: env_or("BENCH_THREADS", num_cpus() as i32),
            device: device()?,
            amp: env_or("BENCH_AMP", "off".to_string()),
            channels_last: env_or("BENCH_CHANNELS_LAST", 0u8) == 1,
        };
        tch::set_num_threads(setup.threads);
        chess::device::prepare(setup.device);
        tch::manual_seed(0);
        Ok(setup)
    }

    pub fn precision(&self) -> anyhow::Result<chess::Precision> {
        Ok(self.amp.parse()?)
    }

    /// `benches/python/<script>` with the flags every step baseline takes
    /// (`benches/python/step_timing.py`); `StepBench` adds `--warmup` and `--steps`.
    pub fn python(&self, script: &str, batch: i64, size: i64) -> Command {
        let mut cmd = python();
        cmd.arg(root().join("benches/python").join(script))
            .args(["--device", if self.device.is_cuda() { "cuda" } else { "cpu" }])
            .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string()])
            .args(["--amp", &self.amp, "--threads", &self.threads.to_string()]);
        if self.channels_last {
            cmd.arg("--channels-last");
        }
        cmd
    }

    /// The settings, for the results file, with `more` entries.
    pub fn describe(&self, more: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({ "threads": self.threads, "device": format!("{:?}", self.device),
            "amp": self.amp, "channels_last": self.channels_last });
        if let (Some(o), Some(m)) = (v.as_object_mut(), more.as_object()) {
            o.extend(m.clone());
        }
        v
    }
}

/// A closure timing one step of a training program's task on a ready batch (`images`, and
/// `targets` for a supervised task), as `training::Run` calls it; it reads the loss back, as a
/// logging step would, so that the time includes the device's work.
#[allow(dead_code)]
pub fn task_step<'a, T: chess::training::Task<Batch = chess::data::Batch>>(
    task: &'a mut T,
    images: &'a tch::Tensor,
    targets: Option<&'a tch::Tensor>,
) -> impl FnMut() -> anyhow::Result<f64> + 'a {
    let mut step = 0u64;
    move || {
        let batch = chess::data::Batch {
            index: 0,
            images: images.shallow_clone(),
            samples: (0..images.size()[0] as usize).collect(),
            skipped: Vec::new(),
            views: None,
            targets: targets.map(tch::Tensor::shallow_clone),
            target_mask: None,
            joint: None,
        };
        let t = std::time::Instant::now();
        let at = chess::training::StepAt { epoch: 0, step, global_step: step };
        let out = task.step(batch, at).map_err(anyhow::Error::from_boxed)?;
        let _ = out.values[0].1.double_value(&[]);
        step += 1;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// A step benchmark: our step (a closure timing one step) against a PyTorch script that prints
/// `{"step_times_s": [...]}`, alternating sides in rounds of `steps` timed steps after `warmup`
/// (the script is given `--warmup` and `--steps`); medians over all rounds, recorded as
/// images/s with `batch` images per step.
#[allow(dead_code)]
pub struct StepBench {
    pub name: &'static str,
    pub batch: i64,
    pub warmup: usize,
    pub steps: usize,
    pub rounds: usize,
}

#[allow(dead_code)]
impl StepBench {
    /// `BENCH_WARMUP` (3), `BENCH_STEPS` (5) and `BENCH_ROUNDS` (5) from the environment.
    pub fn from_env(name: &'static str, batch: i64) -> Self {
        Self {
            name,
            batch,
            warmup: env_or("BENCH_WARMUP", 3usize),
            steps: env_or("BENCH_STEPS", 5usize),
            rounds: env_or("BENCH_ROUNDS", 5usize),
        }
    }

    pub fn run(
        &self,
        mut rust_step: impl FnMut() -> anyhow::Result<f64>,
        mut python: impl FnMut() -> Command,
        extra: serde_json::Value,
    ) -> anyhow::Result<()> {
        for _ in 0..self.warmup {
            rust_step()?;
        }
        if std::env::var_os("BENCH_RUST_ONLY").is_some() {
            // Diagnosis: every step's time and the process's resident memory, ours only.
            for i in 0..self.steps {
                let t = rust_step()?;
                println!("{} rust step {i}: {t:.3} s, rss {} MB", self.name, rss_mb());
            }
            return Ok(());
        }
        let (mut rust_times, mut python_times, mut per_round) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..self.rounds {
            let times: Vec<f64> = (0..self.steps).map(|_| rust_step()).collect::<anyhow::Result<_>>()?;
            let mut cmd = python();
            cmd.args([
                "--warmup",
                &self.warmup.to_string(),
                "--steps",
                &(self.warmup + self.steps).to_string(),
            ]);
            let out = last_json(&run(cmd)?)?;
            let py: Vec<f64> = out["step_times_s"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default();
            anyhow::ensure!(!py.is_empty(), "{}: the Python side timed no step", self.name);
            let (r, p) = (median(times.clone()), median(py.clone()));
            println!("{} round {round}: median step {r:.3} s (rust) vs {p:.3} s (python)", self.name);
            per_round.push(serde_json::json!({"rust_s": r, "python_s": p}));
            rust_times.extend(times);
            python_times.extend(py);
        }
        let (rust, python) = (median(rust_times), median(python_times));
        println!(
            "{}: median step {rust:.3} s (rust) vs {python:.3} s (python), batch {}",
            self.name, self.batch
        );
        let (rust_ips, python_ips) = (self.batch as f64 / rust, self.batch as f64 / python);
        let mut extra = extra;
        if let Some(e) = extra.as_object_mut() {
            e.insert("rust_median_step_s".into(), rust.into());
            e.insert("python_median_step_s".into(), python.into());
            e.insert("rounds".into(), per_round.into());
            e.insert("batch".into(), self.batch.into());
        }
        record(self.name, rust_ips, python_ips, rust_ips / python_ips, "images/s", extra)
    }
}
