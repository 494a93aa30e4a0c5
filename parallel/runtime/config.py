"""Validated run configurations: ``TrainConfig`` and the flags made from it.

A configuration is a dataclass, as nanoGPT's ``GPTConfig`` or torchtitan's job
config: every field is one command-line flag (``micro_batch`` is
``--micro-batch``), and its help text lives next to the field.  ``add_flags``
turns the fields into argparse flags, the way Hugging Face's
``HfArgumentParser`` does, so a script defines no flag twice.

``validate(world_size)`` is pure arithmetic on the fields and the world size,
so under MPI every rank reaches the same verdict, with the same message, before
any collective.  It raises ``ValueError`` naming the flag and the numbers; the
scripts print that as a usage error (exit 2, rank 0 only).  It returns the
config with the derived sizes filled in: ``dp`` (world / (tp x pp) unless
given), ``global_batch`` (micro-batch x dp unless given) and ``accum``
(micro-batches per optimizer step per rank).

    global batch = micro-batch x accumulation x dp   (Goyal et al. 2017, section 2)

Packages never take an argparse ``Namespace``: the scripts build a config with
``from_namespace`` and pass the dataclass on.
"""
import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from minivit.config import PRESETS, get_config
from minivit.io.sources import SYNTHETIC_KINDS, check_source, synthetic_params

from ..grid import validate_layout
from ..pipeline import SCHEDULES, check_schedule
from ..sequence_parallel import tokens_per_rank
from ..zero import check_gradient_sync


def flag(default, help, **argparse_kwargs):
    """A dataclass field that is also a command-line flag (``help``, ``choices``, ``type``...)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def positive_int(name, value, minimum=1, hint=""):
    """``value`` unless it is not an integer >= ``minimum``: ValueError naming ``--name``.

    The one positive-integer check of the runtime (flags, counts and sizes).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"--{name.replace('_', '-')} {value}: expected >= {minimum}{hint}")
    return int(value)


def accumulation_steps(global_batch, micro_batch, dp):
    """Micro-batches per optimizer step per rank: ``global / (micro x dp)``.

    Raises ValueError naming the numbers unless global_batch is a positive
    multiple of ``micro_batch x dp``.
    """
    for name, value in (("global_batch", global_batch), ("micro_batch", micro_batch)):
        positive_int(name, value)
    if global_batch % (micro_batch * dp):
        raise ValueError(f"--global-batch {global_batch} is not divisible by --micro-batch "
                         f"{micro_batch} x dp {dp} = {micro_batch * dp}: expected a multiple "
                         "of it (global = micro x accumulation x dp)")
    return global_batch // (micro_batch * dp)


