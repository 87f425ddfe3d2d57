"""scikit-image references for src/metrics/image_quality.rs, on the image pairs the Rust test
wrote, as JSON on stdout.

usage: image_quality_reference.py CASES.json

CASES is a list of {"target": T.npy, "pred": P.npy, "data_range": R} (float64 arrays of shape
(height, width)). Per case the output has:
- "psnr": peak_signal_noise_ratio(target, pred, data_range=R); null when infinite.
- "rmse": sqrt(mean_squared_error(target, pred)), with "rmse_numpy" = sqrt(mean((t - p) ** 2)).
- "ssim_uniform": structural_similarity(target, pred, data_range=R) (scikit-image's defaults).
- "ssim_gaussian": the same with gaussian_weights=True, sigma=1.5, use_sample_covariance=False.
An SSIM scikit-image refuses (image smaller than the window) is {"error": message}.
"""
import json
import sys
import warnings

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity


def ssim_or_error(target, pred, **kwargs):
    try:
        return float(structural_similarity(target, pred, **kwargs))
    except ValueError as e:
        return {"error": str(e)}


def case(c):
    target = np.load(c["target"])
    pred = np.load(c["pred"])
    assert target.dtype == np.float64 and pred.dtype == np.float64, (target.dtype, pred.dtype)
    r = float(c["data_range"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divide by zero for identical images
        psnr = float(peak_signal_noise_ratio(target, pred, data_range=r))
    return {
        "psnr": psnr if np.isfinite(psnr) else None,
        "rmse": float(np.sqrt(mean_squared_error(target, pred))),
        "rmse_numpy": float(np.sqrt(np.mean((target - pred) ** 2))),
        "ssim_uniform": ssim_or_error(target, pred, data_range=r),
        "ssim_gaussian": ssim_or_error(
            target, pred, data_range=r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        ),
    }


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([case(c) for c in cases]))


main()
