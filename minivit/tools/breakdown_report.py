"""The report of ``run/bench.py train --breakdown``: time per operator class with the
rate each class achieved, and the Linear GEMMs in the step against the same
GEMMs alone (issue 16 item 1), as text lines or one JSON-ready dict.

Rates come from the closed forms of ``minivit.flops.step_work``: GFLOP/s for
the GEMM classes (``matmul``, ``embed``, ``attention``), GB/s of the kernels'
inputs and outputs for the memory-bound ones (``layernorm``, ``gelu``).
"""
from ..flops import step_work
from .gemm_gap import gap_rows


def _rate(amount, unit, seconds):
    if seconds <= 0:
        return None
    return amount / seconds / 1e9, "GFLOP/s" if unit == "FLOP" else "GB/s"


def report(config, batch, bd, alone, peak):
    """``{"classes": [...], "gemms": [...], "total_ms", "peak_gflops"}`` of a
    ``profiler.Breakdown`` ``bd``, the isolated GEMM times ``alone``
    (``gemm_gap.isolated_linear_gemms``) and the square-GEMM peak (GFLOP/s)."""
    work = step_work(config, batch)
    classes = []
    for name, sec in bd.rows:
        row = {"class": name, "ms": sec * 1e3, "share": sec / bd.total}
        if name in work:
            rate, unit = _rate(*work[name], sec) or (None, None)
            row.update(rate=rate, rate_unit=unit)
        classes.append(row)
    gemms = [{"gemm": name, "shape": shape, "count": count, "step_ms": step * 1e3,
              "alone_ms": solo * 1e3, "step_gflops": flops / step / 1e9 if step else None,
              "alone_gflops": flops / solo / 1e9 if solo else None,
              "step_over_alone": step / solo if solo else None}
             for name, shape, count, step, solo, flops in gap_rows(config, batch, bd.gemms,
                                                                    alone)]
    return {"total_ms": bd.total * 1e3, "peak_gflops": peak, "classes": classes,
            "gemms": gemms}


def lines(rep):
    """The text lines of :func:`report`'s dict."""
    out = [f"  {'class':<10} {'ms':>9} {'share':>7}  rate"]
    for r in rep["classes"]:
        rate = f"  {r['rate']:.1f} {r['rate_unit']}" if r.get("rate") else ""
        out.append(f"  {r['class']:<10} {r['ms']:9.1f} {r['share']:7.1%}{rate}")
    out.append("Linear GEMMs (fwd + dX + dW): in the step (with bias add/grad) vs the same "
               "GEMMs alone, this run:")
    out.append(f"  {'gemm':<5} {'M x K x N':<16} {'count':>5} {'step ms':>9} {'GFLOP/s':>8} "
               f"{'alone ms':>9} {'GFLOP/s':>8}  step/alone")
    for g in rep["gemms"]:
        out.append(f"  {g['gemm']:<5} {g['shape']:<16} {g['count']:5d} {g['step_ms']:9.1f} "
                   f"{g['step_gflops']:8.1f} {g['alone_ms']:9.1f} {g['alone_gflops']:8.1f}  "
                   f"{g['step_over_alone']:.2f}")
    out.append(f"  square GEMM peak (same run): {rep['peak_gflops']:.1f} GFLOP/s")
    return out
