"""References for tests/unet.rs: segmentation_models_pytorch's U-Net and the ResNet-BS baseline.

Usage:
  unet_reference.py unet DIR --arch resnet18 --height 64 --width 64 [--dtype float32|float64]
                    [--odd-height 72 --odd-width 80] [--moco]
      Builds smp.Unet(arch, encoder_weights=None, in_channels=1, classes=1), randomises its
      BatchNorms, casts it to the dtype, and writes to DIR:
        state.pt  the model's state_dict(), exactly as torch.save(model.state_dict()) writes it
        moco.pt   (with --moco) a MoCo-style checkpoint whose `module.encoder_q.*` is the U-Net's encoder
                  (plus an MLP fc, a key encoder and a queue that a loader must skip)
        steps.pt  per step i: `step{i}.x`, `.g` (loss = sum(y * g)), `.y`, `.grad.input`,
                  `.grad.{parameter}` for the parameters of UNET_GRADS that got a gradient,
                  `.state.{buffer}` after the step (parameters never change: no optimiser)
      Steps: train, train (at the odd size if given), eval, then train with the encoder frozen
      (smp's freeze_encoder()). Prints JSON {"keys": [[key, shape], ...],
      "steps": [{"mode": ..., "frozen": ...}, ...], "grads": [parameter, ...]}.
  unet_reference.py check-unet STATE.pt DIR --prefix step3.state. --arch resnet18
      Loads STATE.pt (written by Rust) into a fresh smp.Unet with load_state_dict(strict=True)
      and prints JSON {"loaded", "max_abs", "keys"}: the largest |difference| between the loaded
      state and the reference's (buffers from DIR/steps.pt under the prefix, parameters from
      DIR/state.pt).
  unet_reference.py resnet-bs DIR --blocks 3 --channels 64 --height 32 --width 40
      As `unet` for ResNetBS below (two steps, train and eval, the same without BatchNorm;
      gradients of every parameter; no moco.pt).
  unet_reference.py check-resnet-bs STATE.pt DIR --blocks 3 --channels 64
"""
import argparse
import json
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, channels, scaling):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.scaling = scaling

    def forward(self, x):
        return x + self.scaling * self.conv2(F.relu(self.conv1(x)))


class ResNetBS(nn.Module):
    """Rajaraman et al. 2021's ResNet-BS, as chess::model::ResNetBs names it."""

    def __init__(self, in_channels=1, out_channels=1, channels=64, blocks=16, scaling=0.1):
        super().__init__()
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, scaling) for _ in range(blocks)])
        self.body_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        return torch.sigmoid(self.tail(h + self.body_conv(self.body(h))))


def make_unet(arch):
    # Imported here: seconds of imports that the ResNet-BS commands do not need.
    warnings.filterwarnings("ignore")
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=arch, encoder_weights=None, in_channels=1, classes=1)


