//! `data_pipeline`: decode + resize + the full augmentation into ready 512 x 512 two-view
//! batches, ours against the original pipeline (PIL + albumentations in a torch DataLoader)
//! with the same number of workers on the same files. Prints
//! `BENCH data_pipeline rust=<img/s> python=<img/s> ratio=<r>` and records it in
//! target/bench/results.json.
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use chess::data::{AugmentConfig, Dataset, Loader, LoaderConfig, Rng, augment};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` also runs harness-less benches, without `--bench`: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("data_pipeline: benchmark skipped (run it with `make bench`)");
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data =
        std::env::var_os("CHESS_DATA").map(PathBuf::from).unwrap_or_else(|| root.join("../shared/data"));
    let n: usize = env_or("BENCH_IMAGES", "384").parse()?;
    let workers: usize = env_or("BENCH_WORKERS", "2").parse()?;
    let size: i64 = env_or("BENCH_SIZE", "512").parse()?;
    let batch = 32;
    let mut ds = Dataset::from_sources(&[data.join("cxr-pneumonia-224/train")])?;
    // An even spread over both classes.
    let step = (ds.len() / n).max(1);
    ds.samples = ds.samples.into_iter().step_by(step).take(n).collect();
    let list = std::env::temp_dir().join(format!("chess-bench-files-{}.txt", std::process::id()));
    std::fs::write(
        &list,
        ds.samples.iter().map(|s| s.path.display().to_string() + "\n").collect::<String>(),
    )?;

    let cfg = LoaderConfig {
        image_size: size,
        batch_size: batch,
        workers,
        prefetch: 4,
        seed: 0,
        shuffle: true,
        drop_last: true,
    };
    let ds = Arc::new(ds);
    let aug = AugmentConfig::default();
    // CPU-only set-up: decode threads augment too, the training thread just receives views.
    let in_workers = Loader::new(ds.clone(), cfg).with_augment(aug);
    let run_workers = |epoch: u64| -> usize {
        in_workers.epoch(epoch, 0).map(|b| b.views.expect("views").0.size()[0] as usize).sum()
    };
    // GPU-style set-up, here on the CPU: decode threads decode, the training thread augments.
    let decode_only = Loader::new(ds, cfg);
    let run_main = |epoch: u64| -> usize {
        let mut rng = Rng::new(epoch);
        let mut count = 0;
        for b in decode_only.epoch(epoch, 0) {
            let (q, _) = augment(&b.images, &aug, &mut rng);
            let (k, _) = augment(&b.images, &aug, &mut rng);
            assert_eq!(q.size(), k.size());
            count += q.size()[0] as usize;
        }
        count
    };
    run_workers(99); // warm-up: page cache, allocator
    let start = Instant::now();
    let images = run_workers(0);
    let rust = images as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let main_images = run_main(1);
    let rust_main = main_images as f64 / start.elapsed().as_secs_f64();

    let python =
        std::env::var_os("CHESS_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let script = root.join("benches/python/data_pipeline.py");
    let py = || -> anyhow::Result<f64> {
        let out = Command::new(&python)
            .arg(&script)
            .args(["--files", list.to_str().unwrap(), "--workers", &workers.to_string()])
            .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "python baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["images_per_s"].as_f64().unwrap_or(0.0))
    };
    py()?; // warm-up
    let python_rate = py()?;
    let _ = std::fs::remove_file(&list);
    let ratio = rust / python_rate;
    println!("BENCH data_pipeline rust={rust:.1} python={python_rate:.1} ratio={ratio:.2}");
    println!(
        "  ({images} images x 2 views, {size} px, batch {batch}, {workers} workers decoding and augmenting, {} cores)",
        num_cpus()
    );
    println!(
        "  augmenting on the training thread instead (the GPU set-up, here on the CPU): {rust_main:.1} images/s"
    );
    record("data_pipeline", rust, python_rate, ratio)?;
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Adds one comparison to target/bench/results.json.
fn record(name: &str, rust: f64, python: f64, ratio: f64) -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    let mut all: serde_json::Map<String, serde_json::Value> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    all.insert(
        name.to_string(),
        serde_json::json!({ "rust": rust, "python": python, "ratio": ratio, "unit": "images/s", "cores": num_cpus() }),
    );
    std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
    Ok(())
}
