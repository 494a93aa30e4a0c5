"""Pipeline timeline: gather every stage's forward/backward intervals, measure
the bubble and draw the schedule as a per-stage Gantt chart.

Bubble fraction (Narayanan et al. 2021, section 2.2.1, eq. 1): with ``p``
stages and ``m`` equal micro-batches a stage idles ``(p - 1) / (m + p - 1)``
of the step, for GPipe and 1F1B alike.  Measured here as
``1 - mean_over_stages(busy time) / (last end - first start)``.
"""
import numpy as np


def gather_timeline(grid, events):
    """All stages' events on every rank of the pp group: array (pp, n, 4).

    events : (n, 4) float64 rows ``(kind 0=F/1=B, micro-batch, start_s, end_s)``
    (``Pipeline.events``; n = 2 m on every stage).  One all-gather over pp.
    """
    events = np.ascontiguousarray(events, dtype=np.float64)
    out = np.empty((grid.pp,) + events.shape, np.float64)
    grid.pp_group.allgather(events, out)
    return out


def theoretical_bubble(p, m):
    """``(p - 1) / (m + p - 1)``: idle fraction of a flushed pipeline step."""
    return (p - 1) / (m + p - 1)


def measured_bubble(timeline):
    """``1 - mean busy / span`` of a (pp, n, 4) timeline (see module docstring)."""
    start, end = timeline[:, :, 2].min(), timeline[:, :, 3].max()
    busy = (timeline[:, :, 3] - timeline[:, :, 2]).sum(axis=1)
    return float(1.0 - busy.mean() / (end - start))


def plot_timeline(timeline, path, title):
    """Write a Gantt chart (one row per stage, forward blue / backward orange,
    micro-batch number inside each box) of a (pp, n, 4) timeline to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = timeline[:, :, 2].min()
    pp = timeline.shape[0]
    fig, ax = plt.subplots(figsize=(10, 0.6 * pp + 1.2))
    colors = {0: "#4c72b0", 1: "#dd8452"}
    for stage in range(pp):
        for kind, mb, start, end in timeline[stage]:
            left, width = (start - t0) * 1e3, (end - start) * 1e3
            ax.barh(stage, width, left=left, height=0.8, color=colors[int(kind)],
                    edgecolor="black", linewidth=0.4)
            ax.text(left + width / 2, stage, str(int(mb)), ha="center", va="center",
                    fontsize=7, color="white")
    ax.set_yticks(range(pp))
    ax.set_yticklabels([f"stage {s}" for s in range(pp)])
    ax.invert_yaxis()
    ax.set_xlabel("time in step (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color=colors[0], label="forward"),
                       Patch(color=colors[1], label="backward")], loc="lower right", fontsize=8)
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
    theory = theoretical_bubble(grid.pp, engine.accum)
    if root:
        plot_timeline(timeline, path,
                      f"{schedule}: pp={grid.pp}, m={engine.accum} micro-batches; "
                      f"bubble measured {measured:.1%}, (p-1)/(m+p-1) = {theory:.1%}")
        print(f"timeline ({schedule}, pp={grid.pp}, m={engine.accum}): bubble measured "
              f"{measured:.1%} vs (p-1)/(m+p-1) = {theory:.1%}; wrote {path}", flush=True)
    return measured, theory
