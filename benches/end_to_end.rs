//! `end_to_end`: pretraining throughput with data loading included, the `pretrain` binary
//! against the original loop (`benches/python/train_moco.py`: PIL + albumentations in a torch
//! DataLoader, then the MoCo step), ResNet-18, 128 px, batch 32, K = 4096, plain BN, the same 2
//! decode workers and thread count, the same JPEGs of `cxr-pneumonia-224/train`; images/s over
//! the steps after 10 warm-up steps, and the peak resident memory of each side's largest process.
//! Two comparisons, alternating in rounds (`BENCH_ROUNDS`, 2; medians):
//! - `end_to_end`: ours with its defaults (`--amp auto --channels-last auto`: what a user gets)
//!   against the original as its authors run it (fp32, NCHW; it has no mixed precision);
//! - `end_to_end_bf16`: both sides in bf16 autocast, NCHW (the same arithmetic on both sides).
mod common;

use common::env_or;

/// One side's settings of a comparison: (rust flags, python flags).
struct Setting {
    name: &'static str,
    rust: &'static [&'static str],
    python: &'static [&'static str],
}

const SETTINGS: [Setting; 2] = [
    Setting { name: "end_to_end", rust: &[], python: &["--amp", "off"] },
    Setting {
        name: "end_to_end_bf16",
        rust: &["--amp", "bf16", "--channels-last", "off"],
        python: &["--amp", "bf16"],
    },
];

fn main() -> anyhow::Result<()> {
    if !common::benching("end_to_end") {
        return Ok(());
    }
    let exe = common::root().join("target/release/examples/pretrain");
    anyhow::ensure!(exe.exists(), "{} not built: `make bench` builds it", exe.display());
    let workers: usize = env_or("BENCH_WORKERS", 2);
    let steps: usize = env_or("BENCH_STEPS", 30);

    // The same files for both: an even spread over the training split.
    let mut ds = chess::data::Dataset::from_sources(&[common::data_dir().join("cxr-pneumonia-224/train")])?;
    let n = 1024;
    let stride = (ds.len() / n).max(1);
    ds.samples = ds.samples.into_iter().step_by(stride).take(n).collect();
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("files.txt");
    std::fs::write(
        &list,
        ds.samples.iter().map(|s| s.path.display().to_string() + "\n").collect::<String>(),
    )?;
    let wrapper = common::root().join("benches/python/peak_rss.py");

    let rounds: usize = env_or("BENCH_ROUNDS", 2);
    let mut results: Vec<(Vec<f64>, Vec<f64>, f64, f64)> =
        SETTINGS.iter().map(|_| (vec![], vec![], 0.0, 0.0)).collect();
    let mut resolved = String::new();
    for round in 0..rounds {
        for (setting, acc) in SETTINGS.iter().zip(results.iter_mut()) {
            let side = one_round(&exe, &wrapper, &list, dir.path(), workers, steps, setting)?;
            println!(
                "  round {round}, {}: {:.2} (rust) vs {:.2} (python) images/s",
                setting.name, side.0, side.1
            );
            acc.0.push(side.0);
            acc.1.push(side.1);
            (acc.2, acc.3) = (acc.2.max(side.2), acc.3.max(side.3));
            if setting.rust.is_empty() {
                resolved = side.4;
            }
        }
    }
    for (setting, (r, p, rust_rss, python_rss)) in SETTINGS.iter().zip(results) {
        let (rust, python) = (common::median(r), common::median(p));
        let (arch, size, batch) = (ARCH, SIZE, BATCH);
        println!(
            "{}: {arch}, {size} px, batch {batch}, {workers} workers, {steps} steps, median of {rounds} rounds; rust {:?}, python {:?}; peak RSS {rust_rss:.0} MB (rust) vs {python_rss:.0} MB (python, largest process)",
            setting.name, setting.rust, setting.python
        );
        common::record(
            setting.name,
            rust,
            python,
            rust / python,
            "images/s",
            serde_json::json!({ "rust_peak_rss_mb": rust_rss, "python_peak_rss_mb": python_rss, "arch": arch,
                "image_size": 128, "batch": 32, "workers": workers, "steps": steps, "rounds": rounds,
                "rust_flags": setting.rust, "python_flags": setting.python,
                "rust_resolved": if setting.rust.is_empty() { resolved.clone() } else { String::new() } }),
        )?;
    }
    Ok(())
}

const ARCH: &str = "resnet18";
const SIZE: &str = "128";
const BATCH: &str = "32";
const QUEUE: &str = "4096";

/// One run of each side: (rust images/s, python images/s, rust peak RSS MB, python peak RSS MB,
/// what ours resolved its speed settings to).
fn one_round(
    exe: &std::path::Path,
    wrapper: &std::path::Path,
    list: &std::path::Path,
    dir: &std::path::Path,
    workers: usize,
    steps: usize,
    setting: &Setting,
) -> anyhow::Result<(f64, f64, f64, f64, String)> {
    let (arch, size, batch, queue) = (ARCH, SIZE, BATCH, QUEUE);
    let out = dir.join("run");
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = common::python();
    cmd.arg(wrapper).arg(exe);
    cmd.args(["--data", list.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"])
        .args(["--arch", arch, "--image-size", size, "--batch-size", batch, "--moco-k", queue])
        .args(["--bn-splits", "1", "--workers", &workers.to_string(), "--epochs", "100"])
        .args(["--max-steps", &steps.to_string(), "--log-every", "5", "--save-every-iters", "0"])
        .args(setting.rust);
    let rust_rss = common::last_json(&common::run(cmd)?)?["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json"))?)?;
    let resolved = config["speed"].to_string();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let end = common::last_json(&metrics)?;
    let rust = end["img_per_s"].as_f64().unwrap_or(f64::NAN);

    let mut cmd = common::python();
    cmd.arg(wrapper)
        .arg(common::python().get_program())
        .arg(common::root().join("benches/python/train_moco.py"));
    cmd.args(["--files", list.to_str().unwrap(), "--device", "cpu", "--arch", arch])
        .args(["--image-size", size, "--batch-size", batch, "--moco-k", queue])
        .args(["--workers", &workers.to_string(), "--threads", &common::num_cpus().to_string()])
        .args(["--steps", &steps.to_string(), "--warmup", "10"])
        .args(setting.python);
    let stdout = common::run(cmd)?;
    let python_rss = common::last_json(&stdout)?["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
    let python = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["images_per_s"].as_f64())
        .unwrap_or(f64::NAN);
    Ok((rust, python, rust_rss, python_rss, resolved))
}
