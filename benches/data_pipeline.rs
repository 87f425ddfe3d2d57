//! `data_pipeline`: decode + resize + the full augmentation into ready 512 x 512 two-view
//! batches, ours against the original pipeline (PIL + albumentations in a torch DataLoader)
//! with the same number of workers on the same files. Prints
//! `BENCH data_pipeline rust=<img/s> python=<img/s> ratio=<r>` and records it in
//! target/bench/results.json.
mod common;

use std::sync::Arc;
use std::time::Instant;

use chess::data::{AugmentConfig, Dataset, Loader, LoaderConfig, Rng, augment};
use common::{env_or, num_cpus};

fn main() -> anyhow::Result<()> {
    if !common::benching("data_pipeline") {
        return Ok(());
    }
    let data = common::data_dir();
    let n: usize = env_or("BENCH_IMAGES", 384);
    let workers: usize = env_or("BENCH_WORKERS", 2);
    let size: i64 = env_or("BENCH_SIZE", 512);
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

    let script = common::root().join("benches/python/data_pipeline.py");
    let py =
        || -> anyhow::Result<f64> {
            let mut cmd = common::python();
            cmd.arg(&script)
                .args(["--files", list.to_str().unwrap(), "--workers", &workers.to_string()])
                .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string()]);
            Ok(common::last_json(&common::run(cmd)?)?["images_per_s"].as_f64().unwrap_or(0.0))
        };
    py()?; // warm-up
    let python_rate = py()?;
    let _ = std::fs::remove_file(&list);
    let ratio = rust / python_rate;
    println!(
        "  ({images} images x 2 views, {size} px, batch {batch}, {workers} workers decoding and augmenting, {} cores)",
        num_cpus()
    );
    println!(
        "  augmenting on the training thread instead (the GPU set-up, here on the CPU): {rust_main:.1} images/s"
    );
    common::record(
        "data_pipeline",
        rust,
        python_rate,
        ratio,
        "images/s",
        serde_json::json!({ "augment_on_training_thread": rust_main, "workers": workers, "image_size": size }),
    )?;
    Ok(())
}
