"""pydicom's view of DICOM files, for the decoder tests, and transcoded variants of real files.

    dicom_reference.py variants SRC_DIR OUT_DIR   writes transcoded/altered copies of real files
    dicom_reference.py values OUT_DIR FILE...     for each FILE writes OUT_DIR/<name>.npy: first
        frame, rescale slope/intercept applied, colour to grey (ITU-R 601), MONOCHROME1 mirrored
        inside the representable range (lo + hi - v); or <name>.error with pydicom's message;
        for a file with a VOI LUT also <name>.voi.npy: pydicom's apply_voi_lut scaled to 0..255
        (inverted for MONOCHROME1), the display values
"""
import copy
import os
import shutil
import sys

import numpy as np
import pydicom
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid)


def values(ds):
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    arr = arr.astype(np.float64)
    if int(ds.SamplesPerPixel) == 3:
        arr = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out = arr * slope + intercept
    if ds.PhotometricInterpretation == "MONOCHROME1":
        bits = int(ds.BitsStored)
        lo, hi = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.PixelRepresentation) else (0, 2**bits - 1))
        a, b = lo * slope + intercept, hi * slope + intercept
        out = min(a, b) + max(a, b) - out
    return out.astype(np.float32)


def save(ds, path, **kw):
    ds.save_as(path, enforce_file_format=True, **kw)


