"""PyTorch references for tests/losses.rs: pytorch-msssim's SSIM and MS-SSIM losses, and a
perceptual loss on a torchvision ResNet-18, with their gradients wrt the output image.

Usage: losses_reference.py ssim|perceptual DATA_DIR OUT_DIR

Real radiographs (two JPEGs of cxr-pneumonia-224/test) are the targets y; the outputs x are the
same images blurred and noised (requires_grad). Writes OUT_DIR/reference.pt, a dict of float32
tensors: `{case}.x`, `{case}.y`, `{case}.{loss}` (0-d) and `{case}.{loss}.grad` (d loss / d x).
`perceptual` also writes the ResNet-18 state dicts it used (random weights, non-trivial
BatchNorm statistics): OUT_DIR/resnet18_1ch.pt (conv1 on one channel) and resnet18_3ch.pt.
Prints the cases as JSON.
"""
import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from pytorch_msssim import ms_ssim, ssim

IMAGES = ["NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person100_bacteria_475.jpeg"]
SPADE_WEIGHTS = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]


def radiographs(data_dir, height, width):
    """[2, 1, height, width] float32 grey values in 0..255."""
    out = []
    for name in IMAGES:
        img = Image.open(os.path.join(data_dir, "cxr-pneumonia-224/test", name)).convert("L")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32).copy()))
    return torch.stack(out).unsqueeze(1)


def degraded(y, seed):
    """A blurred, noisy version of y, clamped to 0..255."""
    g = torch.Generator().manual_seed(seed)
    x = TF.gaussian_blur(y, kernel_size=7, sigma=2.0)
    return (x + 6.0 * torch.randn(x.shape, generator=g)).clamp(0, 255)


def ssim_cases(data_dir, out):
    # (name, height, width, channels, data_range, with MS-SSIM)
    cases = [
        ("square255", 224, 224, 1, 255.0, True),
        ("square1", 224, 224, 1, 1.0, True),
        ("rect255", 171, 203, 1, 255.0, True),
        ("rect1", 171, 203, 1, 1.0, True),
        ("two_channels", 165, 170, 2, 255.0, True),
        ("small", 40, 9, 1, 255.0, False),  # W below the window: pytorch-msssim skips that blur
    ]
    meta = []
    for i, (name, h, w, c, data_range, with_ms) in enumerate(cases):
        y = radiographs(data_dir, h, w)
        if c == 2:
            y = torch.cat([y, 255.0 - y], 1)
        x = degraded(y, seed=i)
        if data_range == 1.0:
            x, y = x / 255.0, y / 255.0
        out[f"{name}.x"], out[f"{name}.y"] = x, y
        losses = {"ssim": lambda a, b: 1 - ssim(a, b, data_range=data_range, size_average=True)}
        if with_ms:
            losses["ms_ssim"] = lambda a, b: 1 - ms_ssim(a, b, data_range=data_range, size_average=True)
        for loss_name, f in losses.items():
            xg = x.clone().requires_grad_(True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = f(xg, y)
            loss.backward()
            out[f"{name}.{loss_name}"] = loss.detach()
            out[f"{name}.{loss_name}.grad"] = xg.grad
        meta.append({"name": name, "data_range": data_range, "ms_ssim": with_ms})
    return meta


def randomise_bn(model):
    """BatchNorm affine parameters and running statistics away from their initial values."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))


def stages(model, x):
    """relu(bn1(conv1(x))) before the max-pool, then layer1..layer4."""
    stem = model.relu(model.bn1(model.conv1(x)))
    h = model.maxpool(stem)
    outs = [stem]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        h = layer(h)
        outs.append(h)
    return outs


def normalise(kind, x):
    if kind == "chess":
        return (x / 255 - 0.658) / 0.221
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x.repeat(1, 3, 1, 1) / 255 - mean) / std


def perceptual_loss(model, kind, dist, x, y):
    fx = stages(model, normalise(kind, x))
    with torch.no_grad():
        fy = stages(model, normalise(kind, y))
    d = F.l1_loss if dist == "l1" else F.mse_loss
    loss = 0
    for w, a, b in zip(SPADE_WEIGHTS, fx, fy):
        loss = loss + w * d(a, b.detach())
    return loss


def perceptual_cases(data_dir, out_dir, out):
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18()
    grey = torchvision.models.resnet18()
    grey.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(grey.conv1.weight, mode="fan_out", nonlinearity="relu")
    for m in (rgb, grey):
        randomise_bn(m)
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    torch.save(grey.state_dict(), os.path.join(out_dir, "resnet18_1ch.pt"))
    torch.save(rgb.state_dict(), os.path.join(out_dir, "resnet18_3ch.pt"))
    # The 3-channel weights loaded for CheSS normalisation: conv1 summed over RGB, as the Rust
    # weight mapping adapts it.
    rgb_as_grey = torchvision.models.resnet18()
    rgb_as_grey.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    sd = rgb.state_dict()
    sd["conv1.weight"] = sd["conv1.weight"].sum(1, keepdim=True)
    rgb_as_grey.load_state_dict(sd)
    rgb_as_grey.eval().requires_grad_(False)

    y = radiographs(data_dir, 96, 112)
    x = degraded(y, seed=11)
    out["perceptual.x"], out["perceptual.y"] = x, y
    models = {"resnet18_1ch.pt": grey, "resnet18_3ch.pt": rgb}
    cases = [
        ("chess_l1", "resnet18_1ch.pt", "chess", "l1", grey),
        ("chess_mse", "resnet18_1ch.pt", "chess", "mse", grey),
        ("imagenet_l1", "resnet18_3ch.pt", "imagenet", "l1", rgb),
        ("imagenet_mse", "resnet18_3ch.pt", "imagenet", "mse", rgb),
        ("chess_from_rgb_l1", "resnet18_3ch.pt", "chess", "l1", rgb_as_grey),
    ]
    assert set(models) == {c[1] for c in cases}
    meta = []
    for name, weights, kind, dist, model in cases:
        xg = x.clone().requires_grad_(True)
        loss = perceptual_loss(model, kind, dist, xg, y)
        loss.backward()
        assert all(p.grad is None for p in model.parameters())
        out[f"{name}.perceptual"] = loss.detach()
        out[f"{name}.perceptual.grad"] = xg.grad
        meta.append({"name": name, "weights": weights, "normalisation": kind, "distance": dist})
    return meta


def main():
    mode, data_dir, out_dir = sys.argv[1:4]
    torch.set_num_threads(2)
    out = {}
    if mode == "ssim":
        meta = ssim_cases(data_dir, out)
    elif mode == "perceptual":
        meta = perceptual_cases(data_dir, out_dir, out)
    else:
        raise SystemExit(f"unknown mode {mode}")
    torch.save({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, "reference.pt"))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
