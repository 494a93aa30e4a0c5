"""Thread settings of one process: BLAS threads for the GEMMs, Numba threads for
the fused kernels, and no thread pool spinning while the other one works.

A training step alternates large GEMMs (NumPy's OpenBLAS) with fused Numba
kernels (``minivit.kernels``: LayerNorm, GELU, softmax, the attention core).
Both are multi-threaded over the same cores, so each pool must go quiet as
soon as its region ends:

- OpenBLAS workers spin (``sched_yield``) for ``2**OPENBLAS_THREAD_TIMEOUT``
  cycles after each call before they sleep; the default (2**28 cycles, about
  0.1 s) kept one core busy through the next Numba region.  Measured on the
  2-core machine (a vit-micro fc1 GEMM then a 2-thread GELU of its output):
  54 ms with the default, 38 ms with ``OPENBLAS_THREAD_TIMEOUT=4``, the same as
  the GEMM and the kernel timed apart.  The GEMM alone is unchanged (18 ms).
- Numba's OpenMP layer spins the same way unless ``OMP_WAIT_POLICY=passive``
  (48 ms instead of 39 ms in the same test).

OpenBLAS reads its variable once, when NumPy loads it, so
``minivit/__init__.py`` sets both defaults before anything imports NumPy
(``setdefault``: a value the user exported wins).  A program that imports NumPy
before minivit keeps the spinning defaults: correct, only slower
(``env_applied()`` tells).

The attention kernels run one (batch, head) pair per Numba thread and call
BLAS (SciPy's OpenBLAS, which Numba's ``np.dot`` binds to) from inside that
region; a multi-threaded BLAS there nests n x n threads on n cores, which made
the vit-tiny attention core 9x slower (measured).  ``limit_threads`` gives that
library one thread, and NumPy's OpenBLAS, which runs the GEMMs outside any
Numba region, n threads.
"""
import contextlib
import os

ENV_DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"}


def set_env_defaults(environ):
    """Put ``ENV_DEFAULTS`` into ``environ`` where unset; returns the keys it set."""
    added = tuple(k for k in ENV_DEFAULTS if k not in environ)
    for key in added:
        environ[key] = ENV_DEFAULTS[key]
    return added


def env_applied():
    """False if NumPy (so OpenBLAS) was loaded before minivit set ``ENV_DEFAULTS``."""
    import minivit
    return not minivit.NUMPY_BEFORE_THREAD_ENV


def _package_dirs(module):
    """The install folder of ``module`` and the ``<name>.libs`` folder of its wheel."""
    here = os.path.dirname(os.path.realpath(module.__file__))
    return (here + os.sep, os.path.join(os.path.dirname(here), module.__name__ + ".libs") + os.sep)


def _kernel_blas(controller):
    """The BLAS libraries that Numba's ``np.dot`` calls and NumPy does not (SciPy's).

    Identified by file location (inside ``scipy`` or ``scipy.libs``, and not
    inside ``numpy`` or ``numpy.libs``).  None when the two share one library,
    as in builds against one system BLAS: the attention kernels then run nested
    BLAS threads, which is correct but slower.
    """
    import numpy
    import scipy
    np_dirs, sp_dirs = _package_dirs(numpy), _package_dirs(scipy)
    paths = [lib.filepath for lib in controller.lib_controllers
             if lib.user_api == "blas"
             and os.path.realpath(lib.filepath).startswith(sp_dirs)
             and not os.path.realpath(lib.filepath).startswith(np_dirs)]
    return controller.select(filepath=paths) if paths else None


@contextlib.contextmanager
def limit_threads(n):
    """Within the block: n BLAS threads for NumPy's GEMMs, n Numba threads for the
    kernels (at most ``NUMBA_NUM_THREADS``), 1 thread for the BLAS the kernels call.

    Everything is restored on exit.  Numba's thread count is per calling
    thread, so call this in the thread that runs the training step.
    Raises ValueError if n < 1.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"threads={n!r}: expected an integer >= 1")
    import numba
    from threadpoolctl import ThreadpoolController
    import scipy.linalg.cython_blas  # noqa: F401  (loads the kernels' BLAS, so it is limited too)
    controller = ThreadpoolController()
    kernel_blas = _kernel_blas(controller)
    old_numba = numba.get_num_threads()
    with contextlib.ExitStack() as stack:
        stack.enter_context(controller.limit(limits=int(n), user_api="blas"))
        if kernel_blas is not None:
            stack.enter_context(kernel_blas.limit(limits=1))
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
        stack.callback(numba.set_num_threads, old_numba)
        yield
