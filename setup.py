"""Install the single ``minivit`` distribution.

The repository keeps ``parallel/``, ``synth/`` and ``io/`` at the top level (the
product's design card fixes that layout), but they are installed as
subpackages of ``minivit``.  A top-level package called ``io`` could never be
imported: the standard library's ``io`` module is found first on ``sys.path``
and would shadow it.  Mapping the folders with ``package_dir`` gives one
namespace, ``minivit.parallel``, ``minivit.synth`` and ``minivit.io``.
"""
from setuptools import setup

_SUBPACKAGES = {
    "minivit.parallel": "parallel",
    "minivit.synth": "synth",
    "minivit.io": "io",
}

setup(
    name="minivit",
    version="0.1.0",
    description=("Vision Transformer pre-training on formula-generated images, "
                 "from scratch in NumPy/Numba and mpi4py"),
    python_requires=">=3.11",
    # the sub-packages under the mapped folders (minivit.parallel.runtime, ...) follow
    # from package_dir; they are listed so a non-editable install copies them
    packages=["minivit", "minivit.tools", *_SUBPACKAGES,
              "minivit.parallel.runtime", "minivit.parallel.tools"],
    package_dir={"minivit": "minivit", **_SUBPACKAGES},
    install_requires=[
        "numpy",
        "numba",
        # mpi4py's wheel loads the first libmpi it finds: the mpich extra's on a laptop,
        # the site's MPI on a cluster (README.md, "On a cluster")
        "mpi4py",
        "scipy",
        "pillow",
        "h5py",
        "tqdm",
        "threadpoolctl",
        "matplotlib",
        "scikit-learn",   # the bundled `digits` dataset: the offline fine-tuning default
        "safetensors",    # run/export.py: timm-compatible weights for PyTorch users
    ],
    extras_require={
        # MPI from PyPI (libmpi + mpirun) for a laptop or one machine.  Left out on a
        # cluster, so that mpi4py and the PATH find only the site's MPI and launcher.
        "mpich": ["mpich"],
        "test": ["pytest", "pytest-timeout", "hypothesis", "webdataset"],
        # Cross-checks and benchmarks only; never a runtime dependency.
        # 2.13.0 is the CPU build available on this project's machines.
        "torch": ["torch==2.13.0"],
    },
)
