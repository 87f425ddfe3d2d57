"""DICOM decoding as pydicom does it, for benches/dicom_decode.rs: the file set, and the
baseline (pydicom with its pixel plugins in a 2-worker torch DataLoader).

    dicom_decode.py prepare SHARED_DICOM_DIR OUT_DIR
        Writes OUT_DIR/<syntax>/<image>.dcm and OUT_DIR/manifest.json: the real radiographs of
        SHARED_DICOM_DIR (the truncated `broken_*` file left out) and the CR images of
        pydicom-data, each in every benchmarked transfer syntax: the real file where one exists
        in that syntax, else transcoded from its pixel data with pydicom's encoders (RLE,
        JPEG-LS through pyjpegls/CharLS, JPEG 2000 through pylibjpeg-openjpeg) or imagecodecs
        (libjpeg-turbo: JPEG baseline, 12-bit extended, lossless SV1). Reused while its stamp
        matches.
    dicom_decode.py run --workers 2 --image-size 512 --batch-size 5 SYNTAX=LIST...
        For each syntax, the files of LIST (one a line) through dcmread + pixel_array + rescale,
        VOI LUT or window (else the 0.5-99.5 percentile clip), MONOCHROME1 inversion, 0..255,
        bilinear resize (OpenCV INTER_LINEAR, as the original recipe) in a DataLoader; prints
        {"<syntax>": images/s, ...} as JSON.
"""
import argparse
import copy
import json
import os
import re
import sys
import time

import numpy as np
import pydicom
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
                         JPEGLSLossless, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         RLELossless)

# Bump when the file set changes: `prepare` rebuilds then.
STAMP = "dicom_decode files v2"

# (key, transfer syntax, group): "own" is decoded by our Rust code (dicom-rs's native
# decoders, jpeg-decoder, src/data/jpeg_extended.rs); "codec" by the same C library on both
# sides (OpenJPEG, CharLS).
SYNTAXES = [
    ("explicit_vr_le", ExplicitVRLittleEndian, "own"),
    ("deflate", DeflatedExplicitVRLittleEndian, "own"),
    ("rle_lossless", RLELossless, "own"),
    ("jpeg_baseline_8bit", JPEGBaseline8Bit, "own"),
    ("jpeg_extended_12bit", JPEGExtended12Bit, "own"),
    ("jpeg_lossless_sv1", JPEGLosslessSV1, "own"),
    ("jpeg_ls_lossless", JPEGLSLossless, "codec"),
    ("jpeg2000_lossless", JPEG2000Lossless, "codec"),
]


def sources(shared):
    """(name, {transfer syntax: real file}) of every distinct radiograph."""
    import data_store
    store = os.path.join(os.path.dirname(data_store.__file__), "data")
    out = {}
    for f in sorted(os.listdir(shared)):
        if f.startswith("broken_") or not f.endswith(".dcm"):
            continue
        ds = pydicom.dcmread(os.path.join(shared, f), stop_before_pixels=True)
        # RG1_UNCR and RG1_J2KR are one image in two syntaxes.
        name = re.sub(r"_(uncr|j2kr|implicit_vr)$", "", os.path.splitext(f)[0], flags=re.I)
        name = name.split("_")[0] if name.startswith("RG") else name
        out.setdefault(name, {})[str(ds.file_meta.TransferSyntaxUID)] = os.path.join(shared, f)
    # pydicom-data's CR images (MIT): RG1 (also in SHARED) and RG3, uncompressed and J2K lossless.
    for f in ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "RG3_J2KR.dcm"]:
        ds = pydicom.dcmread(os.path.join(store, f), stop_before_pixels=True)
        out.setdefault(f.split("_")[0], {}).setdefault(str(ds.file_meta.TransferSyntaxUID),
                                                       os.path.join(store, f))
    return out


def native(files):
    """The image as an explicit VR little endian data set (decompressed when needed)."""
    path = files.get(ExplicitVRLittleEndian) or next(iter(files.values()))
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def requantised(ds, bits, bits_allocated):
    """A copy with its values shifted to `bits` stored bits, the window scaled alike."""
    out = copy.deepcopy(ds)
    shift = int(ds.BitsStored) - bits
    arr = ds.pixel_array.astype(np.uint32)
    arr = arr >> shift if shift >= 0 else arr << -shift
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = bits_allocated, bits, bits - 1, 0
    for tag in ("WindowCenter", "WindowWidth"):
        if tag in out:
            v = out[tag].value
            scaled = [float(x) / 2.0**shift for x in (v if isinstance(v, pydicom.multival.MultiValue) else [v])]
            out[tag].value = [f"{x:.6g}" for x in scaled] if len(scaled) > 1 else f"{scaled[0]:.6g}"
    return out, arr.astype(np.uint8 if bits_allocated == 8 else np.uint16)


def encapsulated(ds, stream, uid, lossy):
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid
    if lossy:
        ds.LossyImageCompression = "01"
    return ds


