//! `dicom_decode`: the first epoch of a DICOM archive, per transfer syntax. Decode, window
//! (the training loader's default: the file's VOI LUT or window, else the percentile clip;
//! MONOCHROME1 inverted) and resize to 512 px the real radiographs of `$CHESS_DATA/dicom` and
//! pydicom-data's CR images, in every syntax (the real file where one exists, else transcoded
//! by benches/python/dicom_decode.py into target/bench/dicom_decode), repeated to a few hundred
//! files, with our loader's 2 decode threads against pydicom with its pixel plugins in a
//! 2-worker torch DataLoader. Prints images/s and the ratio per syntax, then
//! `BENCH dicom_decode rust=<img/s> python=<img/s> ratio=<r>` for the syntax we decode with our
//! own code (uncompressed, deflate, RLE, JPEG baseline, extended, lossless) that does worst,
//! and `BENCH dicom_decode_codec ...` for the worst of those where both sides call the same C
//! codec (JPEG 2000: OpenJPEG, JPEG-LS: CharLS); records both in target/bench/results.json.
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chess::data::{Dataset, Loader, LoaderConfig, Sample};
use common::{env_or, num_cpus};

/// One transfer syntax's files, as the preparation wrote them.
struct Syntax {
    key: String,
    uid: String,
    name: String,
    /// "own" (our decoders) or "codec" (the same C library on both sides).
    group: String,
    images: usize,
    real: usize,
    missing: Vec<String>,
    list: PathBuf,
    loader: Loader,
}

