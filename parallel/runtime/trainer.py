"""The training runtime: one ``Trainer`` and its ``fit()`` loop, shared by every script.

The loop is shaped like torchtitan's ``Trainer.train``.  Per optimizer step:

1. take this rank's micro-batches of the step (``batches``: a ``LoaderSteps``);
2. run the train step (``StepEngine.train_step``: forward/backward per
   micro-batch with gradient accumulation, gradient sync over dp, clipping,
   the optimizer update, or a skipped update when the loss is not finite);
3. log it (``metrics.jsonl``, progress bar, ``--audit`` tables);
4. evaluate on the held-out split when due;
5. stop (raise) when a non-finite step exceeds ``--skip-nonfinite``;
6. agree over all ranks whether a preemption signal arrived;
7. save a checkpoint when due, or when preempted; then stop if preempted.

Everything the loop changes lives in attributes (``step``, ``skipped``,
``records``); no closures.  The run's lifecycle around it (output folder,
resume, BLAS peak, watchdog, closing the data) is :meth:`fit` too, so
``run/pretrain.py`` and ``run/finetune.py`` differ only in how they build the
model and the data.
"""
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from minivit.flops import train_flops
from minivit.optim import WarmupCosine

from ..offload import Offload
from ..tools import audit as audit_tables
from ..tools.timeline import write_timeline
from .checkpoint import state_adapter
from .cliconfig import write_text_atomic, write_toml
from .evaluate import eval_model
from .launch import describe_library
from .data import data_state
from .resume import CheckpointManager, fork_metrics, skipped_nonfinite, truncate_metrics
from .runlog import RunLog, blas_peak, param_count_text
from .step import StepEngine
from .watchdog import Watchdog


