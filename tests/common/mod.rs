//! Helpers shared by the parity tests: run the PyTorch reference, load what it wrote, compare.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use tch::{Kind, Tensor};

/// The Python with torch and torchvision: `CHESS_PYTHON`, else the project venv.
pub fn python() -> PathBuf {
    std::env::var_os("CHESS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// An example binary (`target/<profile>/examples/<name>`, beside the test's `deps` folder), as a
/// command; `make test` builds them first.
pub fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --release --examples` (make test does)",
        path.display()
    );
    Command::new(path)
}

/// A fixture folder shared by the tests of one binary: `target/tmp/<name>`, emptied when first
/// asked for. A fixed path (not a temp dir held in a `static`, which is never dropped) keeps a
/// repeated `make test` from leaving gigabytes of fixtures behind, and leaves the last run's
/// files to look at when a test fails.
pub fn fixture_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", dir.display()),
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The JSON lines of a run's `OUT/metrics.jsonl`.
pub fn metrics(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// Loss per global step of a run; a step logged twice (before a stop and after the resume that
/// repeats it) keeps its last value.
pub fn losses(out: &std::path::Path) -> std::collections::BTreeMap<u64, f64> {
    metrics(out)
        .iter()
        .filter(|m| m["kind"] == "step")
        .map(|m| (m["global_step"].as_u64().unwrap(), m["loss"].as_f64().unwrap()))
        .collect()
}

/// Two runs' per-step losses (from [`losses`]) are the same numbers, bit for bit, at the same
/// steps: for runs whose arithmetic is equal by construction, on any CPU. Prints both, named.
pub fn assert_losses_equal(
    (name_a, a): (&str, &std::collections::BTreeMap<u64, f64>),
    (name_b, b): (&str, &std::collections::BTreeMap<u64, f64>),
) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{name_a} vs {name_b}: steps logged"
    );
    for (&step, la) in a {
        eprintln!("step {step}: {name_a} {la:.9}, {name_b} {:.9}", b[&step]);
    }
    assert_eq!(a, b, "{name_a} vs {name_b}: loss per step");
}

/// Runs `cmd`, fails the test with its output unless it succeeds; returns stderr then stdout.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{err}\n{text}");
    format!("{err}{text}")
}

/// `keys` of each epoch's record (the last one of an epoch logged twice): after a stop and
/// resume they equal the uninterrupted run's.
pub fn epoch_values(
    out: &std::path::Path,
    keys: &[&str],
) -> std::collections::BTreeMap<u64, Vec<serde_json::Value>> {
    metrics(out)
        .iter()
        .filter(|m| m["kind"] == "epoch")
        .map(|m| (m["epoch"].as_u64().unwrap(), keys.iter().map(|k| m[*k].clone()).collect()))
        .collect()
}

/// Runs `cmd` (a training program writing `out/metrics.jsonl`), sends it SIGTERM once it has
/// logged a step, and checks that it saved and stopped as asked, within `limit`.
pub fn stop_after_a_step(mut cmd: Command, out: &std::path::Path, limit: std::time::Duration) {
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    while !out.join("metrics.jsonl").exists() || losses(out).is_empty() {
        assert!(start.elapsed() < limit, "no step logged within {limit:?}");
        assert!(child.try_wait().unwrap().is_none(), "run ended before the signal");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "exit status after SIGTERM: {:?}\n{err}", done.status);
    assert!(err.contains("stopped by signal"), "{err}");
}

/// `cmd` (an example binary with its arguments) under torchrun with `ranks` processes on this
/// machine, one OpenMP thread each.
pub fn torchrun(cmd: &Command, ranks: usize) -> Command {
    let torchrun = python().with_file_name("torchrun");
    assert!(torchrun.exists(), "{} missing (run `make venv`)", torchrun.display());
    let mut run = Command::new(torchrun);
    run.args(["--no-python", "--standalone", "--nproc-per-node", &ranks.to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("OMP_NUM_THREADS", "1");
    run
}

/// Each rank's `rank R/W: checksum ...` line in `stdout`, by rank.
pub fn checksums(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(": checksum "))
        .map(|(rank, sums)| (rank.to_string(), sums.to_string()))
        .collect()
}

/// The shared radiographs: `CHESS_DATA`, else `../shared/data` beside the checkout.
pub fn data_dir() -> PathBuf {
    std::env::var_os("CHESS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// A little-endian float32 or float64 `.npy` (C order, as numpy and tch's `write_npy` write it).
pub fn read_npy(path: &std::path::Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape: Vec<i64> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let body = &bytes[10 + header_len..];
    let t = if header.contains("'<f8'") {
        let v: Vec<f64> = body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_slice(&v)
    } else {
        assert!(header.contains("'<f4'"), "{header}");
        let v: Vec<f32> = body.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_slice(&v)
    };
    t.view(shape.as_slice())
}

/// Runs `tests/python/<script>` with `args`; panics with its output if it fails, else returns
/// its standard output.
pub fn run_python<I, S>(script: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): run `make venv` first", python().display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/python/moco_reference.py` with `args` and returns every tensor it wrote.
pub fn reference(args: &[&str]) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("reference.safetensors");
    let out_arg = out.to_str().expect("utf-8 temp path");
    run_python("moco_reference.py", args.iter().copied().chain(["--out", out_arg]));
    Tensor::read_safetensors(&out).expect("reading reference tensors").into_iter().collect()
}

/// Entries under `prefix`, with the prefix removed.
pub fn strip(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.shallow_clone())))
        .collect()
}

/// `max |a - b| / max |b|` (absolute difference when `b` is all zeros).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    assert_eq!(a.size(), b.size(), "shapes differ");
    if a.numel() == 0 {
        return 0.0;
    }
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    if scale > 0.0 { diff / scale } else { diff }
}

pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let d = rel_diff(a, b);
    assert!(d <= tol, "{what}: max|diff|/max|ref| = {d:.3e} > {tol:.0e}");
}

/// Compares every tensor of `ours` (name -> tensor) with the reference, returning the worst
/// relative difference and its name; integer tensors must be equal.
pub fn worst_diff(ours: &[(String, Tensor)], reference: &HashMap<String, Tensor>) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, t) in ours {
        let r = reference.get(name).unwrap_or_else(|| panic!("reference lacks {name}"));
        if matches!(t.kind(), Kind::Int64 | Kind::Int) {
            assert_eq!(t.to_device(tch::Device::Cpu), r.to_kind(t.kind()), "{name} differs");
            continue;
        }
        let d = rel_diff(t, r);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}