fn main() -> anyhow::Result<()> {
    if !common::benching("dicom_decode") {
        return Ok(());
    }
    // As `pretrain` does (see chess::device::keep_freed_host_memory).
    chess::device::keep_freed_host_memory();
    // Each image this many times per syntax: 5 images x 2 = 10 files, 80 over the 8 syntaxes,
    // 400 a side over 5 rounds (the whole bench takes 2 to 3 minutes on 2 cores).
    let repeat: usize = env_or("BENCH_REPEAT", 2);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let workers: usize = env_or("BENCH_WORKERS", 2);
    let size: i64 = env_or("BENCH_SIZE", 512);
    let batch: usize = env_or("BENCH_BATCH", 5);
    // `BENCH_SYNTAXES`: a comma-separated subset of the syntax keys (default: all).
    let only: Option<Vec<String>> =
        std::env::var("BENCH_SYNTAXES").ok().map(|v| v.split(',').map(|k| k.trim().to_string()).collect());
    let dir = common::root().join("target/bench/dicom_decode");
    let script = common::root().join("benches/python/dicom_decode.py");
    let mut prepare = common::python();
    prepare.arg(&script).arg("prepare").arg(common::data_dir().join("dicom")).arg(&dir);
    common::run(prepare)?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let cfg = LoaderConfig { prefetch: 4, ..LoaderConfig::in_order(size, batch, workers) };
    let mut syntaxes = Vec::new();
    for s in manifest["syntaxes"].as_array().into_iter().flatten() {
        let key = s["key"].as_str().unwrap_or_default().to_string();
        if only.as_ref().is_some_and(|only| !only.contains(&key)) {
            continue;
        }
        let files = strings(&s["files"]);
        let missing = strings(&s["missing"]);
        for m in &missing {
            println!("  {key}: not produced here: {m}");
        }
        if files.is_empty() {
            continue;
        }
        let repeated: Vec<&String> = (0..repeat).flat_map(|_| &files).collect();
        let list = dir.join(format!("{key}.txt"));
        std::fs::write(&list, repeated.iter().map(|f| format!("{f}\n")).collect::<String>())?;
        let ds = Dataset { samples: repeated.iter().map(|f| Sample::new(PathBuf::from(f))).collect() };
        syntaxes.push(Syntax {
            uid: s["uid"].as_str().unwrap_or_default().to_string(),
            name: s["name"].as_str().unwrap_or_default().to_string(),
            group: s["group"].as_str().unwrap_or_default().to_string(),
            images: files.len(),
            real: strings(&s["real"]).len(),
            missing,
            list,
            loader: Loader::new(Arc::new(ds), cfg),
            key,
        });
    }
    anyhow::ensure!(!syntaxes.is_empty(), "no DICOM files prepared in {}", dir.display());

    let rust = |s: &Syntax, epoch: u64| -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut it = s.loader.epoch(epoch, 0);
        let n: usize = it.by_ref().map(|b| b.images.size()[0] as usize).sum();
        let rate = n as f64 / start.elapsed().as_secs_f64();
        anyhow::ensure!(it.skipped().is_empty(), "{}: {:?}", s.key, it.skipped());
        Ok(rate)
    };
    let python = || -> anyhow::Result<serde_json::Value> {
        let mut cmd = common::python();
        cmd.arg(&script).arg("run");
        cmd.args(["--workers", &workers.to_string(), "--batch-size", &batch.to_string()]);
        cmd.args(["--image-size", &size.to_string()]);
        cmd.args(syntaxes.iter().map(|s| format!("{}={}", s.key, s.list.display())));
        common::last_json(&common::run(cmd)?)
    };
    // Warm-up: page cache, allocator. (Each Python run is a new process that imports and warms
    // up its decoders before it starts timing.)
    for s in &syntaxes {
        rust(s, 99)?;
    }
    // The sides alternate, so that a slow minute on a shared machine hits both; medians.
    let mut ours = vec![Vec::new(); syntaxes.len()];
    let mut theirs = vec![Vec::new(); syntaxes.len()];
    for round in 0..rounds as u64 {
        for (s, rates) in syntaxes.iter().zip(&mut ours) {
            rates.push(rust(s, round)?);
        }
        let py = python()?;
        for (s, rates) in syntaxes.iter().zip(&mut theirs) {
            rates.push(py[&s.key].as_f64().unwrap_or(0.0));
        }
        let line: Vec<String> = syntaxes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("{} {:.1}/{:.1}", s.key, ours[i][round as usize], theirs[i][round as usize])
            })
            .collect();
        println!("  round {round} (ours/python images/s): {}", line.join(", "));
    }
    println!(
        "  ({} files per syntax: {} images x {repeat}, {size} px, batch {batch}, {workers} workers, {} cores, medians of {rounds} rounds)",
        syntaxes[0].images * repeat,
        syntaxes[0].images,
        num_cpus()
    );
    println!(
        "  {:<20} {:>5} {:>8} {:>8} {:>6}  transfer syntax",
        "syntax", "group", "ours", "python", "ratio"
    );
    let mut table = serde_json::Map::new();
    let mut worst: [Option<(usize, f64, f64)>; 2] = [None, None];
    for (i, s) in syntaxes.iter().enumerate() {
        let (r, p) = (common::median(ours[i].clone()), common::median(theirs[i].clone()));
        let ratio = r / p;
        println!(
            "  {:<20} {:>5} {r:>8.1} {p:>8.1} {ratio:>6.2}  {} {} ({} of {} files real)",
            s.key, s.group, s.uid, s.name, s.real, s.images
        );
        table.insert(
            s.key.clone(),
            serde_json::json!({ "rust": r, "python": p, "ratio": ratio, "group": s.group,
                "transfer_syntax": s.uid, "name": s.name, "images": s.images, "real_files": s.real,
                "not_produced": s.missing }),
        );
        let g = usize::from(s.group != "own");
        if worst[g].is_none_or(|(_, _, worst)| ratio < worst) {
            worst[g] = Some((i, r, ratio));
        }
    }
    // A syntax with files missing (an encoder not installed: `make venv`) leaves the lowest
    // ratio over fewer files or syntaxes than the benchmark means: said loudly, and recorded.
    let incomplete: Vec<&str> =
        syntaxes.iter().filter(|s| !s.missing.is_empty()).map(|s| s.key.as_str()).collect();
    let absent = 8usize.saturating_sub(syntaxes.len());
    if !incomplete.is_empty() || absent > 0 {
        println!(
            "  dicom_decode: INCOMPLETE: {absent} syntax(es) absent, files missing in {incomplete:?}; run `make venv` for the encoders"
        );
    }
    let extra = |i: usize| {
        serde_json::json!({ "syntax": syntaxes[i].key, "syntaxes": table, "workers": workers,
            "image_size": size, "batch": batch, "files_per_syntax": syntaxes[i].images * repeat,
            "rounds": rounds, "complete": incomplete.is_empty() && absent == 0 })
    };
    for (g, name) in [(0, "dicom_decode"), (1, "dicom_decode_codec")] {
        if let Some((i, r, ratio)) = worst[g] {
            println!("  {name}: lowest ratio {ratio:.2} ({})", syntaxes[i].key);
            common::record(name, r, r / ratio, ratio, "images/s", extra(i))?;
        }
    }
    Ok(())
}
