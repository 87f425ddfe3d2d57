//! `data_pipeline`: decode + resize + the full augmentation into ready 512 x 512 two-view
//! batches, ours against the original pipeline (PIL + albumentations in a torch DataLoader)
//! with the same number of workers on the same files. Prints
//! `BENCH data_pipeline rust=<img/s> python=<img/s> ratio=<r>` and records it in
//! target/bench/results.json.
//!
//! On the CPU, ours is the CPU-training set-up: decode threads decode and augment (native
//! loops). With `BENCH_DEVICE=cuda` (benches/gpu.sh) it is the GPU set-up: decode threads
//! decode into pinned memory, the training thread uploads and augments on the GPU, until the
//! views are ready there; both set-ups are printed either way.
mod common;

use std::sync::Arc;
use std::time::Instant;

use chess::data::{AugmentConfig, Dataset, Loader, LoaderConfig, Rng, augment};
use common::{env_or, num_cpus};

fn main() -> anyhow::Result<()> {
    if !common::benching("data_pipeline") {
        return Ok(());
    }
    // As `pretrain` does (see chess::device::keep_freed_host_memory); the Python side runs
    // with glibc's defaults, as the original does.
    chess::device::keep_freed_host_memory();
    let data = common::data_dir();
    let n: usize = env_or("BENCH_IMAGES", 1024);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let workers: usize = env_or("BENCH_WORKERS", 2);
    let size: i64 = env_or("BENCH_SIZE", 512);
    let batch: usize = env_or("BENCH_BATCH", 32);
    let device = common::device()?;
    // `BENCH_SOURCE`: a folder of radiographs (benches/gpu.sh: the images it carries).
    let source = std::env::var_os("BENCH_SOURCE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| data.join("cxr-pneumonia-224/train"));
    let mut ds = Dataset::from_sources(&[source])?;
    // An even spread over both classes.
    let step = (ds.len() / n).max(1);
    ds.samples = ds.samples.into_iter().step_by(step).take(n).collect();
    let list = std::env::temp_dir().join(format!("chess-bench-files-{}.txt", std::process::id()));
    std::fs::write(
        &list,
        ds.samples.iter().map(|s| s.path.display().to_string() + "\n").collect::<String>(),
    )?;

    let cfg = LoaderConfig::training(size, batch, workers, 0);
    let ds = Arc::new(ds);
    let aug = AugmentConfig::default();
    // CPU-only set-up: decode threads augment too, the training thread just receives views.
    let in_workers = Loader::new(ds.clone(), cfg).with_augment(aug);
    let run_workers = |epoch: u64| -> usize {
        in_workers.epoch(epoch, 0).map(|b| b.views.expect("views").0.size()[0] as usize).sum()
    };
    // The GPU set-up (on `device`): decode threads decode, the training thread augments.
    let decode_only =
        if device.is_cuda() { Loader::new(ds, cfg).with_pinned_memory() } else { Loader::new(ds, cfg) };
    let run_main = |epoch: u64| -> usize {
        let mut rng = Rng::new(epoch);
        let mut count = 0;
        for b in decode_only.epoch(epoch, 0) {
            let x = chess::device::upload(&b.images, device);
            let (q, _) = augment(&x, &aug, &mut rng);
            let (k, _) = augment(&x, &aug, &mut rng);
            assert_eq!(q.size(), k.size());
            count += q.size()[0] as usize;
        }
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        count
    };
    let script = common::root().join("benches/python/data_pipeline.py");
    let py =
        || -> anyhow::Result<f64> {
            let mut cmd = common::python();
            cmd.arg(&script)
                .args(["--files", list.to_str().unwrap(), "--workers", &workers.to_string()])
                .args(["--batch-size", &batch.to_string(), "--image-size", &size.to_string()]);
            Ok(common::last_json(&common::run(cmd)?)?["images_per_s"].as_f64().unwrap_or(0.0))
        };
    // Warm-up: page cache, allocator, CUDA context and kernels.
    run_workers(99);
    run_main(98);
    py()?;
    // The sides alternate, so that a slow minute on a shared machine hits both; medians.
    let (mut workers_rates, mut main_rates, mut python_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut images = 0;
    for round in 0..rounds as u64 {
        let start = Instant::now();
        images = run_workers(round);
        workers_rates.push(images as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let main_images = run_main(round);
        main_rates.push(main_images as f64 / start.elapsed().as_secs_f64());
        python_rates.push(py()?);
        println!(
            "  round {round}: {:.1} (decode threads augment), {:.1} (augment on {device:?}), {:.1} (python) images/s",
            workers_rates[round as usize], main_rates[round as usize], python_rates[round as usize]
        );
    }
    let _ = std::fs::remove_file(&list);
    let (rust_workers, rust_main) = (common::median(workers_rates), common::median(main_rates));
    let python_rate = common::median(python_rates);
    let rust = if device.is_cuda() { rust_main } else { rust_workers };
    let ratio = rust / python_rate;
    println!(
        "  ({images} images x 2 views, {size} px, batch {batch}, {workers} workers, {} cores, medians of {rounds} rounds)",
        num_cpus()
    );
    println!("  decode threads decoding and augmenting (CPU training): {rust_workers:.1} images/s");
    println!("  decode threads decoding, augmenting on {device:?} (the GPU set-up): {rust_main:.1} images/s");
    common::record(
        "data_pipeline",
        rust,
        python_rate,
        ratio,
        "images/s",
        serde_json::json!({ "augment_in_decode_threads": rust_workers, "augment_on_device": rust_main,
            "device": format!("{device:?}"), "workers": workers, "image_size": size, "batch": batch,
            "images": images, "rounds": rounds }),
    )?;
    Ok(())
}
