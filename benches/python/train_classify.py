"""The CheSS classification fine-tuning step in PyTorch, the baseline of `classify train`'s step:
torchvision ResNet with a one-channel stem and a linear head of L labels, BCE with logits (fp32,
outside autocast), SGD lr 1e-3 momentum 0.9, optional bf16/fp16 autocast and channels_last.
Random inputs and targets (the same every step), for timing the step alone. Prints one JSON line.

    train_classify.py --arch resnet50 --batch-size 16 --image-size 224 --labels 14 --steps 8
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--labels", type=int, default=14)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.arch)(num_classes=a.labels)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model = model.to(device).train()
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    scaler = torch.amp.GradScaler(enabled=a.amp == "fp16")
    x = torch.randn(a.batch_size, 1, a.image_size, a.image_size, device=device).contiguous(memory_format=mf)
    y = (torch.rand(a.batch_size, a.labels, device=device) > 0.5).float()

    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()  # waits for the device, as a logging step would
        times.append(time.perf_counter() - t)
    st = times[a.warmup:]
    print(json.dumps({"step_times_s": st, "median_step_s": sorted(st)[len(st) // 2], "torch": torch.__version__}))


if __name__ == "__main__":
    main()
