"""Pipeline timeline: gather every stage's forward/backward intervals, measure
the bubble and draw the schedule as a per-stage Gantt chart.

Bubble fraction (Narayanan et al. 2021, section 2.2.1, eq. 1): with ``p``
stages and ``m`` equal micro-batches a stage idles ``(p - 1) / (m + p - 1)``
of the step, for GPipe and 1F1B alike; interleaved 1F1B with ``v`` chunks per
stage ``(p - 1) / (v m + p - 1)`` (section 2.2.2); ZB-H1's formula needs the F, B
and W times (``pipeline.bubble_fraction``), taken here from the measured means.
Measured here as ``1 - mean_over_stages(busy time) / (last end - first start)``.
"""
import os

import numpy as np

from ..pipeline import SPLIT_BACKWARD, bubble_fraction


def kind_names(schedule):
    """Legend text of the event kinds 0/1/2 under ``schedule``.  Only the split-backward
    schedules (ZB-H1) have a kind 2: there kind 1 is the input half (B) and kind 2 the
    weight half (W); GPipe, 1F1B and interleaved run the whole backward as kind 1."""
    if schedule in SPLIT_BACKWARD:
        return {0: "forward", 1: "backward (B: input)", 2: "weight (W)"}
    return {0: "forward", 1: "backward (B: input + weight)"}


def gather_timeline(grid, events):
    """All stages' events on every rank of the pp group: array (pp, n, 4).

    events : (n, 5) float64 rows ``(kind 0=F/1=B/2=W, micro-batch, start_s, end_s,
    chunk)`` (``Pipeline.events``; n = 2 m, 3 m for ZB-H1, 2 m v interleaved, on
    every stage).  One all-gather over pp.
    """
    events = np.ascontiguousarray(events, dtype=np.float64)
    out = np.empty((grid.pp,) + events.shape, np.float64)
    grid.pp_group.allgather(events, out)
    return out


def theoretical_bubble(p, m):
    """``(p - 1) / (m + p - 1)``: idle fraction of a flushed pipeline step."""
    return (p - 1) / (m + p - 1)


def predicted_bubble(schedule, timeline):
    """The schedule's bubble formula with the mean measured F, B and W seconds of
    ``timeline`` (B includes W for the unsplit schedules)."""
    pp, n = timeline.shape[:2]
    kinds = timeline[:, :, 0]
    seconds = timeline[:, :, 3] - timeline[:, :, 2]
    mean = [float(seconds[kinds == k].mean()) if (kinds == k).any() else 0.0 for k in (0, 1, 2)]
    m = int(timeline[0, :, 1].max()) + 1
    v = int(timeline[0, :, 4].max()) + 1 if timeline.shape[2] > 4 else 1
    # a chunk's op is 1/v of the stage's: the formula takes whole-stage times
    return bubble_fraction(schedule, pp, m, *[v * t for t in mean],
                           **({"v": v} if schedule == "interleaved" else {}))


FORMULAS = {"zb-h1": "(p-1)(F+B-W)/(m(F+B+W)+(p-1)(F+B-W))", "interleaved": "(p-1)/(vm+p-1)"}


def measured_bubble(timeline):
    """``1 - mean busy / span`` of a (pp, n, 4) timeline (see module docstring)."""
    start, end = timeline[:, :, 2].min(), timeline[:, :, 3].max()
    busy = (timeline[:, :, 3] - timeline[:, :, 2]).sum(axis=1)
    return float(1.0 - busy.mean() / (end - start))


def plot_timeline(timeline, path, title, schedule):
    """Write a Gantt chart (one row per stage, forward blue / backward orange /
    weight-gradient green, micro-batch number inside each box; interleaved, chunk
    ``c > 0`` lighter and hatched) of a (pp, n, 4 or 5) timeline of ``schedule`` (which
    names the legend's kinds, :func:`kind_names`) to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = timeline[:, :, 2].min()
    pp = timeline.shape[0]
    fig, ax = plt.subplots(figsize=(10, 0.6 * pp + 1.2))
    colors = {0: "#4c72b0", 1: "#dd8452", 2: "#55a868"}
    for stage in range(pp):
        for row in timeline[stage]:
            kind, mb, start, end = row[:4]
            chunk = int(row[4]) if len(row) > 4 else 0
            left, width = (start - t0) * 1e3, (end - start) * 1e3
            ax.barh(stage, width, left=left, height=0.8, color=colors[int(kind)],
                    alpha=1.0 if chunk == 0 else 0.55, hatch="//" * min(chunk, 2) or None,
                    edgecolor="black", linewidth=0.4)
            ax.text(left + width / 2, stage, str(int(mb)), ha="center", va="center",
                    fontsize=7, color="white")
    ax.set_yticks(range(pp))
    ax.set_yticklabels([f"stage {s}" for s in range(pp)])
    ax.invert_yaxis()
    ax.set_xlabel("time in step (ms)")
    ax.set_title(title, fontsize=9)
    present = sorted({int(k) for k in timeline[:, :, 0].ravel()})
    # beside the chart, not over the last stage's final ops
    names = kind_names(schedule)
    handles = [Patch(color=colors[k], label=names[k]) for k in present]
    if timeline.shape[2] > 4 and timeline[:, :, 4].max() > 0:
        handles += [Patch(facecolor="white", edgecolor="black", label="chunk 0"),
                    Patch(facecolor="white", edgecolor="black", hatch="//",
                          label="chunk 1 (2+: ////)")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_timeline(engine, path, schedule, root):
    """Gather the last step's pipeline events, print the bubble, draw the Gantt chart
    into ``path`` (PNG) on ``root``; returns ``(measured, theoretical)`` bubble
    fractions, or None without a pipeline.  Collective over the world."""
    grid = engine.grid
    if engine.pipeline is None:
        return None
    timeline = gather_timeline(grid, engine.pipeline.events)
    measured = measured_bubble(timeline)
    theory = predicted_bubble(schedule, timeline)
    formula = FORMULAS.get(schedule, "(p-1)/(m+p-1)")
    v = getattr(engine.model, "virtual_stages", 1)
    chunks = f", v={v} chunks per stage" if v > 1 else ""
    shared = _cores_shared(grid.world.comm)
    if root:
        plot_timeline(timeline, path,
                      f"{schedule}: pp={grid.pp}, m={engine.accum} micro-batches{chunks}; "
                      f"bubble measured {measured:.1%}, {formula} = {theory:.1%}", schedule)
        print(f"timeline ({schedule}, pp={grid.pp}, m={engine.accum}{chunks}): bubble measured "
              f"{measured:.1%} vs {formula} = {theory:.1%} (mean measured F, B, W); "
              f"wrote {path}", flush=True)
        if shared:
            print(f"timeline: {shared}: the measured bubble includes waiting for a core "
                  "(an idle rank polls in MPI's receive and takes one), so it is not the "
                  "schedule's alone; measure with a core per rank", flush=True)
    return measured, theory


def _cores_shared(world):
    """A note when some node runs more ranks of ``world`` (mpi4py ``Intracomm``) than it
    has cores, else ``""``.  Collective over ``world``."""
    from mpi4py import MPI
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks, cores = node.Get_size(), os.cpu_count() or 1
        worst = world.allreduce(ranks / cores, op=MPI.MAX)
    finally:
        node.Free()
    return f"up to {worst:g} ranks per core" if worst > 1 else ""
