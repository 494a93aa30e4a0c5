"""The transfer experiment: pre-training sources x downstream tasks x seeds x protocols.

The grid of the FractalDB papers (Kataoka et al., ACCV 2020, table 3; Nakashima
et al., AAAI 2022): pre-train one backbone per source, then fine-tune it (all
parameters) and probe it linearly (frozen backbone, trained head) on each task
with several seeds, against a from-scratch baseline and a non-formula control.

``run/transfer.py GRID.toml`` runs it; this module holds the logic.  A grid
file has the sections

    model, threads, seeds, protocols       top-level keys
    [pretrain]    flags of run/pretrain.py shared by every source (equal compute:
                  the same --steps x --micro-batch for all, so every source sees
                  the same number of images)
    [sources.NAME]  flags of one source (``data = "synthetic:fractaldb"``); the
                  name ``scratch`` has no pre-training.  A ``synthetic:KIND`` source
                  is rendered once into shards (``classes`` x ``instances``,
                  ``run/make_dataset.py``) and pre-trained from them
    [tasks.NAME]  flags of run/finetune.py of one task (``data``,
                  ``labels_per_class``...); ``data = "digits"`` is packed into
                  train/test shards first (``pack_sources.digits_source``)
    [finetune]    flags of run/finetune.py shared by every cell (the same budget
                  --max-steps and recipe everywhere)
    [protocol.linear] / [protocol.finetune]  per-protocol overrides (e.g. lr)

Everything it writes is under ``results`` (the repository's ``results/``):

* ``backbones/SOURCE.h5``: the pre-trained weights only (float32 parameters,
  the ``minivit.checkpoint`` format ``run/finetune.py --checkpoint`` reads) and
  ``backbones/SOURCE.json`` (the pre-training's command, images, held-out top-1,
  seconds);
* ``cells/SOURCE__TASK__PROTOCOL__seedN.json``: one finished fine-tuning run
  (its ``result.json`` plus the command and seconds).  A cell whose file
  exists is skipped, so an interrupted grid resumes where it stopped;
* ``transfer.json`` (one record per source x task x protocol: ``seeds``,
  ``test_top1`` and ``val_top1`` lists, one entry per finished seed,
  ``pretrain_images``, ``finetune_steps``), ``transfer.md`` (mean ± sample std
  over seeds) and ``transfer.png`` (bars with std error bars).

Runs are subprocesses of ``run/pretrain.py`` and ``run/finetune.py`` (one
process each, ``threads`` BLAS threads), so each is exactly what a user can
re-run by hand; their work folders go under ``runs/transfer/``.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROTOCOLS = ("finetune", "linear")
SCRATCH = "scratch"
SAVE_EVERY = 100    # pre-training checkpoint interval (steps): what an interruption loses
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Grid:
    """A parsed grid file; see the module docstring for its sections."""
    model: str
    threads: int
    seeds: list
    protocols: list
    pretrain: dict
    sources: dict
    tasks: dict
    finetune: dict
    protocol: dict = field(default_factory=dict)

    def cells(self):
        """``[(source, task, protocol, seed)]`` in run order: task by task (the first
        task, the headline, is complete first), and within a task seed by seed, so
        every source x protocol gets its first seed before any gets its second."""
        return [(s, t, p, seed) for t in self.tasks for seed in self.seeds
                for p in self.protocols for s in self.sources]

    def pretrain_images(self):
        """Images seen by each source's pre-training (steps x global batch); 0 for scratch."""
        batch = self.pretrain.get("global_batch") or self.pretrain.get("micro_batch", 16)
        return int(self.pretrain.get("steps", 60)) * int(batch)


