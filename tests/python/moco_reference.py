"""Independent PyTorch reference for the parity tests, written from CHESS_RECIPE.md.

It builds torchvision ResNets (1-channel conv1, optional split-batch BN), a MoCo v2 model and its
training step in plain PyTorch, runs them, and writes initial state, inputs and results to a
safetensors file that the Rust tests load.

    moco_reference.py forward --arch resnet50 --out F
    moco_reference.py steps --arch resnet50 --batch 8 --size 64 --queue 64 --splits 1 --steps 3 --out F
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file


class SplitBatchNorm(nn.BatchNorm2d):
    """BN whose training statistics are computed per sub-batch: the batch cut into `splits`
    consecutive chunks; running statistics are the mean of the chunks' updates."""

    def __init__(self, channels, splits):
        super().__init__(channels)
        self.splits = splits

    def forward(self, x):
        if not self.training or self.splits == 1:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        ys, means, variances = [], [], []
        for chunk in x.chunk(self.splits, 0):
            mean, var = self.running_mean.clone(), self.running_var.clone()
            ys.append(F.batch_norm(chunk, mean, var, self.weight, self.bias, True, self.momentum, self.eps))
            means.append(mean)
            variances.append(var)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(ys, 0)


def encoder(arch, in_channels, head, dim, splits):
    """torchvision ResNet with `in_channels` inputs and head 'none' | 'linear' | 'mlp' at fc."""
    norm = (lambda c: SplitBatchNorm(c, splits)) if splits > 1 else None
    net = getattr(torchvision.models, arch)(num_classes=dim, norm_layer=norm)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feat = net.fc.in_features
    if head == "none":
        net.fc = nn.Identity()
    elif head == "mlp":
        net.fc = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, dim))
    return net


def tensors(prefix, module):
    return {f"{prefix}{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def forward_case(args):
    torch.manual_seed(args.seed)
    net = encoder(args.arch, args.in_channels, args.head, args.dim, 1)
    with torch.no_grad():  # non-trivial BN state so that eval mode is really tested
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    out = tensors("state.", net)
    x = torch.randn(args.batch, args.in_channels, args.size, args.size)
    out["input"] = x
    net.eval()
    with torch.no_grad():
        out["eval.output"] = net(x)
    net.train()
    with torch.no_grad():
        out["train.output"] = net(x)
    out.update(tensors("train.state.", net))
    save_file(out, args.out)


class Moco(nn.Module):
    def __init__(self, args):
        super().__init__()
        head = "mlp" if args.mlp else "linear"
        self.encoder_q = encoder(args.arch, args.in_channels, head, args.dim, args.splits)
        self.encoder_k = encoder(args.arch, args.in_channels, head, args.dim, args.splits)
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data.copy_(pq.data)
            pk.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(args.dim, args.queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.m, self.t, self.splits = args.momentum, args.temperature, args.splits

    def keys(self, im_k):
        with torch.no_grad():
            if self.splits == 1:
                return F.normalize(self.encoder_k(im_k), dim=1)
            perm = torch.randperm(im_k.shape[0]).to(im_k.device)
            k = F.normalize(self.encoder_k(im_k[perm]), dim=1)
            return k[torch.argsort(perm)]

    def forward(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        k = self.keys(im_k)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q.mm(self.queue.clone().detach())
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t
        return logits, k

    @torch.no_grad()
    def after_step(self, k):
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data = pk.data * self.m + pq.data * (1.0 - self.m)
        n, size = k.shape[0], self.queue.shape[1]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=k.device) + ptr) % size
        self.queue[:, idx] = k.float().T
        self.queue_ptr[0] = (ptr + n) % size


def steps_case(args):
    dev = torch.device(args.device)
    if dev.type == "cuda":
        # The comparison needs the same kernels on both sides: no autotuning, no TF32.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    model = Moco(args).to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    out = tensors("init.", model)
    save_after = {1, args.steps}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    for i in range(1, args.steps + 1):
        im_q = torch.randn(args.batch, args.in_channels, args.size, args.size)
        im_k = im_q + 0.1 * torch.randn_like(im_q)
        out[f"im_q.{i}"], out[f"im_k.{i}"] = im_q, im_k
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * (i - 1) / (2 * args.steps)))
        out[f"lr.{i}"] = torch.tensor([lr], dtype=torch.float64)
        im_q, im_k = im_q.to(dev), im_k.to(dev)
        if args.channels_last:
            im_q = im_q.to(memory_format=torch.channels_last)
            im_k = im_k.to(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = lr
        torch.manual_seed(1000 + i)  # the Rust side seeds identically before each step
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            logits, k = model(im_q, im_k)
            loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=dev))
        loss.backward()
        opt.step()
        model.after_step(k)
        out[f"loss.{i}"] = loss.detach().float().reshape(1).cpu()
        top1 = (logits.argmax(1) == 0).float().mean() * 100
        out[f"top1.{i}"] = top1.reshape(1).cpu()
        if i in save_after:
            out.update({k: v.cpu() for k, v in tensors(f"after.{i}.", model).items()})
    save_file(out, args.out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=["forward", "steps"])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--head", default="mlp")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--queue", type=int, default=64)
    p.add_argument("--splits", type=int, default=1)
    p.add_argument("--mlp", type=int, default=1)
    p.add_argument("--momentum", type=float, default=0.999)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", default="off")
    p.add_argument("--channels-last", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (forward_case if args.case == "forward" else steps_case)(args)


if __name__ == "__main__":
    main()