@dataclass
class TrainConfig:
    """What the training runtime needs: batch, layout, optimizer, logging, checkpoints.

    Units: learning rates per step, ``bucket_mb`` in MiB, ``timeout`` in seconds.
    ``dp``, ``global_batch`` and ``accum`` are derived by :meth:`validate`.
    ``FLAGS``: the fields a script exposes as flags (None: every field).
    """
    FLAGS = None
    steps: int = flag(60, "optimizer steps to run")
    micro_batch: int = flag(16, "images per forward/backward pass (per rank)")
    global_batch: int = flag(None, "images per optimizer step over all ranks; a multiple of "
                                   "--micro-batch x dp (accumulation = global / (micro x dp)); "
                                   "default: --micro-batch x dp")
    dp: int = flag(None, "data-parallel size; default: world size / (tp x pp)")
    tp: int = flag(1, "tensor-parallel size (Megatron: heads and MLP width split)")
    pp: int = flag(1, "pipeline-parallel size (stages balanced by parameter count; "
                      "micro-batches = accumulation steps)")
    schedule: str = flag("1f1b", "pipeline schedule (with --pp > 1): gpipe, 1f1b, interleaved "
                                 "(1F1B over --virtual-stages model chunks per stage) or "
                                 "zb-h1 (zero bubble: backward split into input and weight "
                                 "halves, the weight halves fill the bubble; ZeRO 0-1)",
                         choices=SCHEDULES)
    virtual_stages: int = flag(1, "model chunks per pipeline stage for --schedule interleaved "
                                  "(Narayanan et al. 2021, section 2.2.2): >= 2, the "
                                  "micro-batches a multiple of --pp, pp x chunks <= depth")
    recompute: bool = flag(False, "activation recompute per block: keep the block input, "
                                  "rebuild the rest in backward (--recompute-granularity "
                                  "selective: only the attention probabilities)")
    recompute_granularity: str = flag(None, "with --recompute, what is rebuilt in backward "
                                            "(Megatron-LM's flag): full (what --recompute "
                                            "alone does) the whole block from its input; selective only the "
                                            "attention core's P (B, H, T, T), from its row "
                                            "log-sum-exp (Korthikanti et al. 2023, sec. 4.2)",
                                      choices=["full", "selective"])
    sequence_parallel: bool = flag(False, "with --tp > 1: shard the LayerNorm and residual "
                                          "regions along the sequence (Korthikanti et al. "
                                          "2022); all-gather/reduce-scatter replace tp's "
                                          "all-reduce; T is padded to a multiple of tp")
    offload_dir: str = flag(None, "keep the AdamW state (and the ZeRO-3 master shard) in "
                                  "numpy.memmap files in this local folder")
    timeline: str = flag(None, "PNG: Gantt chart of the last step's pipeline schedule "
                               "(with --pp > 1), with the measured bubble")
    zero: int = flag(0, "ZeRO stage over the dp group: 0 plain DP, 1 optimizer state, "
                        "2 + gradients, 3 + parameters sharded", choices=[0, 1, 2, 3])
    bucket_mb: float = flag(25.0, "gradient all-reduce bucket size in MiB (ZeRO 0-1)")
    overlap: bool = flag(False, "overlap bucket all-reduces with the last backward (ZeRO 0-1)")
    audit: bool = flag(False, "print per step the collectives (count, bytes) next to "
                              "parallel/cost.py's prediction, and the memory ledger")
    optimizer: str = flag("adamw", "optimizer", choices=["adamw", "sgd"])
    lr: float = flag(1e-3, "peak learning rate")
    min_lr: float = flag(0.0, "final learning rate of the cosine")
    warmup: int = flag(5, "linear warmup steps")
    weight_decay: float = flag(0.05, "decoupled weight decay (AdamW) or L2 (SGD); never on "
                                     "biases, LayerNorm, position embedding, class token")
    momentum: float = flag(0.9, "SGD momentum")
    clip: float = flag(1.0, "max global gradient norm; 0 disables clipping")
    label_smoothing: float = flag(0.0, "label smoothing of the cross-entropy (0 <= s < 1)")
    augment: bool = flag(False, "random-resized-crop + horizontal flip on the training images")
    mixup: float = flag(0.0, "mixup Beta(alpha, alpha) of the whole global batch (Zhang et "
                             "al. 2018; DeiT uses 0.8); 0 disables; soft targets")
    cutmix: float = flag(0.0, "cutmix Beta(alpha, alpha) box mixing (Yun et al. 2019; DeiT "
                              "uses 1.0); 0 disables; with --mixup too, one of them per step")
    mix_prob: float = flag(1.0, "probability that a step is mixed at all (with --mixup/--cutmix)")
    switch_prob: float = flag(0.5, "probability of cutmix rather than mixup when both are on")
    loader_threads: int = flag(1, "decoding/rendering threads per rank")
    eval_every: int = flag(15, "held-out evaluation every N optimizer steps (and after the "
                               "last); 0: only after the last step")
    eval_batch: int = flag(64, "images per eval forward per rank")
    seed: int = flag(0, "seed of the init and the data order")
    dtype: str = flag("float32", "parameter and activation dtype",
                      choices=["float32", "float64"])
    threads: int = flag(None, "BLAS and Numba threads per rank; default: the node's cores / "
                              "ranks on the node")
    out: str = flag(None, "output directory; default runs/<UTC timestamp>")
    log_every: int = flag(10, "print a progress line every N steps (metrics.jsonl has "
                              "every step)")
    no_progress: bool = flag(False, "no tqdm progress bar (it is drawn only when stderr is a "
                                    "terminal; redirected, only the --log-every lines)")
    save_every: int = flag(0, "write OUT/ckpt/step_XXXXXXX.h5 every K optimizer steps and "
                              "after the last; 0: only after the last; -1: never")
    keep_last: int = flag(0, "keep only the newest K checkpoints (0 keeps all)")
    resume: str = flag(None, "continue the run in OUT from its newest valid checkpoint (any "
                             "layout; corrupt files are skipped with a warning); its "
                             "OUT/config.toml is the base layer of the flags (below --config "
                             "and the command line; its resume/out and layout keys ignored); "
                             "--out defaults to OUT (another --out forks into a new folder)",
                       metavar="OUT")
    timeout: float = flag(0.0, "watchdog: abort the job (reporting which rank waits in which "
                               "collective) after S seconds without progress; must exceed the "
                               "longest step or checkpoint write; 0 disables")
    skip_nonfinite: int = flag(0, "skip (no update) up to N steps whose loss or gradient norm "
                                  "is NaN/inf, logged in metrics.jsonl; 0 stops at the first, "
                                  "naming it")
    accum: int = field(default=None, metadata={"derived": True})

    @classmethod
    def from_namespace(cls, namespace):
        """The config of the parsed flags (argparse ``Namespace``; unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in names})

    def flags(self):
        """``{flag dest: value}`` of the script's flags (for ``config.toml``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.metadata.get("derived")
                and (self.FLAGS is None or f.name in self.FLAGS)}

    def recompute_kind(self):
        """None (no recompute), ``"full"`` or ``"selective"``: the ``recompute`` argument
        of ``model_parallel.build_model`` and ``cost``'s activation formulas."""
        if not self.recompute:
            return None
        return self.recompute_granularity or "full"

    def model_shape(self):
        """``(heads, mlp_dim, depth)`` of the model, for the tp/pp checks; None: no check."""
        return None

    def model_tokens(self):
        """The model's sequence length T (for --sequence-parallel's check); None: no check."""
        return None

    def mixing(self):
        """The ``minivit.io.Mixup`` of ``--mixup/--cutmix``, or None when both are 0."""
        if not (self.mixup or self.cutmix):
            return None
        from minivit.io import Mixup
        return Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mix_prob,
                     switch_prob=self.switch_prob)

    def validate(self, world_size):
        """The config with ``dp``, ``global_batch`` and ``accum`` derived; ValueError naming
        the flag and the numbers for anything that cannot run on ``world_size`` ranks."""
        for name in ("steps", "micro_batch", "log_every", "loader_threads", "eval_batch"):
            positive_int(name, getattr(self, name))
        if self.threads is not None:
            positive_int("threads", self.threads, hint=" (omit it for cores / ranks)")
        positive_int("eval_every", self.eval_every, 0)
        dp = self.dp if self.dp is not None else world_size // (self.tp * self.pp)
        try:
            validate_layout(world_size, dp, self.tp, self.pp)
        except ValueError as exc:
            raise ValueError(f"--dp/--tp/--pp: {exc}") from None
        global_batch = self.global_batch if self.global_batch is not None \
            else self.micro_batch * dp
        accum = accumulation_steps(global_batch, self.micro_batch, dp)
        self._check_model_parallel(accum)
        self._check_optimizer()
        self._check_run_control()
        return dataclasses.replace(self, dp=dp, global_batch=global_batch, accum=accum)

    def _check_virtual_stages(self, depth):
        """--virtual-stages needs a pipeline, the interleaved schedule, and a block for
        every virtual stage (``pipeline.check_interleaved`` checks the rest)."""
        positive_int("virtual_stages", self.virtual_stages)
        if self.virtual_stages > 1 and self.pp == 1:
            also = "" if self.schedule == "interleaved" else " and --schedule interleaved"
            raise ValueError(f"--virtual-stages {self.virtual_stages} with --pp 1: expected "
                             f"--pp > 1{also} (chunks interleave across stages)")
        if depth is not None and self.pp * self.virtual_stages > depth:
            raise ValueError(f"--pp {self.pp} --virtual-stages {self.virtual_stages}: the "
                             f"model has depth={depth} blocks; expected pp x virtual stages "
                             f"= {self.pp * self.virtual_stages} <= depth (each virtual stage "
                             "holds at least one block)")

    def _check_model_parallel(self, accum):
        shape = self.model_shape()
        self._check_virtual_stages(shape[2] if shape is not None else None)
        if self.pp > 1:
            try:
                check_schedule(self.schedule, accum, self.pp, self.virtual_stages)
            except ValueError as exc:
                raise ValueError(f"--schedule {self.schedule} --pp {self.pp}: {exc}") from None
        elif self.timeline:
            raise ValueError(f"--timeline {self.timeline}: expected --pp > 1 (no pipeline "
                             "to draw)")
        if self.offload_dir and Path(self.offload_dir).exists() and \
                not Path(self.offload_dir).is_dir():
            raise ValueError(f"--offload-dir {self.offload_dir}: exists and is not a "
                             "directory; expected a folder on local disk")
        shape = self.model_shape()
        if shape is not None:
            heads, mlp, depth = shape
            for what, value in (("heads", heads), ("mlp_dim", mlp)):
                if value % self.tp:
                    raise ValueError(f"--tp {self.tp}: the model's {what}={value} is not "
                                     f"divisible by tp={self.tp}; expected a divisor of {value}")
            if self.pp > depth:
                raise ValueError(f"--pp {self.pp}: the model has depth={depth} blocks; "
                                 "expected pp <= depth (each stage holds at least one block)")
        if self.sequence_parallel:
            self._check_sequence_parallel()
        check_gradient_sync(self.zero, self.overlap, self.schedule, self.pp)
        if self.optimizer == "sgd" and self.zero:
            raise ValueError(f"--optimizer sgd --zero {self.zero}: ZeRO here shards AdamW "
                             "state; expected --optimizer adamw or --zero 0")
        if not self.bucket_mb > 0:
            raise ValueError(f"--bucket-mb {self.bucket_mb}: expected a positive size")
        if self.recompute_granularity is not None and not self.recompute:
            # silently training without the recompute the flag names would surprise
            raise ValueError(f"--recompute-granularity {self.recompute_granularity} without "
                             "--recompute: expected --recompute too (it turns recompute on; "
                             "the granularity says what is rebuilt)")

    def _check_sequence_parallel(self):
        if self.tp < 2:
            raise ValueError(f"--sequence-parallel with --tp {self.tp}: expected --tp >= 2 "
                             "(it shards the LayerNorm regions of a tensor-parallel group "
                             "along the sequence)")
        tokens = self.model_tokens()
        if tokens is not None:
            try:
                tokens_per_rank(tokens, self.tp)
            except ValueError as exc:
                raise ValueError(f"--sequence-parallel --tp {self.tp}: {exc}") from None

    def _check_optimizer(self):
        positive_int("warmup", self.warmup, 0)
        for name in ("lr", "min_lr", "weight_decay", "momentum", "clip"):
            value = getattr(self, name)    # NaN passes every "<" test, so ask for it by name
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} {value}: expected a finite "
                                 "number >= 0")
        if self.min_lr > self.lr:       # the cosine decays from --lr down to --min-lr
            raise ValueError(f"--min-lr {self.min_lr:g} > --lr {self.lr:g}: expected "
                             "--min-lr <= --lr (the cosine decays from --lr to --min-lr)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing {self.label_smoothing}: expected 0 <= s < 1")
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name} {value}: expected a Beta alpha >= 0 (0 disables)")
        for name in ("mix_prob", "switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} {value}: expected a probability "
                                 "in [0, 1]")
        if (self.mixup or self.cutmix) and self.micro_batch % 2:
            raise ValueError(f"--micro-batch {self.micro_batch} with --mixup/--cutmix: expected "
                             "an even micro-batch (samples 2k and 2k+1 of a rank are mixed)")

    def _check_run_control(self):
        if self.save_every < -1:
            raise ValueError(f"--save-every {self.save_every}: expected >= 1, 0 (final only) "
                             "or -1")
        positive_int("keep_last", self.keep_last, 0, " (0 keeps all)")
        if self.resume is not None and not Path(self.resume).is_dir():
            raise ValueError(f"--resume {self.resume}: no such run directory")
        if self.out is not None and Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out}: exists and is not a directory; expected a "
                             "folder for metrics.jsonl, config files and checkpoints")
        if not 0.0 <= self.timeout < float("inf"):
            raise ValueError(f"--timeout {self.timeout}: expected seconds >= 0 (0 disables)")
        positive_int("skip_nonfinite", self.skip_nonfinite, 0)


