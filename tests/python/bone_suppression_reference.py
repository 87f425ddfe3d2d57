"""References for tests/bone_suppression.rs.

usage: bone_suppression_reference.py dicom SOURCE.dcm DERIVED.dcm
  checks with pydicom that DERIVED is a new derived instance of SOURCE's study and prints
  `derived ok`.
"""
import sys

import pydicom

if sys.argv[1] == "dicom":
    src = pydicom.dcmread(sys.argv[2])
    out = pydicom.dcmread(sys.argv[3])
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", out.file_meta.TransferSyntaxUID
    assert out.SOPInstanceUID != src.SOPInstanceUID and out.SOPInstanceUID.startswith("2.25.")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "SOPClassUID"):
        if keyword in src:
            assert getattr(out, keyword) == getattr(src, keyword), keyword
    assert list(out.ImageType)[:3] == ["DERIVED", "SECONDARY", "BONE_SUPPRESSED"], out.ImageType
    assert out.PhotometricInterpretation == "MONOCHROME2"
    pixels = out.pixel_array
    assert pixels.dtype.name == "uint16", pixels.dtype
    assert pixels.shape == (src.Rows, src.Columns), (pixels.shape, src.Rows, src.Columns)
    assert "RescaleSlope" not in out and "VOILUTSequence" not in out
    ref = out.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID), ref
    print(f"derived ok: {pixels.shape}, values {pixels.min()}..{pixels.max()}, {out.SOPInstanceUID}")
else:
    raise SystemExit(f"unknown mode {sys.argv[1]}")
