"""A truncated RLE Lossless DICOM, as a transfer cut short leaves it, from a real radiograph.

    python truncated_rle.py SRC_DICOM OUT_DIR

writes OUT_DIR/rle_whole.dcm (SRC re-encoded as RLE Lossless with pydicom's encoder) and
OUT_DIR/rle_truncated.dcm (the same bytes cut 60 % into the pixel data's one fragment). dicom-rs
reads the short fragment without complaint and its RLE decoder then indexes past the end of the
decoded segment: a panic, which the crate's decoder guard turns into an error.
"""
import os
import sys

import pydicom
from pydicom.uid import RLELossless


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless)
    whole = os.path.join(out, "rle_whole.dcm")
    ds.save_as(whole, enforce_file_format=True)
    data = open(whole, "rb").read()
    # The pixel data element (7FE0,0010), explicit VR little endian: the fragment follows the
    # basic offset table item; cut inside it.
    at = data.rindex(b"\xe0\x7f\x10\x00")
    cut = at + (len(data) - at) * 6 // 10
    with open(os.path.join(out, "rle_truncated.dcm"), "wb") as f:
        f.write(data[:cut])
    print(f"{whole}: {len(data)} bytes, truncated to {cut}")


if __name__ == "__main__":
    main()
