"""The original MoCo v2 pretraining loop, written from the CheSS recipe, as the baseline of the
Rust `pretrain`: torchvision ResNet with a one-channel stem and MLP head, momentum encoder,
queue, InfoNCE, SGD; single process (plain BN, no shuffle), optional autocast and
channels_last. Data: `data_pipeline.py`'s PIL + albumentations pipeline in a torch DataLoader,
or `--synthetic` random views (for timing the step alone). Prints one JSON line.

    train_moco.py --files LIST --device cuda --batch-size 64 --image-size 512 --amp bf16 \
        --channels-last --workers 16 --steps 200
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def encoder(arch, dim):
    net = getattr(torchvision.models, arch)(num_classes=dim)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    hidden = net.fc.weight.shape[1]
    net.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), net.fc)
    return net


class MoCo(nn.Module):
    def __init__(self, arch, dim=128, K=65536, m=0.999, T=0.2):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q, self.encoder_k = encoder(arch, dim), encoder(arch, dim)
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data.copy_(q.data)
            k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self):
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data = k.data * self.m + q.data * (1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys):
        n, ptr = keys.shape[0], int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % self.K
        self.queue[:, idx] = keys.float().T
        self.queue_ptr[0] = (ptr + n) % self.K

    def forward(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], 1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return logits, labels, k


def batches(a, device):
    if a.synthetic:
        g = torch.Generator().manual_seed(0)
        shape = (a.batch_size, 1, a.image_size, a.image_size)
        q, k = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        while True:
            yield q, k
    from data_pipeline import Pairs
    files = [l.strip() for l in open(a.files) if l.strip()]
    loader = torch.utils.data.DataLoader(Pairs(files, a.image_size), batch_size=a.batch_size,
                                         num_workers=a.workers, drop_last=True, shuffle=True,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=a.workers > 0)
    while True:
        yield from loader


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--files")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--moco-k", type=int, default=65536)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = MoCo(a.arch, K=a.moco_k).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    scaler = torch.amp.GradScaler(enabled=a.amp == "fp16")
    mf = torch.channels_last if a.channels_last else torch.contiguous_format

    step_times, t_start, images = [], None, 0
    last = time.perf_counter()
    for step, (im_q, im_k) in enumerate(batches(a, device)):
        if step == a.steps:
            break
        im_q = im_q.to(device, non_blocking=True).contiguous(memory_format=mf)
        im_k = im_k.to(device, non_blocking=True).contiguous(memory_format=mf)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, labels, k = model(im_q, im_k)
            loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        model.enqueue(k)
        loss_value = loss.item()  # waits for the device, as a logging step would
        now = time.perf_counter()
        step_times.append(now - last)
        last = now
        if step + 1 == a.warmup:
            t_start = now
        elif step + 1 > a.warmup:
            images += a.batch_size
    elapsed = time.perf_counter() - t_start
    st = sorted(step_times[a.warmup:])
    out = {
        "images_per_s": images / elapsed, "steps": len(step_times), "median_step_s": st[len(st) // 2],
        "step_times_s": step_times[a.warmup:],
        "loss": loss_value, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
