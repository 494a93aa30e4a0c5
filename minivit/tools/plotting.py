"""Loss and accuracy curves of one or more ``metrics.jsonl`` files (matplotlib).

``read_metrics(path)`` splits a file into its header, train and eval records
(files from before the ``kind`` key are read as all-train).  ``plot_runs``
draws two panels sharing the step axis: loss (train per step, smoothed with
a trailing moving average, and held-out), and top-1 accuracy (train batch,
smoothed, and held-out).  Several runs go on the same axes with their labels,
e.g. a fine-tune from a checkpoint against the from-scratch baseline.
"""
import json
from pathlib import Path

import numpy as np


def read_metrics(path):
    """``(header dict or None, train records, eval records)`` of a metrics.jsonl file.

    Raises FileNotFoundError for a missing file and ValueError (naming the
    file and line) for a line that is not JSON.
    """
    path = Path(path)
    header, train, evals = None, [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON record ({e.msg})") from None
            kind = record.get("kind", "train")
            if kind == "header":
                header = record
            elif kind == "eval":
                evals.append(record)
            elif kind == "train":
                train.append(record)
    return header, train, evals


def moving_average(values, window):
    """Trailing mean over ``window`` points, float64 (n,); the first points average what exists."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_runs(runs, out_png, title=None, smooth=None, dpi=120):
    """Write a PNG of ``runs`` (list of ``(label, metrics.jsonl path)``) to ``out_png``.

    smooth : moving-average window over train steps (default: about 2% of the
    steps, at least 1).  Returns the output path.  Raises ValueError when a
    file holds no train record.
    """
    import matplotlib
    matplotlib.use("Agg")   # files only; no display on a server
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, path) in enumerate(runs):
        _, train, evals = read_metrics(path)
        if not train:
            raise ValueError(f"{path}: no train records to plot")
        c = colours[i % len(colours)]
        prefix = f"{label}: " if label else ""
        steps = [r["step"] for r in train]
        window = smooth or max(1, len(train) // 50)
        ax_loss.plot(steps, [r["loss"] for r in train], color=c, alpha=0.2, lw=0.8)
        ax_loss.plot(steps, moving_average([r["loss"] for r in train], window), color=c,
                     lw=1.5, label=f"{prefix}train (avg {window} steps)")
        if "accuracy" in train[0]:
            ax_acc.plot(steps, moving_average([r["accuracy"] for r in train], window),
                        color=c, lw=1.5, alpha=0.6, label=f"{prefix}train batch")
        if evals:
            es = [r["step"] for r in evals]
            ax_loss.plot(es, [r["loss"] for r in evals], "o--", color=c, ms=4,
                         label=f"{prefix}held-out")
            ax_acc.plot(es, [r["accuracy"] for r in evals], "o--", color=c, ms=4,
                        label=f"{prefix}held-out")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy (nats)", title="loss")
    ax_acc.set(xlabel="optimizer step", ylabel="top-1 accuracy", title="accuracy",
               ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png