class Trainer:
    """One run of ``cfg`` (a validated ``TrainConfig``) on the process ``grid``.

    model : the serial ViT or this rank's ``ModelShard``, built alike on every rank.
    data : ``RunData`` (model config, step batches, held-out evaluator or None,
        description; see ``runtime.data``).
    out : output folder (world rank 0 writes it).
    script : "pretrain" or "finetune" (the metrics header).
    resume : ``(path, metadata)`` of the checkpoint to continue from, or None.
    preempt : an installed ``Preemption`` or None (then signals are not caught).
    header : extra fields of the metrics header; intro : a line printed at start.
    steps_per_epoch : when given, evaluations are labelled by epochs completed
        (fine-tuning); otherwise by the loader's epoch.
    trainable : None, or the ``(start, stop)`` slice of the flat buffer that the
        optimizer updates (a linear probe); see ``StepEngine``.
    """

    def __init__(self, cfg, grid, model, data, *, out, script, resume=None, preempt=None,
                 header=None, intro=None, steps_per_epoch=None, trainable=None):
        self.cfg, self.grid, self.data, self.out = cfg, grid, data, Path(out)
        self.script, self.preempt, self.resume = script, preempt, resume
        self.header, self.intro, self.steps_per_epoch = header or {}, intro, steps_per_epoch
        self.root = grid.rank == 0        # world rank 0 alone prints and writes files
        # the offload files exist before the engine, so ZeRO creates its shards in them
        self.offload = (Offload(None, Path(cfg.offload_dir), grid.rank)
                        if cfg.offload_dir else None)
        self.engine = StepEngine(
            model, grid, zero=cfg.zero, accum=cfg.accum,
            bucket_bytes=int(cfg.bucket_mb * 2**20), overlap=cfg.overlap,
            optimizer=cfg.optimizer, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.clip if cfg.clip > 0 else None, smoothing=cfg.label_smoothing,
            schedule=cfg.schedule, trainable=trainable,
            allocate=self.offload.allocate if self.offload else None)
        if self.offload is not None:
            self.offload.attach(self.engine)
        self.schedule = WarmupCosine(cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr)
        self.ckpt = CheckpointManager(self.out / "ckpt", state_adapter(self.engine), grid.world,
                                      preset=data.preset,
                                      config=data.config, save_every=cfg.save_every,
                                      keep_last=cfg.keep_last)
        self.step = resume[1]["step"] if resume else 0
        # the --skip-nonfinite budget is per run: the count is saved and resumed
        self.skipped = skipped_nonfinite(resume[1], resume[0]) if resume else 0
        self.records, self.runlog, self.watchdog = [], None, None
        self.flops = train_flops(data.config, cfg.global_batch)    # model FLOPs per step
        if resume:
            self.ckpt.load(resume[0])

    # ------------------------------------------------------------ the loop
    def fit(self):
        """Train from ``self.step`` to ``cfg.steps``; returns the train records of this call.

        Raises FloatingPointError (every rank, same step) when a non-finite step
        exceeds ``--skip-nonfinite``, naming the last good checkpoint.
        """
        cfg, start = self.cfg, self.step
        if start >= cfg.steps:      # every rank knows both numbers: all return here together
            # before _prepare_output: a launch that trains nothing leaves OUT as it was
            # (its config.toml would otherwise record a layout that never ran)
            self._say_root(f"already at step {start} of --steps {cfg.steps}: nothing to do "
                           "(raise --steps to train further)")
            return []
        self._prepare_output()
        if self.schedule.warmup_steps > self.schedule.total_steps and cfg.lr > 0:
            # allowed (smoke tests run a few steps on the default --warmup), but a
            # short real run would otherwise never train at the --lr it was given
            self._say_root(f"note: --warmup {cfg.warmup} is more than the run's {cfg.steps} "
                           f"step{'' if cfg.steps == 1 else 's'}: it ends inside the warmup, so the learning rate peaks at "
                           f"{self.schedule(cfg.steps - 1):.3g}, not --lr {cfg.lr:g}")
        self._start_log()
        try:
            if self.data.evaluator is not None and not self.resume:
                self.evaluate(0, 0)   # the untrained baseline: the curve starts at chance
            while self.step < cfg.steps:
                mark, record = self.train_step()
                self.runlog.train(record)
                if self.watchdog is not None:
                    self.watchdog.beat()
                if record.get("skipped") and self.skipped <= cfg.skip_nonfinite:
                    self.runlog.say(
                        f"step {self.step}: loss {record['loss']} grad norm "
                        f"{record['grad_norm']}, update skipped ({self.skipped} of "
                        f"--skip-nonfinite {cfg.skip_nonfinite})")
                if cfg.audit:
                    self._audit(mark)
                if self.eval_due():   # collective: after the audit table of the step
                    self.evaluate(self.step, record["epoch"])
                # keep one step of ledger entries: the records already hold the totals
                self.grid.ledger.clear()
                if record.get("skipped") and self.skipped > cfg.skip_nonfinite:
                    self._stop_nonfinite(record)
                stopped = self.preempt is not None and self.preempt.agree(self.step)
                if self.ckpt.save_due(self.step, cfg.steps) or (stopped and self.step > start):
                    self.save()
                if stopped:
                    break
        finally:
            self._close()
        self._finish()
        return self.records

    def train_step(self):
        """Run one optimizer step; returns ``(ledger mark, metrics record)``."""
        t0 = time.perf_counter()
        epoch, micro_batches = next(self.data.batches)
        lr = self.schedule(self.step)
        mark = self.grid.ledger.mark()
        out = self.engine.train_step(micro_batches, lr)
        seconds = time.perf_counter() - t0
        self.step += 1
        record = {"step": self.step, "epoch": epoch, "loss": out["loss"],
                  "accuracy": out["accuracy"], "lr": lr, "grad_norm": out["grad_norm"],
                  "step_time_s": seconds, "images_per_s": self.cfg.global_batch / seconds,
                  "gflops_per_s": self.flops / seconds / 1e9, "comm_bytes": out["comm_bytes"],
                  "comm_s": out["comm_seconds"]}
        if not out["finite"]:
            self.skipped += 1
            record.update(skipped=True, skipped_total=self.skipped)
        self.records.append(record)
        return mark, record

    def eval_due(self):
        every = self.cfg.eval_every
        return self.data.evaluator is not None and bool(
            self.step == self.cfg.steps or (every and self.step % every == 0))

    def evaluate(self, step, epoch):
        """Held-out evaluation (collective over dp); logged as an ``eval`` record."""
        if self.steps_per_epoch:
            epoch = round(step / self.steps_per_epoch, 3)     # epochs completed
        t0 = time.perf_counter()
        result = self.data.evaluator.evaluate(eval_model(self.engine))
        return self.runlog.eval(step, epoch, result, time.perf_counter() - t0)

    def save(self):
        """Checkpoint the state after ``self.step`` into ``OUT/ckpt`` (collective, atomic)."""
        return self.ckpt.save(self.step, {
            "scheduler": self.schedule.state_dict(),
            "loader": data_state(self.data.batches, self.cfg.global_batch),
            "rng": {"seed": self.cfg.seed, "data_seed": getattr(self.cfg, "data_seed", 0)},
            "nonfinite": {"skipped": self.skipped}, "run_config": self.cfg.flags()})

    # ------------------------------------------------------------ around the loop
    def _prepare_output(self):
        # only now, with the checkpoint (if any) validated and loaded: a refused --resume
        # leaves OUT untouched; a fork (--resume A --out B) writes B only
        if not self.root:
            return
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(
            {"args": asdict(cfg), "model": asdict(self.data.config)}, indent=2) + "\n")
        write_toml(out / "config.toml", cfg.flags(),
                   header=f"resolved flags of run/{self.script}.py; rerun with --config "
                          "this-file")
        if self.resume:
            source = Path(cfg.resume)
            forked = source.resolve() != out.resolve()
            if forked:
                fork_metrics(source / "metrics.jsonl", out / "metrics.jsonl", self.step)
            print(f"resumed from {self.resume[0]} at step {self.step}"
                  + (f", writing to {out}" if forked else ""), flush=True)
        truncate_metrics(out / "metrics.jsonl", self.step)   # later steps are redone

    def _start_log(self):
        cfg, grid, model = self.cfg, self.grid, self.engine.model
        peak = blas_peak(grid.world, cfg.dtype)
        grid.ledger.clear()   # the peak's all-reduce is not part of step 1
        self._say_root(
            f"{self.data.preset}: "
            f"{param_count_text(model)}, {cfg.dtype}; world {grid.world_size} = dp {grid.dp} "
            f"x tp {grid.tp} x pp {grid.pp}, ZeRO-{cfg.zero}; global batch {cfg.global_batch}"
            f" = micro-batch {cfg.micro_batch} x accumulation {cfg.accum} x dp {grid.dp}; "
            f"{cfg.steps} steps on --data {self.data.spec}: {self.data.description}; "
            f"BLAS peak {peak / 1e9:.1f} GFLOP/s (all ranks)")
        self.runlog = RunLog(self.root, self.out / "metrics.jsonl", cfg.steps, peak,
                             cfg.log_every, progress=not cfg.no_progress)
        self.runlog.header(script=self.script, num_params=model.num_params, dtype=cfg.dtype,
                           mpi_library=describe_library(),
                           world_size=grid.world_size, dp=grid.dp, tp=grid.tp, pp=grid.pp,
                           zero=cfg.zero, global_batch=cfg.global_batch, steps=cfg.steps,
                           data_description=self.data.description,
                           train_flops_per_step=self.flops, **self.header)
        if self.intro:
            self.runlog.say(self.intro)
        if cfg.timeout:
            self.watchdog = Watchdog(cfg.timeout, grid.ledger, grid.world.comm,
                                     label=grid.coords).start()

    def _audit(self, mark):
        if not self.root:
            return
        engine, cfg = self.engine, self.cfg
        recompute = cfg.recompute_kind()
        lines = audit_tables.comm_table(
            self.step, self.grid.ledger.summary(since=mark), engine.predicted_step_bytes(),
            psi=engine.model.num_params, p=self.grid.dp, stage=cfg.zero,
            itemsize=engine.itemsize, accum=cfg.accum,
            other=audit_tables.predicted_group_bytes(engine, cfg.micro_batch, recompute))
        lines += audit_tables.model_parallel_lines(engine, cfg.micro_batch, recompute,
                                                   self.offload)
        lines += audit_tables.activation_lines(engine, cfg.micro_batch, recompute)
        if self.step == 1:
            exact, closed = engine.predicted_memory()
            lines += audit_tables.memory_table(engine.memory(), exact, closed,
                                               p=self.grid.dp, stage=cfg.zero)
        self.runlog.say("\n".join(lines))

    def _stop_nonfinite(self, record):
        what = (f"loss became {record['loss']}" if not math.isfinite(record["loss"])
                else f"gradient norm became {record['grad_norm']}")
        budget = self.cfg.skip_nonfinite
        allowed = (f" (non-finite step {self.skipped}, --skip-nonfinite allows {budget})"
                   if budget else "")
        kept = self.ckpt.last_path or "none saved yet"
        raise FloatingPointError(f"{what} at step {self.step}{allowed}; stopped, last good "
                                 f"checkpoint: {kept}")

    def _close(self):
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.preempt is not None:
            self.preempt.uninstall()
        if self.runlog is not None:
            self.runlog.close()
        self.data.close()

    def _finish(self):
        cfg = self.cfg
        if cfg.timeline:      # collective over pp
            write_timeline(self.engine, cfg.timeline, cfg.schedule, self.root)
        if self.offload is not None:
            self.offload.close()
        if self.root and self.records:
            last = f"; last checkpoint {self.ckpt.last_path}" if self.ckpt.last_path else ""
            metrics = self.out / "metrics.jsonl"
            print(f"wrote {metrics}, {self.out / 'config.toml'} and "
                  f"{self.out / 'config.json'} (plot: python run/plot.py {metrics}){last}\n"
                  + summary_line(self.records, self.runlog.evals, self.data.num_classes,
                                 resumed=bool(self.resume)), flush=True)
        if self.root and self.preempt is not None and self.preempt.stopped:
            print(f"{self.preempt.describe()}: wrote {self.ckpt.last_path}; continue with "
                  f"--resume {self.out}", flush=True)

    def _say_root(self, text):
        if self.root:
            print(text, flush=True)


