"""``--audit`` tables: the ledger of one step next to cost.py's predictions.

Communication: per (op, group) the count and bytes this rank sent, beside the
padding-exact prediction of ``cost.step_comm_bytes`` and the closed form of
the ZeRO paper (Rajbhandari et al. 2020, section 7).  Memory: measured bytes
of parameters, gradients and optimizer state beside the padded formula and
the closed form of section 5.1.
"""
from .. import cost

_STAGE_FORMULA = {0: "2(p-1)/p Psi", 1: "3(p-1)/p Psi", 2: "(accum+1)(p-1)/p Psi",
                  3: "3 accum (p-1)/p Psi"}
_MEMORY_FORMULA = {0: "16 Psi", 1: "8 Psi + 8 Psi/p", 2: "4 Psi + 12 Psi/p", 3: "16 Psi/p"}


def comm_table(step, summary, predicted, *, psi, p, stage, itemsize, accum=1, other=None):
    """Lines of the per-step communication audit.

    summary : ``Ledger.summary(since=mark)`` of the step.
    predicted : ``{op: bytes}`` from ``ParallelTrainer.predicted_step_bytes()``.
    psi, p, stage, itemsize, accum : for the closed-form total.
    other : ``{(op, group): bytes}`` predicted on the tp and pp groups
        (``mp_cli.predicted_group_bytes``); checked per group, apart from dp.
    """
    other = other or {}
    summary = dict(summary)
    extra = {k: summary.pop(k) for k in list(summary) if k[1] in ("tp", "pp")}
    lines = [f"[audit] step {step}: ZeRO-{stage}, dp={p}, accumulation {accum}, "
             f"Psi={psi:,} parameters x {itemsize} B",
             f"[audit]   {'op':<15}{'group':<7}{'count':>6}{'bytes sent':>14}{'predicted':>14}"]
    measured = {}
    for (op, group), row in sorted(summary.items()):
        measured[op] = measured.get(op, 0) + row["bytes"]
        pred = predicted.get(op, 0) if group == "dp" else 0
        lines.append(f"[audit]   {op:<15}{group:<7}{row['count']:>6}{row['bytes']:>14,}"
                     f"{pred:>14,}")
    total, pred_total = sum(measured.values()), sum(predicted.values())
    closed = cost.zero_comm_elements(psi, p, stage, accum) * itemsize
    verdict = "OK" if measured == {k: v for k, v in predicted.items() if v or k in measured} \
        else "MISMATCH"
    lines.append(f"[audit]   {'total':<28}{total:>14,}{pred_total:>14,}  {verdict}; closed form "
                 f"{_STAGE_FORMULA[stage]} x {itemsize} B = {closed:,.0f}")
    for key in sorted(set(extra) | set(other)):
        row = extra.get(key, {"count": 0, "bytes": 0})
        ok = "OK" if row["bytes"] == other.get(key, 0) else "MISMATCH"
        lines.append(f"[audit]   {key[0]:<15}{key[1]:<7}{row['count']:>6}{row['bytes']:>14,}"
                     f"{other.get(key, 0):>14,}  {ok} (cost.py tp/pp)")
    return lines


def memory_table(measured, exact, closed, *, p, stage):
    """Lines of the model-state memory audit (bytes per rank)."""
    lines = [f"[audit] memory per rank, ZeRO-{stage}, dp={p} "
             f"(closed form {_MEMORY_FORMULA[stage]})",
             f"[audit]   {'':<8}{'measured':>14}{'padded formula':>16}{'closed form':>14}"]
    for key in ("params", "grads", "optim", "total"):
        lines.append(f"[audit]   {key:<8}{measured[key]:>14,}{exact[key]:>16,}"
                     f"{closed[key]:>14,.0f}")
    return lines
