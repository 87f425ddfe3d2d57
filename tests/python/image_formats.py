"""PNG and TIFF radiographs as archives other than PACS hold them, made from real files, with
the display values chess-rs must give them.

    image_formats.py DICOM JPEG OUT_DIR

From DICOM's stored values (uint16): raw16.png, raw16.tif, raw16_lzw.tif, raw16_deflate.tif
(Pillow), and raw16_percentile.npy / raw16_minmax.npy: the values clipped to their 0.5 and 99.5 percentiles
(nearest rank, round(p / 100 * (n - 1))) or their min and max, scaled to 0..255, float32.
From JPEG's grey values: grey8.png, grey8.tif and grey8.npy (the values, float32).
"""
import sys

import numpy as np
import pydicom
from PIL import Image


def scaled(v, lo, hi):
    return (np.clip((v - lo) / max(hi - lo, np.finfo(np.float64).tiny), 0.0, 1.0) * 255.0).astype(np.float32)


def main(dicom, jpeg, out):
    raw = pydicom.dcmread(dicom).pixel_array.astype(np.uint16)
    img = Image.fromarray(raw)  # mode I;16
    img.save(f"{out}/raw16.png")
    img.save(f"{out}/raw16.tif")
    img.save(f"{out}/raw16_lzw.tif", compression="tiff_lzw")
    img.save(f"{out}/raw16_deflate.tif", compression="tiff_adobe_deflate")
    v = raw.astype(np.float64)
    flat = np.sort(v.ravel())
    last = flat.size - 1
    rank = lambda p: min(int(np.floor(p / 100.0 * last + 0.5)), last)
    np.save(f"{out}/raw16_percentile.npy", scaled(v, flat[rank(0.5)], flat[rank(99.5)]))
    np.save(f"{out}/raw16_minmax.npy", scaled(v, flat[0], flat[-1]))

    grey = Image.open(jpeg).convert("L")
    grey.save(f"{out}/grey8.png")
    grey.save(f"{out}/grey8.tif")
    np.save(f"{out}/grey8.npy", np.asarray(grey, dtype=np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:4])
