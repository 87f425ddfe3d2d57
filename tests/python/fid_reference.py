"""pytorch-fid 0.3.0 and torch-fidelity references for src/metrics/fid.rs and
src/model/inception.rs (tests/fid.rs), as JSON on stdout and .npy files in OUT.

usage: fid_reference.py SETUP.json

SETUP (written by the Rust test) holds:
- "out": the folder for the .npy files; "torch_home": the TORCH_HOME of this process.
- "fit": radiographs (JPEG paths) the BatchNorm statistics are fitted on.
- "a", "b": two folders of 8-bit grey PNGs of one size (the Rust test wrote them).
- "kid": {name: [[indices into set 1, indices into set 2], ...]}: the subsets the Rust side drew
  with its own generator, for the features "random" (written here) and "inception" (the 64-d
  activations of folders a and b).

The published FID weights cannot be downloaded here, so the network is pytorch-fid's own
`fid_inception_v3()` with random weights from a fixed seed (its loading skipped while it is built)
whose BatchNorm running statistics are then fitted on real radiographs (train mode, momentum None:
cumulative averages) -- with default statistics (mean 0, variance 1) the features of a random
network collapse and FID comes out near 1e-14, which tests nothing. The state dict is saved as
$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth, where pytorch-fid's
`load_state_dict_from_url` finds it, and everything after that goes through pytorch-fid unchanged:
`InceptionV3`, `get_activations`, `calculate_fid_given_paths`, `calculate_frechet_distance`.

Written to OUT: act{2048,768,192,64}.npy (activations of the first two images of a and of b,
float64 as pytorch-fid's get_activations returns them), acts_a.npy and acts_b.npy (the 64-d
activations calculate_fid_given_paths computed), frechet_<case>_{mu1,sigma1,mu2,sigma2}.npy (and
_x1, _x2 samples where the statistics come from samples), kid_random_{1,2}.npy.
"""
import json
import os
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np


def build_network(seed):
    """pytorch-fid's fid_inception_v3() with its random initial weights (the download and the
    load_state_dict of the published weights skipped), BatchNorm affine parameters randomised."""
    import torch
    import torchvision
    import pytorch_fid.inception as pi

    torch.manual_seed(seed)
    with mock.patch.object(pi, "load_state_dict_from_url", lambda *a, **k: None), mock.patch.object(
        torchvision.models.Inception3, "load_state_dict", lambda self, *a, **k: None
    ):
        net = pi.fid_inception_v3()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.5)
    return net


def load_rgb(paths):
    """pytorch-fid's ImagePathDataset: PIL convert('RGB'), ToTensor()."""
    import torch
    import torchvision.transforms as TF
    from PIL import Image

    return torch.stack([TF.ToTensor()(Image.open(p).convert("RGB")) for p in paths])


def fit_batchnorm(net, paths, batch):
    """Running statistics = cumulative averages over `paths`, on the input pytorch-fid feeds the
    network (bilinear resize to 299, 2x - 1)."""
    import torch
    import torch.nn.functional as F

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = load_rgb(paths[i : i + batch])
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            net(2 * x - 1)
    net.eval()


# torch-fidelity's KID, written out by hand from torch_fidelity/metric_kid.py
# (https://github.com/toshas/torch-fidelity/blob/master/torch_fidelity/metric_kid.py: mmd2 with
# mmd_est='unbiased', polynomial_kernel, kid_features_to_metric), with given subsets instead of
# rng.choice, in float64.
def polynomial_kernel(X, Y, degree=3, gamma=None, coef0=1):
    if gamma is None:
        gamma = 1.0 / X.shape[1]
    return (np.matmul(X, Y.T) * gamma + coef0) ** degree


def mmd2_unbiased(K_XX, K_XY, K_YY):
    m = K_XX.shape[0]
    diag_X = np.diagonal(K_XX)
    diag_Y = np.diagonal(K_YY)
    Kt_XX_sums = K_XX.sum(axis=1) - diag_X
    Kt_YY_sums = K_YY.sum(axis=1) - diag_Y
    K_XY_sums_0 = K_XY.sum(axis=0)
    Kt_XX_sum = Kt_XX_sums.sum()
    Kt_YY_sum = Kt_YY_sums.sum()
    K_XY_sum = K_XY_sums_0.sum()
    mmd2 = (Kt_XX_sum + Kt_YY_sum) / (m * (m - 1))
    mmd2 -= 2 * K_XY_sum / (m * m)
    return mmd2


def kid(features_1, features_2, subsets):
    mmds = np.zeros(len(subsets))
    for i, (s1, s2) in enumerate(subsets):
        f1 = features_1[np.asarray(s1)]
        f2 = features_2[np.asarray(s2)]
        k_11 = polynomial_kernel(f1, f1)
        k_22 = polynomial_kernel(f2, f2)
        k_12 = polynomial_kernel(f1, f2)
        mmds[i] = mmd2_unbiased(k_11, k_12, k_22)
    return {"mean": float(np.mean(mmds)), "std": float(np.std(mmds)), "per_subset": mmds.tolist()}


