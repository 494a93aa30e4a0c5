"""Run the published FractalDB and VisualAtom renderers, as references only.

The published code is fetched (``git clone``, or ``git archive`` of a local
clone) into a temporary folder and run there in a subprocess; nothing of it
is imported into, or stored in, this project.  Two thin driver scripts, ours,
written into that folder, adapt it to today's libraries and read back what it
did:

- FractalDB (``fractal_renderer/make_fractaldb.py``, 2020) calls ``np.str``,
  which NumPy 1.24 removed: the driver restores it as ``str`` before running
  the script unchanged.  Its per-point masks come from Python's ``random``,
  seeded to 0 by the driver so a benchmark run is repeatable.
- VisualAtom (``visual_atomic_renderer/render_VisualAtom.py``) draws its
  category parameters and centres from Python's ``random``.  The driver wraps
  ``random.randint`` / ``random.uniform`` to log every call except the
  per-vertex noise inputs ``uniform(0, 10000)``, so the harness can give
  minivit the same categories and centres.  It needs the ``noise`` package.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FRACTALDB_REPO = "https://github.com/hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch"
VISUALATOM_REPO = "https://github.com/masora1030/CVPR2023-FDSL-on-VisualAtom"
CSV_DIR = "data/csv_rate0.2_category1000"
# make_VisualAtom.sh's settings of the released VisualAtom-1k
VISUALATOM_ARGS = ["--vertex_num_min=200", "--vertex_num_max=1000", "--perlin_min=0",
                   "--line_num_min=1", "--line_num_max=200", "--line_width=0.1",
                   "--radius_min=10", "--oval_rate=2", "--start_pos=512", "--nami_1_min=0",
                   "--nami_2_min=0", "--nami_1_max=20", "--nami_2_max=20", "--image_size=512"]

_FRACTALDB_DRIVER = '''import random, runpy, sys
import numpy as np
if not hasattr(np, "str"):
    np.str = str          # removed in NumPy 1.24; the 2020 script still uses it
random.seed(0)            # its per-point masks: repeatable runs
sys.path.insert(0, sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''

_VISUALATOM_DRIVER = '''import json, random, runpy, sys
log = []
_randint, _uniform = random.randint, random.uniform
def randint(a, b):
    v = _randint(a, b)
    log.append(["randint", a, b, v])
    return v
def uniform(a, b):
    v = _uniform(a, b)
    if (a, b) != (0, 10000):      # skip the per-vertex noise inputs
        log.append(["uniform", a, b, v])
    return v
random.randint, random.uniform = randint, uniform
out = sys.argv[1]
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open(out, "w") as fh:
        json.dump(log, fh)
'''


def fetch(source, dest, paths):
    """Put ``paths`` (list of repo-relative paths) of ``source`` under ``dest``.

    source: a local git directory (bare or with a work tree: ``git archive
    HEAD``), a plain folder (copied) or a URL (``git clone --depth 1``).
    Raises RuntimeError naming the source when git fails.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(source)
    if src.is_dir() and ((src / "HEAD").exists() or (src / ".git").exists()):
        git_dir = src if (src / "HEAD").exists() else src / ".git"
        archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD", *paths],
                                 capture_output=True)
        if archive.returncode:
            raise RuntimeError(f"git archive of {source}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    elif src.is_dir():
        for p in paths:
            target = dest / p
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (src / p).is_dir() else shutil.copy)(src / p, target)
    else:
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", source, str(dest / "_clone")],
                               capture_output=True)
        if clone.returncode:
            raise RuntimeError(f"git clone {source}: {clone.stderr.decode().strip()}")
        for p in paths:
            target = dest / p
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dest / "_clone" / p), target)
    return dest


def _run(args, cwd, what):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise RuntimeError(f"the published {what} renderer failed:\n{proc.stderr[-2000:]}")


def fractaldb_categories(workdir, categories):
    """Published category CSV paths of the first ``categories`` classes (sorted)."""
    paths = sorted(Path(workdir, CSV_DIR).glob("csv*/*.csv"))
    if len(paths) < categories:
        raise RuntimeError(f"{len(paths)} category CSVs under {CSV_DIR}, need {categories}")
    return paths[:categories]