def variants(src, out):
    os.makedirs(out, exist_ok=True)
    base = pydicom.dcmread(f"{src}/RG1_UNCR.dcm")
    small = pydicom.dcmread(f"{src}/nih_dx_implicit_vr.dcm")

    ds = copy.deepcopy(base)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    save(ds, f"{out}/cr_implicit_vr.dcm", implicit_vr=True, little_endian=True)

    ds = copy.deepcopy(base)
    ds.PixelData = ds.pixel_array.astype(">u2").tobytes()  # OW words swap with the encoding
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    pydicom.dcmwrite(f"{out}/cr_explicit_big_endian.dcm", ds, implicit_vr=False, little_endian=False,
                     force_encoding=True)

    ds = copy.deepcopy(base)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save(ds, f"{out}/cr_deflated.dcm")

    ds = copy.deepcopy(base)
    ds.compress(RLELossless)
    save(ds, f"{out}/cr_rle.dcm")

    # A VOI LUT (as CR exports carry): a gamma curve over the 15 bits, 16-bit output; it takes
    # precedence over the window (PS3.3 C.11.2.1.2).
    ds = copy.deepcopy(base)
    lut = np.round(65535 * (np.arange(32768) / 32767.0) ** 0.6).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [32768, 0, 16]
    item.LUTData = lut.tobytes()
    item["LUTData"].VR = "OW"
    item.LUTExplanation = "gamma 0.6"
    ds.VOILUTSequence = pydicom.Sequence([item])
    save(ds, f"{out}/cr_voi_lut.dcm")

    ds = copy.deepcopy(small)
    ds.compress(JPEG2000Lossless)
    save(ds, f"{out}/dx8_j2k_lossless.dcm")

    # JPEG baseline (lossy 8-bit): a dataset radiograph re-encoded as a grey baseline JPEG.
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    jpeg = os.path.join(src, "..", "cxr-pneumonia-224", "test", "NORMAL", "IM-0001-0001.jpeg")
    buf = io.BytesIO()
    with Image.open(jpeg) as im:
        cols, rows = im.size
        im.convert("L").save(buf, "JPEG", quality=90)
    ds = copy.deepcopy(small)
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    save(ds, f"{out}/dx8_jpeg_baseline.dcm")

    # Old ACR-NEMA style: no preamble, no meta group, implicit VR little endian.
    ds = copy.deepcopy(small)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(f"{out}/dx8_no_meta.dcm", ds, enforce_file_format=False, implicit_vr=True, little_endian=True)

    # Signed 16-bit with a rescale, as CT-like exports carry.
    ds = copy.deepcopy(small)
    arr = ds.pixel_array.astype(np.int16) * 8 - 900
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    save(ds, f"{out}/dx16_signed_rescaled.dcm")

    # 12 bits stored in 16 with garbage above the high bit (must be masked).
    ds = copy.deepcopy(small)
    arr = ds.pixel_array.astype(np.uint16) * 16 | 0xF000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    save(ds, f"{out}/dx12_high_bits_set.dcm")

    # Two frames: the first is used.
    ds = copy.deepcopy(small)
    arr = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([arr, 255 - arr]).tobytes()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    save(ds, f"{out}/dx8_two_frames.dcm")

    # RGB (secondary capture style).
    ds = copy.deepcopy(small)
    arr = ds.pixel_array
    rgb = np.stack([arr, arr // 2, 255 - arr], axis=-1).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    save(ds, f"{out}/dx8_rgb.dcm")

    # JPEG lossless (process 14, selection value 1): real files of the pydicom-data package
    # (MIT), an 8-bit ultrasound and a 16-bit signed NM image, decoded by pylibjpeg-libjpeg.
    import data_store
    store = os.path.join(os.path.dirname(data_store.__file__), "data")
    shutil.copy(f"{store}/JPGLosslessP14SV1_1s_1f_8b.dcm", f"{out}/jpeg_lossless_8bit.dcm")
    shutil.copy(f"{store}/JPEG-LL.dcm", f"{out}/jpeg_lossless_16bit_signed.dcm")

    # JPEG-LS, lossless and near-lossless: real files of pydicom's own test set (MIT), decoded
    # there by pylibjpeg-libjpeg. A 16-bit MR (lossless), 8- and 16-bit near-lossless images.
    tests = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    shutil.copy(f"{tests}/MR_small_jpeg_ls_lossless.dcm", f"{out}/jpeg_ls_lossless_16bit.dcm")
    shutil.copy(f"{store}/emri_small_jpeg_ls_lossless.dcm", f"{out}/jpeg_ls_lossless_multiframe.dcm")
    shutil.copy(f"{tests}/JPEGLSNearLossless_08.dcm", f"{out}/jpeg_ls_near_lossless_8bit.dcm")
    shutil.copy(f"{tests}/JPEGLSNearLossless_16.dcm", f"{out}/jpeg_ls_near_lossless_16bit.dcm")

    # 12-bit JPEG extended (process 4): pydicom's JPGExtended.dcm, and JPEG-lossy.dcm, the same
    # stream with a scan header that says Se = 0 for a sequential scan, which libjpeg refuses.
    shutil.copy(f"{tests}/JPGExtended.dcm", f"{out}/jpeg_extended_12bit.dcm")
    shutil.copy(f"{tests}/JPEG-lossy.dcm", f"{out}/jpeg_extended_12bit_odd_scan_header.dcm")


def main():
    if sys.argv[1] == "variants":
        variants(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "values":
        out = sys.argv[2]
        for f in sys.argv[3:]:
            name = os.path.basename(f)
            try:
                ds = pydicom.dcmread(f, force=True)
                if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                    ds.file_meta = pydicom.dataset.FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                np.save(f"{out}/{name}.npy", values(ds))
                if "VOILUTSequence" in ds:
                    from pydicom.pixels import apply_voi_lut
                    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                    shown = apply_voi_lut(ds.pixel_array, ds).astype(np.float64) / (2**bits - 1) * 255
                    if ds.PhotometricInterpretation == "MONOCHROME1":
                        shown = 255 - shown
                    np.save(f"{out}/{name}.voi.npy", shown.astype(np.float32))
            except Exception as e:  # noqa: BLE001 - reported to the test
                open(f"{out}/{name}.error", "w").write(f"{type(e).__name__}: {e}")
    else:
        raise SystemExit("usage: dicom_reference.py variants SRC OUT | values OUT FILE...")


if __name__ == "__main__":
    main()
