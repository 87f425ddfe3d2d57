"""Seed corpus of the `image_decoder` fuzz target.

    .venv/bin/python fuzz/seed_image_decoder.py fuzz/corpus/image_decoder

Real radiographs (every file of ../shared/data/dicom, or $CHESS_DATA/dicom, the truncated one
included), a few JPEGs of cxr-pneumonia-224, a truncated RLE Lossless DICOM
(tests/python/truncated_rle.py), small test files of pydicom and pydicom-data covering the
transfer syntaxes and layouts the crate decodes, a raw 12-bit JPEG stream, and small PNG (8 and
16 bit) and TIFF (8 and 16 bit) radiographs. pydicom's files are kept under 2 MB each.
"""
import glob
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MAX_BYTES = 2_000_000

TESTS = [  # pydicom/data/test_files
    "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm",
    "rtdose_rle_1frame.dcm",  # RLE Lossless
    "SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm", "SC_rgb_small_odd_jpeg.dcm",  # JPEG baseline
    "JPGExtended.dcm", "JPEG-lossy.dcm",  # 12-bit JPEG extended
    "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS
    "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "J2K_pixelrep_mismatch.dcm",  # JPEG 2000
    "image_dfl.dcm",  # deflated explicit VR little endian
    "MR_small_bigendian.dcm", "ExplVR_BigEnd.dcm", "ExplVR_BigEndNoMeta.dcm",  # big endian
    "MR_small_implicit.dcm", "MR_small_expb.dcm", "CT_small.dcm", "liver_1frame.dcm",
    "no_meta.dcm", "ExplVR_LitEndNoMeta.dcm",  # no preamble / meta group
    "MR_truncated.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_palette.dcm",
]
STORE = [  # pydicom-data's data_store/data
    "JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless
    "OBXXXX1A_rle.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm", "emri_small_big_endian.dcm",
    "SC_rgb_16bit.dcm", "color-pl.dcm", "vlut_04.dcm", "mlut_18.dcm", "693_J2KR.dcm",
]


def copy(src, out, name=None):
    name = name or os.path.basename(src)
    if os.path.getsize(src) > MAX_BYTES and "shared" not in src:
        print(f"skipped (over 2 MB): {src}")
        return
    shutil.copyfile(src, os.path.join(out, name))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    data = os.environ.get("CHESS_DATA", os.path.join(ROOT, "..", "shared", "data"))
    for f in sorted(glob.glob(os.path.join(data, "dicom", "*"))):
        copy(f, out, "shared_" + os.path.basename(f))
    jpegs = sorted(glob.glob(os.path.join(data, "cxr-pneumonia-224", "test", "*", "*.jpeg")))
    for f in jpegs[:2] + jpegs[-2:]:
        copy(f, out, "cxr_" + os.path.basename(f))

    tests = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    for name in TESTS:
        copy(os.path.join(tests, name), out, "pydicom_" + name)
    import data_store
    store = os.path.join(os.path.dirname(data_store.__file__), "data")
    for name in STORE:
        copy(os.path.join(store, name), out, "pydicom_data_" + name)

    # A truncated RLE Lossless radiograph (and its whole version), as the tools test makes it.
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "python", "truncated_rle.py"),
                    os.path.join(data, "dicom", "nih_dx_implicit_vr.dcm"), out], check=True)

    # The raw 12-bit JPEG stream of JPGExtended.dcm (the target also feeds it to
    # jpeg_extended::decode directly).
    raw = open(os.path.join(tests, "JPGExtended.dcm"), "rb").read()
    start, end = raw.index(b"\xff\xd8\xff"), raw.rindex(b"\xff\xd9") + 2
    open(os.path.join(out, "jpeg_12bit_stream.jpg"), "wb").write(raw[start:end])

    # Small PNG and TIFF radiographs, 8 and 16 bit.
    with Image.open(jpegs[0]) as im:
        grey = np.asarray(im.convert("L").resize((64, 64)))
    wide = (grey.astype(np.uint16) * 16 + 100).astype(np.uint16)  # 12 bits used of 16
    for name, arr in [("png8.png", grey), ("png16.png", wide), ("tiff8.tif", grey), ("tiff16.tif", wide)]:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG" if name.endswith(".png") else "TIFF")
        open(os.path.join(out, name), "wb").write(buf.getvalue())
    files = os.listdir(out)
    print(f"{len(files)} seed files, {sum(os.path.getsize(os.path.join(out, f)) for f in files)} bytes")


if __name__ == "__main__":
    main()
