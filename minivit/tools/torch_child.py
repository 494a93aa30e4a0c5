"""Run a PyTorch reference step in a child process, one call per request.

The benchmarks alternate one minivit call with one PyTorch call so that load
from other processes hits both alike.  PyTorch runs in its own process: in one
process, PyTorch's OpenMP pool and OpenBLAS's threads contend for the cores
after each switch, which made the PyTorch step 5x slower than when run alone
(measured, ``bench train --vs-torch``).
"""
import os

_MISSING = "needs PyTorch (pip install -e '.[torch]')"


def _worker(conn, factory, args, threads, drop_env):
    for key in drop_env:        # minivit's thread settings (minivit/threads.py) are not torch's
        os.environ.pop(key, None)
    try:
        import torch
    except ImportError as err:
        conn.send(f"{_MISSING}: {err}")
        return
    torch.set_num_threads(threads)
    step = factory(*args)
    conn.send("ready")
    while conn.recv() == "step":
        conn.send(step())
    conn.close()


def child_step_fn(factory, args, threads):
    """``(step, close)``: ``step()`` runs ``factory(*args)()`` once in a child process
    (spawned, with ``threads`` torch threads) and returns its result; ``close()``
    ends that process.

    factory: a module-level function (it is pickled) that imports torch, builds
    the reference and returns a zero-argument step callable.  Raises SystemExit
    with an install hint when PyTorch is missing in the child.
    """
    import multiprocessing as mp
    import minivit
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, daemon=True,
                       args=(child, factory, args, threads, minivit.THREAD_ENV_SET))
    proc.start()
    status = parent.recv()
    if status != "ready":
        raise SystemExit(status)

    def step():
        parent.send("step")
        return parent.recv()

    def close():
        parent.send("stop")
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    return step, close
