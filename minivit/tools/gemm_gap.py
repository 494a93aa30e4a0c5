"""The Linear GEMMs of a training step timed alone, to compare with the same GEMMs
timed inside the step (``run/bench.py train --breakdown``, issue 16 item 1).

``isolated_linear_gemms`` runs, for each shape of ``minivit.flops.linear_gemms``,
the three products a ``Linear`` runs per step, written exactly as
``minivit.layers.Linear`` writes them (``x @ W.T``, ``dY @ W``, ``dY.T @ X``),
on fresh random operands of the model's dtype, back to back.  What the step
loses against this is what surrounds its GEMMs: caches holding other data,
BLAS threads woken after Numba kernels, the bias add and bias gradient (inside
the step's ``Linear`` timers, absent here) and the ``+=`` into the gradient.
"""
import time

import numpy as np

from ..flops import linear_gemms


def time_linear_gemm(m, k, n, dtype, repeats=3, seed=0):
    """Median seconds of ``(forward, dX, dW)`` for one Linear of ``x`` (m, k) -> (m, n).

    forward ``x @ W.T`` with W (n, k); ``dX = dY @ W``; ``dW = dY.T @ x``: the
    expressions of ``minivit.layers.Linear``.  One untimed call of each first.
    Raises ValueError for repeats < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected >= 1")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    dy = rng.standard_normal((m, n)).astype(dtype)
    calls = (lambda: x @ w.T, lambda: dy @ w, lambda: dy.T @ x)
    out = []
    for call in calls:
        call()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)))
    return tuple(out)


def isolated_linear_gemms(config, batch, repeats=3):
    """``{name: (seconds per step, FLOPs per step)}`` of each Linear GEMM shape timed
    alone (:func:`time_linear_gemm` x its count per step), for the names of
    ``minivit.flops.linear_gemms`` (``embed`` included)."""
    out = {}
    for name, m, k, n, count in linear_gemms(config, batch):
        sec = sum(time_linear_gemm(m, k, n, config.dtype, repeats))
        out[name] = (count * sec, count * 3 * 2 * m * k * n)
    return out


def gap_rows(config, batch, in_step, alone):
    """Rows ``(name, shape, count, step_s, alone_s, flops)`` for the Linear GEMMs
    timed in the step (``in_step``: {name: s}, from ``profiler.breakdown``) and
    alone (``alone``: :func:`isolated_linear_gemms`), in model order, plus an
    ``all`` row summing the names present in both."""
    rows = []
    for name, m, k, n, count in linear_gemms(config, batch):
        if name in in_step and name in alone:
            rows.append((name, f"{m}x{k}x{n}", count, in_step[name], alone[name][0],
                         alone[name][1]))
    total = [sum(r[i] for r in rows) for i in (3, 4, 5)]
    return rows + [("all", "", sum(r[2] for r in rows), *total)]