@dataclass
class PretrainConfig(TrainConfig):
    """``run/pretrain.py``: a model preset trained on a ``--data`` source from scratch.

    The defaults are the no-argument main job (``mpirun -n 4 python run/pretrain.py``):
    vit-micro on 10 classes of Newton fractals rendered on the fly, 150 steps of 64
    images, evaluated every 50 steps; chosen so that it visibly learns (held-out top-1
    well above the 10% of chance) within about 2 minutes on a 2-core machine.
    """
    steps: int = flag(150, "optimizer steps to run")
    warmup: int = flag(15, "linear warmup steps")
    eval_every: int = flag(50, "held-out evaluation every N optimizer steps (and after the "
                               "last); 0: only after the last step")
    model: str = flag("vit-micro", "model preset (DESIGN.md section 2)", choices=sorted(PRESETS))
    classes: int = flag(None, "number of classes; default: the preset's (10 nano/micro, "
                              "1000 others)")
    data: str = flag("synthetic:newton", "DIR (tar shards: a folder, its index.json or "
                     "one .tar), synthetic:KIND rendered on the fly (KIND in "
                     f"{', '.join(SYNTHETIC_KINDS)}; generator parameters as "
                     "synthetic:KIND:NAME=VALUE,...), digits, fashion-mnist[:DIR], or "
                     "'random' (random images with fixed labels: per-class prototype + "
                     "noise)")
    eval_data: str = flag(None, "held-out shards for --data DIR; default: the last --holdout "
                                "fraction of each class of --data")
    holdout: float = flag(0.1, "held-out fraction: of the instance ids of synthetic:KIND (a "
                               "disjoint top range), or of each class of --data DIR; 0 "
                               "disables evaluation")
    instances: int = flag(1000, "synthetic:KIND instances per class, train + held-out "
                                "(FractalDB has 1000; Newton and VisualAtom are unbounded)")
    data_seed: int = flag(0, "dataset seed of synthetic:KIND (the categories and instances)")
    eval_samples: int = flag(200, "evaluate on at most N held-out images, evenly spread over "
                                  "the classes; 0: all of them")
    random_samples: int = flag(1024, "size of one epoch of --data random, in images")

    def model_shape(self):
        preset = get_config(self.model)
        return preset.heads, preset.mlp_dim, preset.depth

    def model_tokens(self):
        return get_config(self.model).seq_len

    def validate(self, world_size):
        try:   # existence only: every rank can check it alike
            check_source(self.data)
            if self.eval_data is not None:
                check_source(self.eval_data)
            if self.data.startswith("synthetic:"):   # parameters, before any rendering
                from minivit.synth import make_generator
                make_generator(self.data.split(":")[1], 1, 8, **synthetic_params(self.data))
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(str(exc)) from None
        except TypeError as exc:   # a generator parameter of the wrong type (delta=abc)
            raise ValueError(f"--data {self.data}: a generator parameter has the wrong "
                             f"type: {exc}") from None
        positive_int("random_samples", self.random_samples)
        positive_int("eval_samples", self.eval_samples, 0, " (0: all)")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"--holdout {self.holdout}: expected 0 <= fraction < 1")
        return super().validate(world_size)