def randomise(model):
    """BatchNorm affine parameters and running statistics away from 1, 0, 0, 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand_like(m.weight) * 0.5 + 0.75)
                m.bias.copy_(torch.randn_like(m.bias) * 0.1)
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) * 0.5 + 0.75)
                m.num_batches_tracked.fill_(3)


# Parameters whose gradients the U-Net reference records (all of them would be 50 to 130 MB a
# step): the stem, a block conv and a downsample of the encoder, small decoder convs and BNs,
# the head.
UNET_GRADS = [
    "encoder.conv1.weight",
    "encoder.bn1.weight",
    "encoder.layer1.0.conv1.weight",
    "encoder.layer2.0.downsample.0.weight",
    "encoder.layer4.0.downsample.1.bias",
    "decoder.blocks.0.conv1.1.weight",
    "decoder.blocks.1.conv2.0.weight",
    "decoder.blocks.4.conv1.0.weight",
    "decoder.blocks.4.conv2.1.bias",
    "segmentation_head.0.weight",
    "segmentation_head.0.bias",
]


def run_steps(model, batch, steps, grad_names, out, dtype):
    """Forward and backward per step; the gradient of sum(y * g) w.r.t. the input and the
    parameters in grad_names (left out where a parameter gets none: frozen); every buffer after."""
    params = dict(model.named_parameters())
    for i, (mode, frozen, (height, width)) in enumerate(steps):
        if frozen:
            model.train()
            model.freeze_encoder()
        else:
            model.train(mode == "train")
        x = torch.randn(batch, 1, height, width, dtype=dtype).requires_grad_(True)
        y = model(x)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        s = f"step{i}"
        out[f"{s}.x"] = x.detach().clone()
        out[f"{s}.g"] = g
        out[f"{s}.y"] = y.detach().clone()
        out[f"{s}.grad.input"] = x.grad.clone()
        for k in grad_names:
            if params[k].grad is not None:
                out[f"{s}.grad.{k}"] = params[k].grad.clone()
        model.zero_grad(set_to_none=True)
        for k, t in model.named_buffers():
            out[f"{s}.state.{k}"] = t.detach().clone()


def write_reference(model, batch, steps, grad_names, directory, dtype, moco=False):
    os.makedirs(directory, exist_ok=True)
    model.to(dtype)
    sd = {k: t.clone() for k, t in model.state_dict().items()}
    torch.save(model.state_dict(), os.path.join(directory, "state.pt"))
    if moco:
        enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        feat = [v for k, v in enc.items() if k.endswith("running_mean")][-1].shape[0]
        fc = {"fc.0.weight": torch.randn(feat, feat), "fc.0.bias": torch.randn(feat),
              "fc.2.weight": torch.randn(128, feat), "fc.2.bias": torch.randn(128)}
        state = {f"module.encoder_q.{k}": v for k, v in {**enc, **fc}.items()}
        # A key encoder that differs (two entries suffice to be found by mistake), and the queue.
        for k in ["conv1.weight", "bn1.weight"]:
            state[f"module.encoder_k.{k}"] = enc[k] + 1.0
        state["module.queue"] = torch.randn(128, 16)
        state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        torch.save({"epoch": 3, "arch": "resnet", "state_dict": state}, os.path.join(directory, "moco.pt"))
    out = {}
    run_steps(model, batch, steps, grad_names, out, dtype)
    torch.save(out, os.path.join(directory, "steps.pt"))
    print(json.dumps({
        "keys": [[k, list(t.shape)] for k, t in sd.items()],
        "steps": [{"mode": m, "frozen": f} for m, f, _ in steps],
        "grads": grad_names,
    }))


def check(model, state_path, directory, prefix):
    """strict=True load of the Rust file, then every tensor against the reference's: buffers as
    steps.pt holds them under `prefix`, parameters as state.pt (no step changes them)."""
    rust = torch.load(state_path, weights_only=True)
    model.to(next(t for t in rust.values() if t.is_floating_point()).dtype)
    model.load_state_dict(rust, strict=True)
    init = torch.load(os.path.join(directory, "state.pt"), weights_only=True)
    steps = torch.load(os.path.join(directory, "steps.pt"), weights_only=True)
    diffs = {}
    for k, t in model.state_dict().items():
        r = steps.get(prefix + k, init[k])
        assert t.dtype == r.dtype, f"{k}: dtype {t.dtype} vs {r.dtype}"
        diffs[k] = (t.double() - r.double()).abs().max().item() if t.numel() else 0.0
    print(json.dumps({"loaded": len(rust), "max_abs": max(diffs.values()), "keys": list(rust.keys())}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["unet", "check-unet", "resnet-bs", "check-resnet-bs"])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--moco", action="store_true", help="also write moco.pt")
    ap.add_argument("--odd-height", type=int, default=0, help="the input size of step 1, if given")
    ap.add_argument("--odd-width", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--scaling", type=float, default=0.1)
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small models; more threads only contend on a busy machine
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    size = (args.height, args.width)
    if args.command == "unet":
        model = make_unet(args.arch)
        randomise(model)
        steps = [("train", False, size), ("train", False, size), ("eval", False, size), ("train", True, size)]
        if args.odd_height:
            # A size not divisible by 32: smp 0.6.0 upsamples to each skip's exact size.
            steps[1] = ("train", False, (args.odd_height, args.odd_width))
        write_reference(model, args.batch, steps, UNET_GRADS, args.paths[0], dtype, moco=args.moco)
    elif args.command == "check-unet":
        check(make_unet(args.arch), *args.paths, args.prefix)
    elif args.command == "resnet-bs":
        model = ResNetBS(channels=args.channels, blocks=args.blocks, scaling=args.scaling)
        steps = [("train", False, size), ("eval", False, size)]
        grads = [k for k, _ in model.named_parameters()]
        write_reference(model, args.batch, steps, grads, args.paths[0], dtype)
    else:
        model = ResNetBS(channels=args.channels, blocks=args.blocks, scaling=args.scaling)
        check(model, *args.paths, args.prefix)


if __name__ == "__main__":
    main()