def summary_line(records, evals, num_classes, resumed=False):
    """The run's last line: ``after N steps: loss A -> B (change)`` and the held-out top-1
    from the first to the last ``eval`` record of this launch.

    records, evals : this launch's train and eval records (non-empty ``records``).
    A resumed launch starts at the checkpoint's step, not at step 1 (and has no
    step-0 evaluation), so its trends name the step each end was measured at.
    A trend with one point (a one-step resume, a single evaluation) is printed as
    that one value, never as a value compared with itself.
    """
    step, first, last = records[-1]["step"], records[0]["loss"], records[-1]["loss"]

    def at(record):    # only when not implied: a fresh run counts from step 1 (eval 0)
        return f" at step {record['step']}" if resumed else ""

    def trend(a, b, text):     # "A at step i -> B at step j", or "A at step i" alone
        one = a["step"] == b["step"]
        return f"{text(a)}{at(a)}" + ("" if one else f" -> {text(b)}{at(b)}")
    since = f" (resumed at step {records[0]['step'] - 1})" if resumed else ""
    loss = trend(records[0], records[-1], lambda r: f"{r['loss']:.4f}")
    if records[0]["step"] != records[-1]["step"] and math.isfinite(first) and first > 0:
        loss += f" ({percent_change(first, last)})"
    held = ""
    if evals:
        top1 = trend(evals[0], evals[-1], lambda e: f"{e['accuracy']:.1%}")
        held = (f"; held-out top-1 {top1} on {num_classes} classes (chance "
                f"{1 / num_classes:.1%}, {evals[-1]['samples']} images)")
    return f"after {step} step{'' if step == 1 else 's'}{since}: loss {loss}{held}"


def percent_change(first, last):
    """``(last - first) / first`` as a signed percentage: one decimal below 1% in size
    (``+0.2%``, ``-0.2%``), whole percents above (``-25%``)."""
    change = (last - first) / first
    return f"{change:+.1%}" if abs(change) < 0.01 else f"{change:+.0%}"
