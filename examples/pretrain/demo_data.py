"""Lists the computed-radiography (CR/DX) images of the `pydicom-data` package (MIT licensed,
installed by `make demo`) into a file list for `pretrain --data`.

    demo_data.py OUT.txt
"""
import pathlib
import sys

import pydicom
from pydicom.data import get_testdata_file  # noqa: F401  (fails early if pydicom is broken)
import data_store  # the pydicom-data package

root = pathlib.Path(data_store.__file__).parent / "data"
files = []
for path in sorted(root.glob("*.dcm")):
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        continue
    if getattr(ds, "Modality", "") in ("CR", "DX"):
        files.append(path)
if not files:
    raise SystemExit(f"no CR/DX images found under {root}")
pathlib.Path(sys.argv[1]).write_text("".join(f"{p}\n" for p in files))
print(f"{len(files)} CR/DX radiographs from pydicom-data ({root}) listed in {sys.argv[1]}")
