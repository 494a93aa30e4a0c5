"""FractalDB category parameter files (public FractalDB-1k layout).

One CSV per category, no header, one row ``a,b,c,d,e,f,p`` per affine map
(Kataoka et al., ACCV 2020, released ``data/csv_rate*`` files).  Files are named
``{class_id:05d}.csv``; values are written with 17 significant digits so an
export/import round trip is exact.
"""
import csv
from pathlib import Path

import numpy as np

from .ifs import IFSystem


def write_category(path, system):
    """Write one IFSystem as ``a,b,c,d,e,f,p`` rows to ``path`` (str or Path)."""
    rows = np.concatenate([system.maps, system.probs[:, None]], axis=1)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        for row in rows:
            writer.writerow([repr(float(v)) for v in row])


def read_category(path):
    """Read one CSV into an IFSystem.

    Probabilities are renormalised to sum to 1 if they are off by more than
    1e-9 (published files round them).
    Raises ValueError naming the file on a malformed row.
    """
    rows = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != 7:
                raise ValueError(f"{path}:{lineno}: expected 7 values a,b,c,d,e,f,p, got {len(row)}")
            try:
                rows.append([float(v) for v in row])
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: no maps")
    arr = np.asarray(rows, dtype=np.float64)
    probs = arr[:, 6]
    if np.any(probs < 0) or not probs.sum() > 0:
        raise ValueError(f"{path}: probabilities must be >= 0 with a positive sum")
    # published files round p to a few digits; files we wrote already sum to
    # 1 and are kept bit-exact
    if abs(probs.sum() - 1.0) > 1e-9:
        probs = probs / probs.sum()
    return IFSystem(arr[:, :6], probs)


def export_categories(directory, categories):
    """Write ``{class_id: IFSystem}`` as ``directory/{class_id:05d}.csv``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for cid in sorted(categories):
        path = directory / f"{cid:05d}.csv"
        write_category(path, categories[cid])
        paths.append(path)
    return paths


def import_categories(directory):
    """Read every ``*.csv`` in ``directory`` in sorted name order -> list of IFSystem.

    Class ``i`` is the ``i``-th file, which matches FractalDB's numbering.
    Raises FileNotFoundError if the directory holds no CSV.
    """
    paths = sorted(Path(directory).glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no *.csv category files in {directory}")
    return [read_category(p) for p in paths]
