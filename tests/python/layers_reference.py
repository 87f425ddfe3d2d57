"""torch.nn references for tests/layers.rs: every layer of chess::nn, forward and backward.

Usage: layers_reference.py OUT.pt --dtype float64|float32

For each case, writes `{case}.state.{key}` (the module's state_dict before the first step) and,
per step i, `{case}.step{i}.x` (input), `.g` (the gradient fed back: loss = sum(y * g)), `.y`
(output), `.grad.input`, `.grad.{parameter}` and `.state.{key}` (the state after the step).
Also `init.*`: layers built right after torch.manual_seed(7), in float32. Prints JSON:
{case: {"keys": [[key, shape], ...], "modes": ["train" | "eval", ...]}}.
"""
import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm


class Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def randomise(module):
    """Affine parameters and running statistics away from their trivial initial values."""
    with torch.no_grad():
        for name, t in module.named_parameters():
            if isinstance(module, (nn.GroupNorm, nn.InstanceNorm2d, nn.BatchNorm2d)):
                t.copy_(torch.randn_like(t) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
        for name, t in module.named_buffers():
            if name.endswith("running_mean"):
                t.copy_(torch.randn_like(t) * 0.3)
            elif name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)


def cases():
    """(name, module, input shape, modes)."""
    train3_eval = ["train", "train", "train", "eval"]
    leaky = lambda x: F.leaky_relu(x, 0.2)  # noqa: E731
    return [
        ("conv_general", nn.Conv2d(4, 6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2),
                                   dilation=(2, 1), groups=2, bias=True), [2, 4, 9, 11], ["train"]),
        ("conv_reflect", nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), padding_mode="reflect"),
         [2, 3, 8, 9], ["train"]),
        ("conv_no_bias", nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), [2, 3, 8, 8], ["train"]),
        ("conv_transpose", nn.ConvTranspose2d(4, 6, kernel_size=(3, 4), stride=(2, 3), padding=(1, 2),
                                              output_padding=(1, 2), groups=2, dilation=(1, 2)),
         [2, 4, 5, 6], ["train"]),
        ("group_norm", nn.GroupNorm(3, 6), [2, 6, 5, 7], ["train", "eval"]),
        ("group_norm_plain", nn.GroupNorm(2, 6, affine=False), [2, 6, 5, 7], ["train"]),
        ("instance_norm_affine_tracked", nn.InstanceNorm2d(5, affine=True, track_running_stats=True),
         [3, 5, 6, 4], ["train", "train", "eval"]),
        ("instance_norm_plain", nn.InstanceNorm2d(5), [3, 5, 6, 4], ["train", "eval"]),
        ("batch_norm_param_free", nn.BatchNorm2d(5, affine=False), [4, 5, 3, 6], ["train", "train", "eval"]),
        ("sn_conv", spectral_norm(nn.Conv2d(3, 8, 4, stride=2, padding=2)), [2, 3, 10, 10], train3_eval),
        ("sn_conv_transpose", spectral_norm(nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1)),
         [2, 6, 5, 5], train3_eval),
        ("sn_linear", spectral_norm(nn.Linear(7, 5)), [3, 7], train3_eval),
        ("up_nearest_x2", Fn(lambda x: F.interpolate(x, scale_factor=2, mode="nearest")), [2, 3, 5, 7], ["train"]),
        ("up_nearest_s1_5", Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest")),
         [2, 3, 5, 7], ["train"]),
        ("up_nearest_size", Fn(lambda x: F.interpolate(x, size=(8, 11), mode="nearest")), [2, 3, 5, 7], ["train"]),
        ("up_bilinear_x2", Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
         [2, 3, 5, 7], ["train"]),
        ("up_bilinear_s0_5_1_5",
         Fn(lambda x: F.interpolate(x, scale_factor=(0.5, 1.5), mode="bilinear", align_corners=False)),
         [2, 3, 5, 7], ["train"]),
        ("up_bilinear_corners_size",
         Fn(lambda x: F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=True)), [2, 3, 5, 7], ["train"]),
        ("leaky_relu", Fn(leaky), [2, 3, 4, 5], ["train"]),
    ]


def run_case(name, module, shape, modes, dtype, out):
    module = module.to(dtype)
    randomise(module)
    for k, t in module.state_dict().items():
        out[f"{name}.state.{k}"] = t.detach().clone()
    keys = [[k, list(t.shape)] for k, t in module.state_dict().items()]
    for i, mode in enumerate(modes):
        module.train(mode == "train")
        x = torch.randn(shape, dtype=dtype)
        if name == "leaky_relu":
            x.view(-1)[::4] = 0.0  # the gradient at exactly 0
        x.requires_grad_(True)
        y = module(x)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        s = f"{name}.step{i}"
        out[f"{s}.x"] = x.detach().clone()
        out[f"{s}.g"] = g
        out[f"{s}.y"] = y.detach().clone()
        out[f"{s}.grad.input"] = x.grad.clone()
        for k, p in module.named_parameters():
            out[f"{s}.grad.{k}"] = p.grad.clone()
            p.grad = None
        for k, t in module.state_dict().items():
            out[f"{s}.state.{k}"] = t.detach().clone()
    return {"keys": keys, "modes": modes}


def init_references(out):
    """Layers drawn right after manual_seed(7): our init must draw the same numbers."""
    for name, make in [
        ("conv", lambda: nn.Conv2d(4, 6, (3, 5), groups=2)),
        ("conv_transpose", lambda: nn.ConvTranspose2d(4, 6, (3, 4), groups=2)),
        ("sn_conv", lambda: spectral_norm(nn.Conv2d(3, 8, 4))),
    ]:
        torch.manual_seed(7)
        m = make()
        for k, t in m.state_dict().items():
            out[f"init.{name}.{k}"] = t.detach().clone()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    out = {}
    init_references(out)
    torch.manual_seed(0)
    meta = {}
    for name, module, shape, modes in cases():
        meta[name] = run_case(name, module, shape, modes, dtype, out)
    torch.save(out, args.out)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