def load_grid(path):
    """The ``Grid`` of TOML file ``path``.

    Raises ValueError naming the file and the key for a missing section, an
    unknown protocol, no seeds, a source without ``data`` (other than
    ``scratch``), a task without ``data``, or a flag a cell must not set
    (``seed``, ``out``, ``checkpoint``, ``from_scratch``, ``linear_probe``).
    """
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    for key in ("sources", "tasks", "finetune", "pretrain"):
        if not isinstance(raw.get(key), dict) or (key in ("sources", "tasks") and not raw[key]):
            raise ValueError(f"{path}: expected a non-empty [{key}] section")
    seeds = raw.get("seeds", [0, 1, 2])
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"{path}: seeds = {seeds!r}: expected a list of integers >= 0")
    protocols = raw.get("protocols", list(PROTOCOLS))
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(f"{path}: protocols = {protocols!r}: expected a subset of {PROTOCOLS}")
    for name, spec in raw["sources"].items():
        if name != SCRATCH and "data" not in spec:
            raise ValueError(f"{path}: [sources.{name}] has no data = ...")
    for name, spec in raw["tasks"].items():
        if "data" not in spec:
            raise ValueError(f"{path}: [tasks.{name}] has no data = ...")
    reserved = {"seed", "out", "checkpoint", "from_scratch", "linear_probe", "model"}
    for section in [raw["finetune"], *raw["tasks"].values(), *raw.get("protocol", {}).values()]:
        clash = reserved & set(section)
        if clash:
            raise ValueError(f"{path}: {sorted(clash)} are set by the runner per cell")
    return Grid(model=raw.get("model", "vit-micro"), threads=int(raw.get("threads", 2)),
                seeds=list(seeds), protocols=list(protocols), pretrain=raw["pretrain"],
                sources=raw["sources"], tasks=raw["tasks"], finetune=raw["finetune"],
                protocol=raw.get("protocol", {}))


def flags(mapping):
    """``--key value`` arguments of a dict of flags (True: a bare switch; False/None: omitted)."""
    args = []
    for key, value in mapping.items():
        option = "--" + key.replace("_", "-")
        if value is True:
            args.append(option)
        elif value is not False and value is not None:
            args += [option, str(value)]
    return args


