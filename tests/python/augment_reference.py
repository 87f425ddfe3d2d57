"""OpenCV references for the augmentation ops, with fixed parameters.

    augment_reference.py IN.npy OUT_DIR PARAMS.json
IN.npy: float32 [H, W] in 0..255 (integer valued). Writes OUT_DIR/<op>.npy for each op.
"""
import json
import sys

import cv2
import numpy as np


def main():
    img = np.load(sys.argv[1]).astype(np.float32)
    out, p = sys.argv[2], json.load(open(sys.argv[3]))
    h, w = img.shape
    reflect = cv2.BORDER_REFLECT_101
    np.save(f"{out}/median.npy", cv2.medianBlur(img.astype(np.uint8), 3).astype(np.float32))
    for name in ("sharpen", "motion"):
        k = np.array(p[name], dtype=np.float32)
        np.save(f"{out}/{name}.npy", cv2.filter2D(img, -1, k, borderType=reflect))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), p["angle"], p["scale"])
    m[0, 2] += p["dx"] * w
    m[1, 2] += p["dy"] * h
    np.save(f"{out}/affine_matrix.npy", m.astype(np.float64))
    np.save(f"{out}/affine.npy", cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=reflect))
    k, dx, dy = p["k"], p["odx"], p["ody"]
    cam = np.array([[w, 0, w * 0.5 + dx], [0, w, h * 0.5 + dy], [0, 0, 1]], dtype=np.float32)
    dist = np.array([k, k, 0, 0, 0], dtype=np.float32)
    mx, my = cv2.initUndistortRectifyMap(cam, dist, None, cam, (w, h), cv2.CV_32FC1)
    np.save(f"{out}/optical.npy", cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=reflect))


if __name__ == "__main__":
    main()
