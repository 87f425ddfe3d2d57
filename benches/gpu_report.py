"""Turns the files benches/gpu.sh leaves in OUT into the `BENCH` lines of the GPU comparison
(`gpu_end_to_end`: views drawn on the GPU, the default there; `gpu_end_to_end_loader_augment`:
views drawn by the decode threads) and their entries in OUT/results.json (the format of
target/bench/results.json).

    gpu_report.py OUT
"""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def smi(name):
    rows = [list(map(float, l.split(","))) for l in (out / name).read_text().splitlines() if l.strip()]
    busy = [r for r in rows if r[0] > 0] or rows
    return {"gpu_util_mean": sum(r[0] for r in busy) / len(busy), "peak_mem_mib": max(r[1] for r in rows)}


def end(name):
    lines = [json.loads(l) for l in (out / name).read_text().splitlines() if l.strip()]
    return next(l for l in reversed(lines) if l["kind"] == "end")["img_per_s"]


python = None
for line in (out / "summary.txt").read_text().splitlines():
    if line.startswith("python {"):
        python = json.loads(line[len("python "):])["images_per_s"]
if python is None:
    raise SystemExit(f"no Python baseline result in {out / 'summary.txt'}")
rust = end("metrics_rust_1.jsonl")
entry = {"rust": rust, "python": python, "ratio": rust / python, "unit": "images/s",
         "gpu": (out / "gpu.txt").read_text().strip(),
         "rust_nvidia_smi": smi("smi_rust_1.csv"), "python_nvidia_smi": smi("smi_python.csv")}
if (out / "metrics_rust_8.jsonl").exists():
    entry["rust_bn_splits_8"] = end("metrics_rust_8.jsonl")
results = {"gpu_end_to_end": entry}
print(f"BENCH gpu_end_to_end rust={rust:.3f} python={python:.3f} ratio={rust / python:.2f}")
if (out / "metrics_rust_loader.jsonl").exists():
    loader = end("metrics_rust_loader.jsonl")
    results["gpu_end_to_end_loader_augment"] = {
        "rust": loader, "python": python, "ratio": loader / python, "unit": "images/s",
        "rust_nvidia_smi": smi("smi_rust_loader.csv")}
    print(f"BENCH gpu_end_to_end_loader_augment rust={loader:.3f} python={python:.3f} ratio={loader / python:.2f}")
(out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