def frechet_cases(out, calculate_frechet_distance):
    """Statistics with their pytorch-fid distance: full rank, rank-deficient (from few samples and
    built analytically), with zero-variance features, and identical."""
    rng = np.random.default_rng(1234)
    results = {}

    def save(name, mu1, s1, mu2, s2, samples=None):
        for k, v in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
            np.save(out / f"frechet_{name}_{k}.npy", np.ascontiguousarray(v, dtype=np.float64))
        if samples is not None:
            np.save(out / f"frechet_{name}_x1.npy", samples[0])
            np.save(out / f"frechet_{name}_x2.npy", samples[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fid = float(calculate_frechet_distance(mu1, s1, mu2, s2))
        results[name] = {"d": int(len(mu1)), "fid": fid, "samples": samples is not None,
                         "trace_scale": float(np.trace(s1) + np.trace(s2))}

    def from_samples(name, x1, x2):
        save(name, x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False), (x1, x2))

    d = 16
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x1 = rng.normal(size=(200, d)) @ mix
    x2 = 1.5 * rng.normal(size=(200, d)) @ mix.T + 0.3
    from_samples("full_rank", x1, x2)
    save("identical", x1.mean(0), np.cov(x1, rowvar=False), x1.mean(0), np.cov(x1, rowvar=False))

    d = 32
    from_samples("few_samples", rng.normal(size=(10, d)) * 2.0, rng.gamma(2.0, size=(10, d)))

    b1 = rng.normal(size=(d, 5))
    b2 = rng.normal(size=(d, 7)) * 0.5
    save("analytic_rank", rng.normal(size=d), b1 @ b1.T, rng.normal(size=d), b2 @ b2.T)
    save("analytic_identical", np.zeros(d), b1 @ b1.T, np.zeros(d), b1 @ b1.T)

    d = 24
    x1 = np.maximum(rng.normal(size=(100, d)) @ rng.normal(size=(d, d)), 0.0)
    x2 = np.maximum(rng.normal(size=(100, d)) @ rng.normal(size=(d, d)) + 0.5, 0.0)
    x1[:, 3] = 0.0  # dead ReLU channels: zero variance
    x2[:, 3] = 0.0
    x2[:, 7] = 1.25
    from_samples("zero_variance", x1, x2)
    return results


def main():
    # pytorch-fid prints (its singular-product message, batch-size warnings): keep stdout for JSON.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        results = run()
    finally:
        sys.stdout = real_stdout
    print(json.dumps(results))


def run():
    with open(sys.argv[1]) as f:
        setup = json.load(f)
    out = Path(setup["out"])
    os.environ["TORCH_HOME"] = setup["torch_home"]

    import torch
    from pytorch_fid import fid_score
    from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

    results = {}
    results["frechet"] = frechet_cases(out, fid_score.calculate_frechet_distance)

    rng = np.random.default_rng(99)
    f1 = rng.normal(size=(60, 32))
    f2 = rng.normal(size=(50, 32)) * 1.2 + 0.1
    np.save(out / "kid_random_1.npy", f1)
    np.save(out / "kid_random_2.npy", f2)
    results["kid"] = {"random": kid(f1, f2, setup["kid"]["random"])}

    net = build_network(seed=17)
    fit_batchnorm(net, setup["fit"], batch=6)
    checkpoints = Path(setup["torch_home"]) / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    weights = checkpoints / os.path.basename(FID_WEIGHTS_URL)
    torch.save(net.state_dict(), weights)
    results["weights"] = str(weights)

    files_a = sorted(Path(setup["a"]).glob("*.png"))
    files_b = sorted(Path(setup["b"]).glob("*.png"))
    four = files_a[:2] + files_b[:2]
    results["four"] = [str(p) for p in four]
    for dims in (2048, 768, 192, 64):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        acts = fid_score.get_activations(four, model, batch_size=4, dims=dims, device="cpu", num_workers=0)
        np.save(out / f"act{dims}.npy", acts)

    captured = []
    get_activations = fid_score.get_activations

    def capture(*args, **kwargs):
        acts = get_activations(*args, **kwargs)
        captured.append(acts)
        return acts

    with mock.patch.object(fid_score, "get_activations", capture):
        fid = fid_score.calculate_fid_given_paths(
            [setup["a"], setup["b"]], batch_size=20, device="cpu", dims=64, num_workers=0
        )
    assert len(captured) == 2
    np.save(out / "acts_a.npy", captured[0])
    np.save(out / "acts_b.npy", captured[1])
    results["fid64"] = float(fid)
    results["kid"]["inception"] = kid(captured[0], captured[1], setup["kid"]["inception"])
    results["fid_chess"], results["chess_weights"] = chess_fid(out, files_a, files_b, fid_score)
    return results


def chess_fid(out, files_a, files_b, fid_score):
    """The FID of `nodule_gan fid --features chess`: globally pooled features of a 1-channel
    torchvision ResNet-18 (random weights, BatchNorm statistics randomised) on CheSS-normalised
    grey images, then pytorch-fid's statistics and `calculate_frechet_distance`."""
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(5)
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    path = out / "chess_resnet18.pt"
    torch.save(net.state_dict(), path)
    net.fc = torch.nn.Identity()
    net.eval()

    def features(files):
        x = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in files])
        x = (torch.from_numpy(x).unsqueeze(1) / 255 - 0.658) / 0.221
        with torch.no_grad():
            return net(x).double().numpy()

    fa, fb = features(files_a), features(files_b)
    stats = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in (fa, fb)]
    fid = fid_score.calculate_frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1])
    return float(fid), str(path)


main()
