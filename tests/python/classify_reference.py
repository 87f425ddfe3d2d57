"""PyTorch references for tests/classify_parity.rs: Grad-CAM and the downloadable state dict.

Usage:
  classify_reference.py gradcam --inputs IN.safetensors --state MODEL.pt --out OUT.safetensors
      [--classes 3] [--seed 0]
    Builds a torchvision ResNet-18 with a 1-channel conv1 and fc = Linear(512, classes) from a
    fixed seed, with BatchNorm affine parameters and running statistics away from their initial
    values, and saves its state_dict to MODEL.pt. For every pair `x{i}` (input [N, 1, H, W]) and
    `c{i}` (int64 target class per image) in IN, writes `cam{i}` (Grad-CAM [N, H, W], 0..1) and
    `softmax{i}` (eval-mode class probabilities). Prints JSON: {"cam{i}.max": [per-image maximum
    of the map before normalisation, ...]}.
  classify_reference.py load --state MODEL.pt --inputs IN.safetensors --labels L --out OUT.safetensors
    Loads MODEL.pt with torch.load(weights_only=True) into a torchvision ResNet-18 (1-channel conv1,
    fc with L outputs) with load_state_dict(strict=True), and writes `probs` = sigmoid(model(x))
    in eval mode for IN's `x`. Fails unless the file is an OrderedDict with the model's keys in
    state_dict order, dtypes and shapes. Prints JSON: {"entries": n, "type": ...,
    "num_batches_tracked": value of bn1's}.

Grad-CAM follows Selvaraju et al. (ICCV 2017) on layer4's output A, with hooks:
w_k = mean_ij d y_c / d A_k(i, j), cam = relu(sum_k w_k A_k), bilinear upsampling to the input
size (align_corners=False), divided by its per-image maximum (0 where that is 0).
"""
import argparse
import collections
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file


def resnet18(outputs):
    model = torchvision.models.resnet18(weights=None, num_classes=outputs)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def randomised_resnet18(outputs, seed):
    """Random weights from `seed`; BN affine parameters perturbed and running statistics (and
    num_batches_tracked) from a few train-mode passes over noise."""
    torch.manual_seed(seed)
    model = resnet18(outputs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
                m.momentum = None  # cumulative average over the passes below
        model.train()
        for _ in range(3):
            model(torch.randn(4, 1, 64, 64))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        model.fc.bias.copy_(0.5 * torch.randn_like(model.fc.bias))
    return model.eval()


def grad_cam(model, x, classes):
    """Returns (maps [N, H, W] in 0..1, per-image maximum before normalisation)."""
    store = {}

    def forward_hook(module, inputs, output):
        store["A"] = output
        output.register_hook(lambda grad: store.__setitem__("dA", grad))

    handle = model.layer4.register_forward_hook(forward_hook)
    try:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.gather(1, classes[:, None]).sum().backward()
    finally:
        handle.remove()
    A, dA = store["A"].detach(), store["dA"].detach()
    weights = dA.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * A).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return cam / safe, peak.flatten()


def cmd_gradcam(args):
    model = randomised_resnet18(args.classes, args.seed)
    torch.save(model.state_dict(), args.state)
    inputs = load_file(args.inputs)
    out, info = {}, {}
    i = 1
    while f"x{i}" in inputs:
        x, c = inputs[f"x{i}"].float(), inputs[f"c{i}"].long()
        cam, peak = grad_cam(model, x, c)
        with torch.no_grad():
            out[f"softmax{i}"] = model(x).softmax(dim=1).contiguous()
        out[f"cam{i}"] = cam.contiguous()
        info[f"cam{i}.max"] = peak.tolist()
        i += 1
    save_file(out, args.out)
    print(json.dumps(info))


def cmd_load(args):
    sd = torch.load(args.state, weights_only=True)
    if not isinstance(sd, collections.OrderedDict):
        raise SystemExit(f"not an OrderedDict: {type(sd)}")
    model = resnet18(args.labels)
    expected = model.state_dict()
    if list(sd.keys()) != list(expected.keys()):
        raise SystemExit(f"keys differ from torchvision's:\n{list(sd.keys())}\n{list(expected.keys())}")
    for k, t in expected.items():
        if sd[k].dtype != t.dtype or sd[k].shape != t.shape:
            raise SystemExit(f"{k}: {sd[k].dtype} {tuple(sd[k].shape)}, expected {t.dtype} {tuple(t.shape)}")
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = load_file(args.inputs)["x"].float()
    with torch.no_grad():
        probs = torch.sigmoid(model(x))
    save_file({"probs": probs.contiguous()}, args.out)
    print(json.dumps({
        "entries": len(sd),
        "type": type(sd).__name__,
        "num_batches_tracked": int(sd["bn1.num_batches_tracked"]),
    }))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gradcam")
    g.add_argument("--inputs", required=True)
    g.add_argument("--state", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--classes", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    lo = sub.add_parser("load")
    lo.add_argument("--state", required=True)
    lo.add_argument("--inputs", required=True)
    lo.add_argument("--labels", type=int, required=True)
    lo.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    {"gradcam": cmd_gradcam, "load": cmd_load}[args.cmd](args)


if __name__ == "__main__":
    main()