class TransferRunner:
    """Run (or resume) the cells of ``grid`` and write the tables into ``results``.

    grid : ``Grid``.  results : output folder (``results/``).  work : folder of the
    runs' own outputs (metrics, checkpoints; not committed).  python : the
    interpreter of the subprocesses.  say : a function of one line (the log).
    """

    def __init__(self, grid, results, work, python=sys.executable, say=print):
        self.grid, self.results, self.work = grid, Path(results), Path(work)
        self.python, self.say = python, say
        for sub in ("backbones", "cells"):
            (self.results / sub).mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------- paths
    def backbone(self, source):
        return self.results / "backbones" / f"{source}.h5"

    def cell_path(self, source, task, protocol, seed):
        return self.results / "cells" / f"{source}__{task}__{protocol}__seed{seed}.json"

    def pending(self, sources=None, tasks=None):
        """Cells whose result file does not exist yet, in run order; ``sources`` /
        ``tasks``: only cells of these names (None: all)."""
        return [c for c in self.grid.cells() if not self.cell_path(*c).is_file()
                and (sources is None or c[0] in sources) and (tasks is None or c[1] in tasks)]

    # ----------------------------------------------------------- runs
    def _run(self, args, log, ranks=1):
        """Run one subprocess (stdout+stderr to ``log``), under ``mpirun -n ranks`` when
        ranks > 1 and an ``mpirun`` is found (next to the interpreter, else on PATH);
        returns seconds.

        Raises RuntimeError naming the command and the log's last lines on failure."""
        log.parent.mkdir(parents=True, exist_ok=True)
        launcher = []
        beside = Path(self.python).parent / "mpirun"
        mpirun = str(beside) if beside.is_file() else shutil.which("mpirun")
        if ranks > 1 and mpirun:
            launcher = [mpirun, "-n", str(ranks)]
        start = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.run([*launcher, self.python, *map(str, args)], stdout=f,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
        if proc.returncode:
            tail = "".join(log.read_text().splitlines(True)[-15:])
            raise RuntimeError(f"exit {proc.returncode}: {shlex.join(map(str, args))}\n"
                               f"(log {log}):\n{tail}")
        return time.perf_counter() - start

    def render(self, source, spec):
        """Render ``synthetic:KIND`` once into shards (``run/make_dataset.py``: drawn at
        the published render size, box-downsampled to the model's input) and return the
        pre-training flags reading them; other sources are returned unchanged.

        ``classes`` x ``instances`` images (instance ids 0..instances-1, dataset seed
        ``data_seed``; ``direct = true`` in the source's section draws straight at the
        model's size, ``run/make_dataset.py --direct``; ``params = {NAME = VALUE}``
        become ``--param NAME=VALUE``): ``--holdout`` then holds out the top instance ids of each class,
        as on the fly.  Rendering once and reading the shards each epoch is what the
        published pipelines do, and costs 1/epochs of rendering on the fly.
        """
        if not str(spec.get("data", "")).startswith("synthetic:"):
            return spec
        from minivit.config import get_config
        spec = dict(spec)
        kind = spec.pop("data").split(":", 1)[1]
        direct = spec.pop("direct", False)
        params = spec.pop("params", {})
        tag = "".join(f"-{k}={v}" for k, v in sorted(params.items()))
        folder = self.work / "data" / (f"{source}-{spec['classes']}x{spec['instances']}"
                                       + ("-direct" if direct else "") + tag)
        if not (folder / "index.json").is_file():
            args = [ROOT / "run" / "make_dataset.py", "--kind", kind,
                    "--classes", spec["classes"], "--per-class", spec["instances"],
                    "--size", get_config(self.grid.model).image_size,
                    "--seed", spec.get("data_seed", 0), "--out", folder,
                    *(["--direct"] if direct else []),
                    *[a for k, v in sorted(params.items()) for a in ("--param", f"{k}={v}")]]
            self.say(f"rendering {source}: {shlex.join(map(str, args))}")
            # one rank per core: make_dataset writes the same bytes for any rank count
            seconds = self._run(args, folder.with_suffix(".log"), ranks=self.grid.threads)
            self.say(f"rendered {source} in {seconds:.0f} s ({self.grid.threads} ranks)")
        for key in ("instances", "data_seed"):
            spec.pop(key, None)
        return {**spec, "data": str(folder)}

    def pretrain(self, source):
        """Pre-train ``source`` unless its backbone exists; returns the backbone path.

        The run checkpoints every ``SAVE_EVERY`` steps (and on SIGTERM), and an
        interrupted one continues from its newest checkpoint (``--resume``)."""
        path = self.backbone(source)
        if path.is_file():
            return path
        from minivit.checkpoint import latest_valid_checkpoint
        out = self.work / f"pretrain-{source}"
        spec = {**self.grid.pretrain, **self.grid.sources[source], "model": self.grid.model,
                "threads": self.grid.threads, "out": out, "no_progress": True,
                "save_every": SAVE_EVERY, "keep_last": 1}
        spec = self.render(source, spec)
        if (out / "ckpt").is_dir() and latest_valid_checkpoint(out / "ckpt") is not None:
            spec["resume"] = out
        args = [ROOT / "run" / "pretrain.py", *flags(spec)]
        self.say(f"pre-training {source}: {shlex.join(map(str, args))}")
        log = out.with_suffix(".log")
        if log.is_file():        # the log of an interrupted run is kept next to the new one
            os.replace(log, log.with_suffix(f".{int(time.time())}.log"))
        seconds = self._run(args, log)
        evals = [r for r in _jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"]
        trains = [r for r in _jsonl(out / "metrics.jsonl") if r.get("kind") == "train"]
        save_weights(out / "ckpt", path)
        info = {"source": source, "command": shlex.join(map(str, args)), "seconds": seconds,
                "images": self.grid.pretrain_images(), "steps": trains[-1]["step"],
                "loss_first": trains[0]["loss"], "loss_last": trains[-1]["loss"],
                "heldout_top1": [e["accuracy"] for e in evals],
                "heldout_steps": [e["step"] for e in evals]}
        path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
        self.say(f"pre-trained {source} in {seconds:.0f} s: loss {info['loss_first']:.3f} -> "
                 f"{info['loss_last']:.3f}" + (f", held-out top-1 {evals[-1]['accuracy']:.1%}"
                                               if evals else ""))
        return path

    def task_flags(self, task):
        """The finetune flags of ``task``; digits is packed into train/test shards once."""
        spec = dict(self.grid.tasks[task])
        if spec["data"] == "digits":
            spec["data"], spec["test_data"] = self.digits_shards()
        return spec

    def digits_shards(self):
        """``(train dir, test dir)`` of scikit-learn digits, split 80/20 with seed 0 as
        ``run/pack.py digits`` does (a fixed test set apart from the validation split)."""
        from minivit.io.pack import pack
        from minivit.io.pack_sources import digits_source
        dirs = []
        for split in ("train", "test"):
            folder = self.work / "data" / f"digits-{split}"
            if not (folder / "index.json").is_file():
                names, _, samples = digits_source(split, 0.2, 0)
                pack(samples, str(folder), split, class_names=names, overwrite=True)
            dirs.append(str(folder))
        return tuple(dirs)

    def run_cell(self, source, task, protocol, seed):
        """Fine-tune (or probe) one cell and write its result file; returns the record."""
        out = self.work / "cells" / f"{source}__{task}__{protocol}__seed{seed}"
        spec = {**self.grid.finetune, **self.task_flags(task),
                **self.grid.protocol.get(protocol, {}), "seed": seed, "out": out,
                "threads": self.grid.threads, "no_progress": True,
                "linear_probe": protocol == "linear"}
        if source == SCRATCH:
            spec.update(from_scratch=True, model=self.grid.model)
        else:
            spec["checkpoint"] = self.pretrain(source)
        args = [ROOT / "run" / "finetune.py", *flags(spec)]
        seconds = self._run(args, out.with_suffix(".log"))
        result = json.loads((out / "result.json").read_text())
        record = {"source": source, "task": task, "protocol": protocol, "seed": seed,
                  "seconds": seconds, "command": shlex.join(map(str, args)), **result}
        path = self.cell_path(source, task, protocol, seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)    # a cell file exists only when complete
        return record

    def run(self, max_cells=None, progress=None, sources=None, tasks=None):
        """Run the pending cells (at most ``max_cells``; only of ``sources`` / ``tasks``
        when given); returns how many ran.

        progress : a tqdm-like object with ``update(n)`` and ``set_postfix_str``, or None.
        """
        todo = self.pending(sources, tasks)
        if max_cells is not None:
            todo = todo[:max_cells]
        for i, cell in enumerate(todo):
            if progress is not None:
                progress.set_postfix_str("/".join(map(str, cell)))
            record = self.run_cell(*cell)
            self.say(f"[{i + 1}/{len(todo)}] {'/'.join(map(str, cell))}: validation top-1 "
                     f"{record['val_top1']:.2%}" + (
                         f", test top-1 {record['test_top1']:.2%}"
                         if record.get("test_top1") is not None else "")
                     + f" ({record['seconds']:.0f} s)")
            self.write_tables()
            if progress is not None:
                progress.update(1)
        return len(todo)

    # ----------------------------------------------------------- tables
    def records(self):
        """One record per source x task x protocol with at least one finished seed."""
        out = []
        for source in self.grid.sources:
            info = self.backbone(source).with_suffix(".json")
            images = (json.loads(info.read_text())["images"] if info.is_file()
                      else 0 if source == SCRATCH else None)
            for task in self.grid.tasks:
                for protocol in self.grid.protocols:
                    cells = [json.loads(self.cell_path(source, task, protocol, s).read_text())
                             for s in self.grid.seeds
                             if self.cell_path(source, task, protocol, s).is_file()]
                    if not cells:
                        continue
                    out.append({"source": source, "task": task, "protocol": protocol,
                                "seeds": [c["seed"] for c in cells],
                                "test_top1": [c["test_top1"] for c in cells],
                                "val_top1": [c["val_top1"] for c in cells],
                                "pretrain_images": images,
                                "finetune_steps": cells[0]["steps"],
                                "finetune_images": cells[0]["steps"] * cells[0]["global_batch"],
                                "seconds": [round(c["seconds"], 1) for c in cells]})
        return out

    def write_tables(self):
        """Write ``transfer.json``, ``transfer.md`` and ``transfer.png``; returns the records."""
        records = self.records()
        (self.results / "transfer.json").write_text(json.dumps(records, indent=1) + "\n")
        (self.results / "transfer.md").write_text(markdown_table(records, self.grid))
        if records:
            plot(records, self.grid, self.results / "transfer.png")
        return records


def save_weights(ckpt_dir, path):
    """Copy the newest valid checkpoint in ``ckpt_dir`` into ``path`` as weights only:
    float32 parameters and the model config, no optimizer state (about 4 bytes per
    parameter: 4.8 MB for vit-micro).  Raises CheckpointError when none is valid."""
    from minivit.checkpoint import CheckpointReader, CheckpointWriter
    from minivit.transfer import resolve_checkpoint
    with CheckpointReader(resolve_checkpoint(ckpt_dir)) as reader, \
            CheckpointWriter(path) as writer:
        for name in reader.names("params"):
            writer.write("params", name, reader.read("params", name).astype(np.float32))
        writer.commit({"step": reader.step, "preset": reader.meta.get("preset"),
                       "model_config": {**reader.meta["model_config"], "dtype": "float32"}})


def mean_std(values):
    """``(mean, sample std)`` of fractions; std is 0 for one value."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def markdown_table(records, grid):
    """Markdown: per protocol, sources as rows and tasks as columns, test top-1 in %
    as mean ± std (n seeds), validation top-1 below it; absent cells are '-'."""
    lines = ["# Transfer: test top-1 (%), mean ± std over fine-tuning seeds", "",
             f"Model {grid.model}; every cell: the same fine-tuning recipe and budget "
             f"({', '.join(f'{k}={v}' for k, v in grid.finetune.items())}"
             + "".join(f"; {p}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                       for p, o in grid.protocol.items() if p in grid.protocols)
             + "); pre-training: "
             + f"{grid.pretrain_images():,} images per source. (n) = seeds finished; "
             "val = validation top-1 (carved from the training split), the only number "
             "used to choose anything.", ""]
    index = {(r["source"], r["task"], r["protocol"]): r for r in records}
    for protocol in grid.protocols:
        title = "full fine-tuning" if protocol == "finetune" else "linear probe"
        lines += [f"## {title}", "", "| source | " + " | ".join(grid.tasks) + " |",
                  "|---|" + "---|" * len(grid.tasks)]
        for source in grid.sources:
            row = []
            for task in grid.tasks:
                r = index.get((source, task, protocol))
                if r is None or r["test_top1"][0] is None:
                    row.append("-")
                    continue
                m, s = mean_std(r["test_top1"])
                vm, vs = mean_std(r["val_top1"])
                row.append(f"{100 * m:.1f} ± {100 * s:.1f} ({len(r['seeds'])}); "
                           f"val {100 * vm:.1f} ± {100 * vs:.1f}")
            lines.append(f"| {source} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(records, grid, path):
    """Bars of test top-1 per task (groups) and source (bars), one panel per protocol,
    error bars = sample std over seeds; written to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    index = {(r["source"], r["task"], r["protocol"]): r for r in records}
    fig, axes = plt.subplots(1, len(grid.protocols), figsize=(6 * len(grid.protocols), 4),
                             squeeze=False)
    width = 0.8 / len(grid.sources)
    for ax, protocol in zip(axes[0], grid.protocols):
        for k, source in enumerate(grid.sources):
            xs, ms, ss = [], [], []
            for t, task in enumerate(grid.tasks):
                r = index.get((source, task, protocol))
                if r is None or r["test_top1"][0] is None:
                    continue
                m, s = mean_std(r["test_top1"])
                xs.append(t + (k - (len(grid.sources) - 1) / 2) * width)
                ms.append(100 * m)
                ss.append(100 * s)
            ax.bar(xs, ms, width, yerr=ss, capsize=3, label=source)
        ax.set_xticks(range(len(grid.tasks)), list(grid.tasks))
        ax.set_ylabel("test top-1 (%)")
        ax.set_title("full fine-tuning" if protocol == "finetune" else "linear probe")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def describe(grid, runner):
    """One paragraph: the grid's size and what is left."""
    total = len(grid.cells())
    left = len(runner.pending())
    missing = [s for s in grid.sources if s != SCRATCH and not runner.backbone(s).is_file()]
    return (f"{len(grid.sources)} sources x {len(grid.tasks)} tasks x {len(grid.protocols)} "
            f"protocols x {len(grid.seeds)} seeds = {total} cells, {total - left} done, "
            f"{left} to run" + (f"; backbones to pre-train: {', '.join(missing)}"
                                if missing else ""))
