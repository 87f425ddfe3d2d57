"""The bone-suppression U-Net step in PyTorch, the baseline of `bone_suppression train`'s step:
segmentation_models_pytorch's Unet (ResNet-50 encoder, 1 channel in and out) on CheSS-normalised
input with a sigmoid output, L1 plus a perceptual loss (L1 between the stem and layer1..4
features of a frozen 1-channel ResNet-50, weights 1/32 .. 1, on 0..255 images), Adam lr 1e-3;
optional bf16 autocast (losses in fp32). Random inputs and targets (the same every step), for
timing the step alone. Prints one JSON line.

    train_bone.py --batch-size 4 --image-size 256 --steps 8
"""
import os
import sys

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from step_timing import memory_format, parser, setup, time_steps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/python"))
from losses_reference import SPADE_WEIGHTS as WEIGHTS, stages  # noqa: E402


def main():
    a = parser(__doc__, 4, 256).parse_args()
    device, dtype = setup(a)
    net = smp.Unet("resnet50", encoder_weights=None, in_channels=1, classes=1).to(device).train()
    res = torchvision.models.resnet50()
    res.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    res = res.to(device).eval().requires_grad_(False)
    mf = memory_format(a)
    net, res = net.to(memory_format=mf), res.to(memory_format=mf)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n, s = a.batch_size, a.image_size
    x = (torch.rand(n, 1, s, s, device=device) * 255).round().contiguous(memory_format=mf)
    t = torch.rand(n, 1, s, s, device=device).contiguous(memory_format=mf)
    norm = lambda v: (v / 255 - 0.658) / 0.221  # noqa: E731

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = torch.sigmoid(net(norm(x)))
        out = out.float()
        fx = stages(res, norm(out * 255))
        with torch.no_grad():
            fy = stages(res, norm(t * 255))
        loss = F.l1_loss(out, t) + sum(w * F.l1_loss(u, v) for w, u, v in zip(WEIGHTS, fx, fy))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    time_steps(a, step)


if __name__ == "__main__":
    main()