def add_flags(parser, cls, names=None, defaults=None):
    """Add one argparse flag per field of dataclass ``cls`` (``names``, else ``cls.FLAGS``,
    else every field; in that order).

    ``defaults`` overrides field defaults (a script's own, e.g. a fine-tuning lr).
    bool fields become ``--X``/``--no-X`` flags (``argparse.BooleanOptionalAction``); ``int``/``float``/``str`` fields take
    that type; ``choices`` and ``metavar`` come from the field metadata.
    """
    defaults = defaults or {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    names = names or cls.FLAGS or [n for n, f in hints.items() if not f.metadata.get("derived")]
    for name in names:
        f = hints[name]
        meta = {k: v for k, v in f.metadata.items() if k != "derived"}
        default = defaults.get(name, f.default)
        option = "--" + name.replace("_", "-")
        if f.type in (bool, "bool"):
            # --no-X too: a resumed run or a --config file can switch X on, and the
            # command line must be able to switch it off again
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default,
                                **meta)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(option, type=kind, default=default, **meta)
    return parser


@dataclass
class FinetuneConfig(TrainConfig):
    """``run/finetune.py``: a pre-trained backbone (or the same architecture from scratch)
    trained on a labelled dataset for ``epochs`` passes; ``steps`` follows from the data."""
    FLAGS = ("checkpoint", "model", "from_scratch", "linear_probe", "data", "eval_data",
             "test_data", "skip_test", "holdout", "split_seed", "labels_per_class", "eval_samples",
             "epochs", "max_steps", "micro_batch", "global_batch", "lr", "min_lr",
             "warmup", "weight_decay", "clip", "label_smoothing", "augment", "mixup", "cutmix",
             "mix_prob", "switch_prob", "seed", "dtype",
             "out", "threads", "loader_threads", "eval_batch", "log_every", "no_progress")
    checkpoint: str = flag(None, "pre-trained checkpoint: a step_XXXXXXX.h5 file, a ckpt/ "
                                 "folder or a run folder (newest valid checkpoint); with "
                                 "--from-scratch only its architecture is used")
    model: str = flag(None, "with --from-scratch and no --checkpoint: the preset to train",
                      choices=sorted(PRESETS))
    from_scratch: bool = flag(False, "baseline: same architecture, budget and seed, random "
                                     "initialisation")
    linear_probe: bool = flag(False, "linear probe: train only the new head; the backbone "
                                     "stays frozen (bitwise unchanged)")
    data: str = flag("digits", "'digits' (built in), 'fashion-mnist' (official 60k/10k "
                     "split; apt package dataset-fashion-mnist), fashion-mnist:DIR (a folder "
                     "of its four IDX files) or a folder of tar shards (run/pack.py)")
    eval_data: str = flag(None, "held-out shards; default: a stratified --holdout split of "
                                "--data")
    test_data: str = flag(None, "shards of a test set, evaluated once after training "
                                "(test_top1 in result.json); fashion-mnist brings its 10k")
    skip_test: bool = flag(False, "do not evaluate the test set (when tuning a recipe on "
                                  "the validation split); test_top1 is then null")
    holdout: float = flag(0.2, "held-out (validation) fraction per class of the training "
                               "split")
    split_seed: int = flag(0, "seed of the digits / fashion-mnist validation split and of "
                              "--labels-per-class")
    labels_per_class: int = flag(None, "keep N training images per class (seeded by "
                                       "--split-seed, stratified); default all")
    eval_samples: int = flag(2000, "evaluate the validation split on at most N images, "
                                   "evenly spread; 0: all (the test set is always whole)")
    epochs: int = flag(10, "passes over the training split")
    max_steps: int = flag(None, "stop after this many optimizer steps (smoke tests); the "
                                "schedule still spans them")
    micro_batch: int = flag(32, "images per forward per rank")
    lr: float = flag(5e-4, "peak learning rate")
    min_lr: float = flag(1e-6, "final cosine learning rate")
    warmup: int = flag(20, "linear warmup steps")
    weight_decay: float = flag(0.05, "AdamW decoupled decay")
    clip: float = flag(1.0, "max global grad norm; 0 disables")
    label_smoothing: float = flag(0.0, "0 <= s < 1")
    seed: int = flag(0, "seed of the new head (and the whole model with --from-scratch) and "
                        "of the data order")
    out: str = flag(None, "output folder; default runs/finetune-<UTC time>")
    log_every: int = flag(10, "print every N steps")
    eval_every: int = flag(0, "set from the data: one evaluation per epoch")
    save_every: int = flag(-1, "fine-tuning writes result.json, no checkpoints")

    def validate(self, world_size):
        if self.checkpoint is None and not (self.from_scratch and self.model):
            raise ValueError("--checkpoint is required (or --from-scratch --model PRESET for "
                             "a baseline without one)")
        if self.checkpoint is not None and self.model is not None:
            raise ValueError(f"--model {self.model} with --checkpoint: the checkpoint fixes "
                             "the architecture; expected only one of them")
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            raise ValueError(f"--checkpoint {self.checkpoint!r}: no such file or directory")
        try:
            check_source(self.data)
            if self.eval_data is not None:
                check_source(self.eval_data)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(str(exc)) from None
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        if self.labels_per_class is not None:
            positive_int("labels_per_class", self.labels_per_class)
        positive_int("eval_samples", self.eval_samples, 0, " (0: all)")
        if self.test_data is not None:
            try:
                check_source(self.test_data)
            except (ValueError, FileNotFoundError) as exc:
                raise ValueError(f"--test-data: {exc}") from None
        if self.linear_probe and self.zero:
            raise ValueError(f"--linear-probe --zero {self.zero}: the probe trains the head "
                             "with plain data parallelism; expected --zero 0")
        positive_int("epochs", self.epochs)
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"--holdout {self.holdout}: expected 0 < fraction < 1")
        return super().validate(world_size)