def render_fractaldb(workdir, csv_paths, weight_rows, size=362, points=200_000):
    """Published patch_gray images, flip 0, count 0, of each of ``weight_rows``
    (at least two rows of 6 floats: ``np.genfromtxt`` of a one-row file gives
    a 1-D array the script cannot iterate as rows).

    Returns ``({(csv stem, row index): uint8 (size, size)}, wall seconds)``.
    """
    if len(weight_rows) < 2:
        raise ValueError(f"need >= 2 weight rows, got {len(weight_rows)}")
    import time
    work = Path(workdir)
    load, save = work / "ref_csv", work / "ref_png"
    load.mkdir(exist_ok=True)
    for p in csv_paths:
        shutil.copy(p, load / p.name)
    weights = work / "ref_weights.csv"
    weights.write_text("".join(",".join(repr(float(w)) for w in row) + "\n"
                               for row in weight_rows))
    (work / "fractaldb_driver.py").write_text(_FRACTALDB_DRIVER)
    renderer = work / "fractal_renderer"
    t0 = time.perf_counter()
    _run(["fractaldb_driver.py", str(renderer), str(renderer / "make_fractaldb.py"),
          f"--load_root={load}", f"--save_root={save}", f"--image_size_x={size}",
          f"--image_size_y={size}", f"--iteration={points}", "--draw_type=patch_gray",
          f"--weight_csv={weights}", "--instance=1"], work, "FractalDB")
    seconds = time.perf_counter() - t0
    return {(p.stem, r): np.asarray(Image.open(save / p.stem / f"{p.stem}_{r:02d}_count_0_flip0.png")
                                    .convert("L"))
            for p in csv_paths for r in range(len(weight_rows))}, seconds


def render_visualatom(workdir, categories, instances):
    """Published VisualAtom images of classes 0..categories-1, instances 0..instances-1.

    Returns ``(images, params)``: images ``{(class, instance): uint8 (512, 512)}``;
    params ``{class: (category dict, [centre [x, y] per instance])}`` in the
    form ``VisualAtomGenerator.draw_custom`` takes.
    """
    work = Path(workdir)
    (work / "visualatom_driver.py").write_text(_VISUALATOM_DRIVER)
    save, log_path = work / "va_png", work / "va_log.json"
    _run(["visualatom_driver.py", str(log_path),
          str(work / "visual_atomic_renderer" / "render_VisualAtom.py"), f"--save_root={save}",
          f"--numof_classes={categories}", f"--numof_instances={instances}", *VISUALATOM_ARGS],
         work, "VisualAtom")
    params = parse_visualatom_log(json.loads(log_path.read_text()), instances)
    images = {}
    for c in range(categories):
        for path in sorted((save / f"{c:05d}").glob("*.png")):
            k = int(path.stem.rsplit("_", 1)[1])
            images[(c, k)] = np.asarray(Image.open(path).convert("L"))
    return images, params


def parse_visualatom_log(log, instances):
    """Category parameters and centres from the logged ``random`` calls.

    A category starts with ``randint(200, 1000)`` (vertices); then come
    orbits, c, w, r0, n1, n2 (drawn again while equal to a non-zero n1), the
    two oval rates and, per instance, the centre pair ``randint(-512, 512)``
    (y first, then x) followed by that instance's orbit greys.
    Raises ValueError if the log does not have that shape.
    """
    out, i = {}, 0
    while i < len(log):
        if log[i][:3] != ["randint", 200, 1000]:
            raise ValueError(f"VisualAtom log entry {i}: expected randint(200, 1000), got {log[i]}")
        vals = [entry[3] for entry in log[i:i + 6]]
        vertices, orbits, coef, width, r0, n1 = vals
        i += 6
        n2 = log[i][3]
        i += 1
        while n2 == n1 and n1 != 0:
            n2 = log[i][3]
            i += 1
        ox, oy = log[i][3], log[i + 1][3]
        i += 2
        centres = []
        for _ in range(instances):
            dy, dx = log[i][3], log[i + 1][3]
            centres.append([(512 + dx) / 2, (512 + dy) / 2])
            i += 2 + orbits          # the centre pair, then one grey per orbit
        i += 2                       # the centre drawn after the last instance
        out[len(out)] = ({"vertices": vertices, "orbits": orbits, "perlin": coef,
                          "line_width": width, "start_radius": r0, "oval": [ox, oy],
                          "n1": n1, "n2": n2}, centres)
    return out
