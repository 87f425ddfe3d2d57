"""Checkpoint fixtures made by PyTorch itself, and checks of Rust-written files.

    checkpoint_fixtures.py make DIR      writes the fixtures, DIR/<name>.expected.safetensors with
                                         every tensor under its flattened name, and
                                         DIR/<name>.expected.json with the non-tensor structure
    checkpoint_fixtures.py compare A B   torch.load(B, weights_only=True) equals A
    checkpoint_fixtures.py moco-load F   F loads into a PyTorch MoCo with its SGD optimiser
"""
import collections
import json
import os
import sys
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import moco_reference  # noqa: E402


def flatten(v, prefix, out):
    if isinstance(v, torch.Tensor):
        out[prefix] = v
    elif isinstance(v, dict):
        for k, x in v.items():
            flatten(x, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(v, (list, tuple)) and not isinstance(v, torch.Size):
        for i, x in enumerate(v):
            flatten(x, f"{prefix}.{i}" if prefix else str(i), out)


def structure(v):
    """JSON view of a value: tensors become {"tensor": dtype}, containers keep their kind."""
    if isinstance(v, torch.Tensor):
        return {"tensor": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
    if isinstance(v, collections.OrderedDict):
        return {"odict": [[structure(k), structure(x)] for k, x in v.items()]}
    if isinstance(v, dict):
        return {"dict": [[structure(k), structure(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return {"list" if isinstance(v, list) else "tuple": [structure(x) for x in v]}
    if isinstance(v, bool) or v is None or isinstance(v, (int, float, str)):
        return {"bool" if isinstance(v, bool) else type(v).__name__ if v is not None else "none": v}
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": list(v)}
    raise TypeError(type(v))


def expect(d, name, obj):
    flat = {}
    flatten(obj, "", flat)
    save_file({k: t.contiguous().clone() for k, t in flat.items()}, f"{d}/{name}.expected.safetensors")
    with open(f"{d}/{name}.expected.json", "w") as f:
        json.dump(structure(obj), f)


def moco_checkpoint(args, steps=2):
    torch.manual_seed(0)
    model = moco_reference.Moco(args)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        im_q = torch.randn(4, 1, 32, 32)
        logits, k = model(im_q, im_q + 0.1 * torch.randn_like(im_q))
        loss = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step(k)
    state = collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    return {"epoch": steps, "arch": args.arch, "state_dict": state, "optimizer": opt.state_dict()}, model


def moco_args(mlp=1):
    class A:
        pass

    a = A()
    a.arch, a.in_channels, a.mlp, a.dim, a.splits = "resnet50", 1, mlp, 128, 1
    a.queue, a.momentum, a.temperature = 256, 0.999, 0.2
    return a


def make(d, only=()):
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    fixtures = {}
    fixtures["torchvision_resnet50"] = (torchvision.models.resnet50().state_dict(), {})
    fixtures["chess_moco"] = (moco_checkpoint(moco_args())[0], {})
    _, single = moco_checkpoint(moco_args(mlp=0), steps=0)
    fixtures["single_fc"] = (single.encoder_q.state_dict(), {})
    base = torch.arange(24, dtype=torch.float32)
    dtypes = collections.OrderedDict(
        f32=torch.randn(3, 4), f64=torch.randn(5, dtype=torch.float64), f16=torch.randn(7).half(),
        bf16=torch.randn(2, 3).bfloat16(), i64=torch.tensor([-(2**40), 3]), i32=torch.tensor([-5, 6], dtype=torch.int32),
        u8=torch.tensor([0, 255], dtype=torch.uint8), i8=torch.tensor([-128, 127], dtype=torch.int8),
        boolean=torch.tensor([True, False, True]), scalar=torch.tensor(2.5), empty=torch.zeros(0, 3),
        view_offset=base[5:11].view(2, 3), view_t=base.view(4, 6).t(), view_col=base.view(4, 6)[:, 2], base=base,
    )
    fixtures["dtypes_views"] = (dtypes, {})
    values = {
        "int": 7, "neg": -300, "big": 2**40, "float": 0.1, "str": "CheSS ü", "true": True, "none": None,
        "list": [1, 2.5, "x"], "tuple": (1, (2, 3)), "size": torch.Size([2, 3]), "bytes": b"\x00\xffab",
        "nested": {0: {"momentum_buffer": torch.ones(2)}, 1: {}}, "groups": [{"lr": 0.03, "params": [0, 1]}],
    }
    fixtures["values"] = (values, {})
    fixtures["legacy"] = (dtypes, {"_use_new_zipfile_serialization": False})
    fixtures["legacy_moco"] = (fixtures["chess_moco"][0], {"_use_new_zipfile_serialization": False})
    fixtures["protocol4"] = (values, {"pickle_protocol": 4})
    fixtures["protocol5"] = (dict(values, state=dtypes), {"pickle_protocol": 5})
    for name, (obj, kw) in fixtures.items():
        if only and name not in only:
            continue
        torch.save(obj, f"{d}/{name}.pth", **kw)
        expect(d, name, obj)

    if only:
        return
    # Hostile and broken files.
    good = open(f"{d}/dtypes_views.pth", "rb").read()
    open(f"{d}/bad_truncated.pth", "wb").write(good[: len(good) // 2])
    flipped = bytearray(good)
    for i in range(40, 200, 7):
        flipped[i] ^= 0x5A
    open(f"{d}/bad_flipped.pth", "wb").write(bytes(flipped))
    with zipfile.ZipFile(f"{d}/bad_os_system.pth", "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")

    def one_float_tensor(name, numel, args):
        """An archive whose pickle rebuilds one tensor of a 4-float storage claiming `numel`
        elements, with `args` = pickled (offset, size, stride, requires_grad, hooks)."""
        with zipfile.ZipFile(f"{d}/{name}.pth", "w") as z:
            z.writestr(
                "archive/data.pkl",
                b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
                b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + numel + b"tQ" + args + b"tR.",
            )
            z.writestr("archive/data/0", b"\x00" * 16)

    # A storage claiming 2^30 elements (4 GiB) where 16 bytes are stored.
    one_float_tensor("bad_huge_tensor", b"J\x00\x00\x00\x40", b"K\x00J\x00\x00\x00\x40\x85K\x01\x85\x89N")
    # A view of 4 elements at offset 2 of a 4-element storage.
    one_float_tensor("bad_view", b"K\x04", b"K\x02K\x04\x85K\x01\x85\x89N")
    open(f"{d}/bad_not_torch.pth", "wb").write(b"hello, not a checkpoint\n")


def encoder_from(state, in_channels=1):
    """torchvision ResNet-50 without head, loaded strictly from a backbone state dict."""
    net = moco_reference.encoder("resnet50", in_channels, "none", 128, 1)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    return net.eval()


def extract_ref(ckpt_path, out_dir, images):
    """PNG copies of `images` and PyTorch's pooled features for them (CheSS normalisation)."""
    from PIL import Image

    ckpt = torch.load(ckpt_path, weights_only=True)
    prefix = "module.encoder_q."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}
    net = encoder_from(state)
    batch = []
    for i, src in enumerate(images):
        img = Image.open(src).convert("L")
        img.save(f"{out_dir}/{i}.png")
        x = torch.from_numpy(np.asarray(img, dtype=np.float32))
        batch.append(((x / 255 - 0.658) / 0.221)[None])
    with torch.no_grad():
        feats = net(torch.stack(batch))
    np.save(f"{out_dir}/ref.npy", feats.numpy().astype(np.float32))


def same(a, b, path="root"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        assert torch.equal(a, b), f"{path}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a.keys()) == list(b.keys()), f"{path}: keys differ"
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}.{i}")
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} vs {b!r}"


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2], sys.argv[3:])
    elif cmd == "extract-ref":
        extract_ref(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "npy-diff":
        a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32, (a.shape, b.shape, a.dtype)
        print(f"rows={a.shape[0]} dim={a.shape[1]} rel_diff={np.abs(a - b).max() / np.abs(b).max():.3e}")
    elif cmd == "torchvision-load":
        net = encoder_from(torch.load(sys.argv[2], weights_only=True), int(sys.argv[3]))
        print("loaded into torchvision resnet50")
    elif cmd == "compare":
        orig = torch.load(sys.argv[2], weights_only=False)  # our own fixture: trusted
        new = torch.load(sys.argv[3], weights_only=True)
        same(orig, new)
    elif cmd == "moco-load":
        ckpt = torch.load(sys.argv[2], weights_only=True)
        args = moco_args()
        args.arch = ckpt["arch"]
        model = moco_reference.Moco(args)
        state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        model.queue = torch.zeros_like(state["queue"])
        model.load_state_dict(state)
        opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
        opt.load_state_dict(ckpt["optimizer"])
        assert all(k.startswith("module.") for k in ckpt["state_dict"])
        note = ""
        if len(sys.argv) > 3:  # the same training state as a PyTorch-written checkpoint
            ref = torch.load(sys.argv[3], weights_only=True)
            same(ref["state_dict"], ckpt["state_dict"], "state_dict")
            same(ref["optimizer"]["state"], ckpt["optimizer"]["state"], "optimizer.state")
            same(ref["optimizer"]["param_groups"][0]["params"], ckpt["optimizer"]["param_groups"][0]["params"])
            assert ref["epoch"] == ckpt["epoch"] and ref["arch"] == ckpt["arch"]
            note = ", equal to the original"
        print(f"loaded: epoch {ckpt['epoch']}, {len(ckpt['state_dict'])} state entries, "
              f"{len(opt.state_dict()['state'])} momentum buffers{note}")
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
