"""What the PyTorch step baselines (train_classify.py, train_bone.py, train_spade.py) share: the
flags the Rust step benches pass (`StepSetup::python` in benches/common), the set-up of torch,
and the timing loop that prints the one JSON line `StepBench` reads."""
import argparse
import json
import time

import torch


def parser(doc, batch_size, image_size, amps=("off", "bf16")):
    """The common flags; a script adds its own to the parser returned."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--amp", default="off", choices=list(amps))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    return p


def memory_format(a):
    return torch.channels_last if a.channels_last else torch.contiguous_format


def setup(a):
    """Threads, seed and cudnn's autotuner as the Rust side sets them; returns (device, autocast
    dtype or None)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    return torch.device(a.device), {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)


def time_steps(a, step):
    """Runs `step()` (returns the step's loss tensor) `a.steps` times, reading the loss back as a
    logging step would, and prints the times after `a.warmup` as one JSON line."""
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step().item()
        times.append(time.perf_counter() - t)
    st = times[a.warmup:]
    print(json.dumps({"step_times_s": st, "median_step_s": sorted(st)[len(st) // 2], "torch": torch.__version__}))
