"""minivit.threads: environment defaults and the per-block thread limits."""
import numba
import pytest
from threadpoolctl import threadpool_info

from minivit.threads import ENV_DEFAULTS, limit_threads, set_env_defaults


def test_env_defaults_keep_what_the_user_exported():
    env = {"OMP_WAIT_POLICY": "active"}
    added = set_env_defaults(env)
    assert added == ("OPENBLAS_THREAD_TIMEOUT",)
    assert env == {"OMP_WAIT_POLICY": "active",
                   "OPENBLAS_THREAD_TIMEOUT": ENV_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]}


def _blas_threads():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas"}


def test_limit_threads_sets_and_restores():
    with limit_threads(1):
        before, numba_before = _blas_threads(), numba.get_num_threads()
    with limit_threads(2):
        inside = _blas_threads()
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
        numpy_blas = [n for path, n in inside.items() if "numpy" in path]
        scipy_blas = [n for path, n in inside.items() if "scipy" in path and "numpy" not in path]
        assert numpy_blas and all(n == 2 for n in numpy_blas)
        # the BLAS the attention kernels call from inside their own threads
        assert all(n == 1 for n in scipy_blas)
    with limit_threads(1):
        assert _blas_threads() == before and numba.get_num_threads() == numba_before


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_limit_threads_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="threads"):
        with limit_threads(bad):
            pass


@pytest.mark.parametrize("first,applied", [("minivit", "True"), ("numpy", "False")])
def test_env_applied_tells_whether_numpy_came_first(first, applied):
    import subprocess
    import sys
    code = f"import {first}; import minivit.threads as t; print(t.env_applied())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == applied
