"""Checks with pydicom that a DICOM written by chess-rs is a proper derived instance of its
source: the source's study and patient, new SOP Instance and Series UIDs, the source referenced
in Source Image Sequence, Image Type DERIVED\\SECONDARY\\KIND, explicit VR little endian.

usage: derived_dicom.py display SOURCE.dcm DERIVED.dcm KIND
         a model's output (bone_suppression predict): 16-bit MONOCHROME2 at the source's size,
         the source's rescale and VOI LUT removed; prints `derived ok`.
       derived_dicom.py stored SOURCE.dcm DERIVED.dcm KIND X0 Y0 X1 Y1
         an edit of the source (nodule_gan insert): the source's representation, rescale and
         window kept, and its stored values equal outside the box [X0..X1] x [Y0..Y1];
         prints `stored ok`.
"""
import sys

import numpy as np
import pydicom


def common(src, out, kind):
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", out.file_meta.TransferSyntaxUID
    assert out.SOPInstanceUID != src.SOPInstanceUID and out.SOPInstanceUID.startswith("2.25.")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "SOPClassUID"):
        if keyword in src:
            assert getattr(out, keyword) == getattr(src, keyword), keyword
    assert list(out.ImageType)[:3] == ["DERIVED", "SECONDARY", kind], out.ImageType
    ref = out.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID), ref


mode, src, out, kind = sys.argv[1], pydicom.dcmread(sys.argv[2]), pydicom.dcmread(sys.argv[3]), sys.argv[4]
common(src, out, kind)
if mode == "display":
    assert out.PhotometricInterpretation == "MONOCHROME2"
    pixels = out.pixel_array
    assert pixels.dtype.name == "uint16", pixels.dtype
    assert pixels.shape == (src.Rows, src.Columns), (pixels.shape, src.Rows, src.Columns)
    assert "RescaleSlope" not in out and "VOILUTSequence" not in out
    print(f"derived ok: {pixels.shape}, values {pixels.min()}..{pixels.max()}, {out.SOPInstanceUID}")
elif mode == "stored":
    x0, y0, x1, y1 = (int(v) for v in sys.argv[5:9])
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PhotometricInterpretation",
                    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "Rows", "Columns"):
        assert out.get(keyword) == src.get(keyword), (keyword, out.get(keyword), src.get(keyword))
    a, b = src.pixel_array, out.pixel_array
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    outside = np.ones(a.shape, bool)
    outside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = False
    assert np.array_equal(a[outside], b[outside]), "stored values changed outside the box"
    changed = int((a != b).sum())
    assert changed > 0, "nothing changed inside the box"
    print(f"stored ok: {changed} stored values changed, all inside the box; {a.dtype}, {out.SOPInstanceUID}")
else:
    raise SystemExit(f"unknown mode {mode}")