def transcode(ds, uid):
    """`ds` in transfer syntax `uid`, or the reason it cannot be made here."""
    import imagecodecs
    ds = copy.deepcopy(ds)
    if uid in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = uid
        return ds
    if uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(uid, generate_instance_uid=False)
        return ds
    if uid == JPEGBaseline8Bit:
        out, arr = requantised(ds, 8, 8)
        return encapsulated(out, imagecodecs.jpeg8_encode(arr, level=90), uid, True)
    if uid == JPEGExtended12Bit:
        out, arr = requantised(ds, 12, 16)
        stream = imagecodecs.jpeg8_encode(arr, level=90, bitspersample=12)
        assert b"\xff\xc1" in stream[:1000], "not an extended (SOF1) stream"
        return encapsulated(out, stream, uid, True)
    if uid == JPEGLosslessSV1:
        bits = int(ds.BitsStored)
        stream = imagecodecs.jpeg8_encode(ds.pixel_array, lossless=True, predictor=1, bitspersample=bits)
        return encapsulated(ds, stream, uid, False)
    raise ValueError(f"no encoder for {uid}")


def prepare(shared, out):
    manifest_path = os.path.join(out, "manifest.json")
    try:
        with open(manifest_path) as f:
            m = json.load(f)
        # A set with files an encoder could not make is made again: the encoder may be here now.
        if m.get("stamp") == STAMP and not any(e["missing"] for e in m["syntaxes"]):
            print(f"reusing {out}")
            return
    except (OSError, ValueError):
        pass
    manifest = {"stamp": STAMP, "syntaxes": []}
    images = sources(shared)
    natives = {name: native(files) for name, files in images.items()}
    for key, uid, group in SYNTAXES:
        folder = os.path.join(out, key)
        os.makedirs(folder, exist_ok=True)
        entry = {"key": key, "uid": str(uid), "name": uid.name, "group": group, "files": [],
                 "real": [], "missing": []}
        for name, files in images.items():
            path = os.path.join(folder, f"{name}.dcm")
            if uid in files:
                ds = pydicom.dcmread(files[uid])
                entry["real"].append(name)
            else:
                try:
                    ds = transcode(natives[name], uid)
                except Exception as e:  # an encoder missing here: said, not faked
                    entry["missing"].append(f"{name}: {type(e).__name__}: {e}")
                    continue
            ds.save_as(path, enforce_file_format=True)
            entry["files"].append(path)
        manifest["syntaxes"].append(entry)
        print(f"{key}: {len(entry['files'])} files ({len(entry['real'])} real)", flush=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)


def display(path, plugin):
    """Display values 0..255 of the first frame, as src/data/dicom.rs computes them."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    values = apply_modality_lut(arr, ds)
    unit = None
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        unit = apply_voi_lut(values, ds, prefer_lut=True) / (2.0 ** int(lut.LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = (float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
                for v in (ds.WindowCenter, ds.WindowWidth))
        inside = np.count_nonzero((values >= c - w / 2) & (values < c + w / 2))
        if w > 0 and inside * 100 >= values.size:
            bits = int(ds.BitsStored)
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.PixelRepresentation) else (0, 2**bits - 1)
            if "RescaleSlope" in ds and "RescaleIntercept" in ds:
                s, i = float(ds.RescaleSlope), float(ds.RescaleIntercept)
                lo, hi = lo * s + i, hi * s + i
            unit = (apply_voi_lut(values, ds, prefer_lut=False) - lo) / (hi - lo)
    if unit is None:
        lo, hi = np.percentile(values, [0.5, 99.5], method="nearest")
        unit = np.clip((values - lo) / max(hi - lo, np.finfo(np.float64).tiny), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return (unit * 255.0).astype(np.float32)


class Files:
    def __init__(self, files, size, plugin):
        self.files, self.size, self.plugin = files, size, plugin

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import cv2
        import torch
        img = display(self.files[i], self.plugin)
        return torch.from_numpy(cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_LINEAR))[None]


def run(a):
    import torch
    torch.set_num_threads(a.threads)
    rates = {}
    lists = []
    for spec in a.lists:
        key, path = spec.split("=", 1)
        files = [l.strip() for l in open(path) if l.strip()]
        # JPEG-LS through CharLS (pyjpegls), as ours; pydicom would try libjpeg first.
        plugin = "pyjpegls" if key.startswith("jpeg_ls") else None
        # Once here, untimed: pydicom imports its plugins on first use, and the forked
        # workers inherit them (ours are linked in).
        display(files[0], plugin)
        lists.append((key, files, plugin))
    for key, files, plugin in lists:
        loader = torch.utils.data.DataLoader(Files(files, a.image_size, plugin), batch_size=a.batch_size,
                                             num_workers=a.workers, shuffle=False, drop_last=False,
                                             persistent_workers=False)
        start = time.perf_counter()
        n = 0
        for x in loader:
            assert x.shape[1:] == (1, a.image_size, a.image_size)
            n += x.shape[0]
        rates[key] = n / (time.perf_counter() - start)
    print(json.dumps(rates))


def main():
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["run"])
    p.add_argument("lists", nargs="+", help="SYNTAX=LIST")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    run(p.parse_args())


if __name__ == "__main__":
    main()
