"""Parameters, deterministic initialisation and flat parameter/gradient buffers.

``FlatParams`` is the FlatParameter idea of FSDP (Zhao et al., "PyTorch FSDP",
VLDB 2023, section 3.2) and of DeepSpeed ZeRO's flattened partitions: every
parameter's ``.data`` and ``.grad`` are views into one contiguous 1-D buffer,
so data parallelism all-reduces one array and ZeRO shards are plain slices.
Names are kept in ``offsets`` so checkpoints stay layout-independent.
"""
import hashlib

import numpy as np

INIT_KINDS = ("trunc_normal", "zeros", "ones")
INIT_STD = 0.02     # ViT / timm ``trunc_normal_(std=.02)``
TRUNC_AT = 2.0      # truncate at +-2 std (timm truncates at +-2 absolute; +-2 std is the
                    # classical truncated normal and differs only in tails below 1e-40)


def name_seed(seed, name):
    """A 128-bit integer from ``(seed, name)``; stable across processes and runs.

    Python's ``hash()`` is salted per process, so a digest is used instead.
    """
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:16], "little")


def init_tensor(seed, name, shape, kind, dtype):
    """The full initial value of parameter ``name``: an array of ``shape`` and ``dtype``.

    kind: "trunc_normal" (std 0.02, resampled until inside +-2 std),
        "zeros" (biases) or "ones" (LayerNorm scale).
    The random stream depends only on ``(seed, name)``, never on rank or
    layout; values are drawn in float64 then cast, so float32 and float64
    models start from the same numbers up to rounding.  A tensor-parallel or
    ZeRO shard is ``init_tensor(...)[slice]`` (see ``init_shard``).
    Raises ValueError for an unknown kind.
    """
    shape = tuple(int(s) for s in shape)
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if kind == "ones":
        return np.ones(shape, dtype=dtype)
    if kind != "trunc_normal":
        raise ValueError(f"init kind {kind!r}: expected one of {INIT_KINDS}")
    rng = np.random.Generator(np.random.PCG64(name_seed(seed, name)))
    n = int(np.prod(shape, dtype=np.int64))
    values = rng.standard_normal(n)
    bad = np.abs(values) > TRUNC_AT
    while bad.any():  # rejection sampling keeps the stream a pure function of (seed, name)
        values[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(values) > TRUNC_AT
    return (values * INIT_STD).reshape(shape).astype(dtype)


def init_shard(seed, name, shape, kind, dtype, index):
    """The shard ``index`` (a slice or tuple of slices) of parameter ``name``'s init.

    Building the full tensor and slicing it is what makes a sharded model
    start bit-identical to the unsharded one, for any number of shards.
    """
    return np.ascontiguousarray(init_tensor(seed, name, shape, kind, dtype)[index])


class Parameter:
    """A named trainable array.

    name: timm-style dotted name, e.g. ``blocks.0.attn.qkv.weight``.
    data, grad: arrays of ``shape`` (grad starts at zero; backward passes
        accumulate into it with ``+=``).  Both become views into a
        ``FlatParams`` buffer once the parameter is flattened.
    decay: whether AdamW's decoupled weight decay applies (False for biases,
        LayerNorm parameters, position embedding and class token).
    """

    def __init__(self, name, data, decay):
        self.name = name
        self.data = data
        self.grad = np.zeros_like(data)
        self.decay = bool(decay)

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.data.dtype}, decay={self.decay})"


def make_param(seed, name, shape, kind, dtype, decay):
    """A ``Parameter`` initialised by ``init_tensor(seed, name, shape, kind, dtype)``."""
    return Parameter(name, init_tensor(seed, name, shape, kind, dtype), decay)


class FlatParams:
    """One contiguous 1-D ``data`` and ``grad`` buffer holding ``params`` in order.

    params: list of Parameter (names unique); their current values are copied
        in and each parameter's ``.data``/``.grad`` is rebound to a view.
    dtype: buffer dtype (float32 or float64).
    Attributes: ``data``, ``grad`` (1-D, length ``numel``), ``decay_mask``
    (1-D numpy bool, 1 byte per parameter, True where weight decay applies;
    the optimizers read it as the 0/1 factor of the decay), ``offsets`` (dict
    name -> (start, stop, shape), in buffer order), ``params`` (list),
    ``dtype``, ``numel``.
    Raises ValueError on duplicate names or an empty list.
    """

    def __init__(self, params, dtype):
        params = list(params)
        self._set_offsets(params, [p.shape for p in params], dtype)
        start = self.numel
        self.data = np.empty(start, dtype=dtype)
        self.grad = np.zeros(start, dtype=dtype)
        # bool, not the model dtype: a quarter (float32) or an eighth (float64)
        # of the bytes, for the same bitwise update (minivit.optim)
        self.decay_mask = np.zeros(start, dtype=bool)
        for p in params:
            lo, hi, shape = self.offsets[p.name]
            self.data[lo:hi] = p.data.ravel()
            self.decay_mask[lo:hi] = p.decay
            p.data = self.data[lo:hi].reshape(shape)
            p.grad = self.grad[lo:hi].reshape(shape)

    @classmethod
    def layout(cls, params, shapes, dtype):
        """The offsets of ``FlatParams(params, dtype)`` without allocating its buffers.

        shapes : one shape per parameter, in order (the parameters' arrays
        need not exist).  ``data``, ``grad`` and ``decay_mask`` are None: the
        model's values live elsewhere, e.g. in the ZeRO-3 shards of a model
        built unit by unit (``minivit.parallel.shard``).
        Raises ValueError as the constructor does.
        """
        flat = cls.__new__(cls)
        flat._set_offsets(list(params), shapes, dtype)
        flat.data = flat.grad = flat.decay_mask = None
        return flat

    def _set_offsets(self, params, shapes, dtype):
        if not params:
            raise ValueError("FlatParams needs at least one Parameter, got none")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate parameter names {dup}: expected unique names")
        self.dtype = np.dtype(dtype)
        self.params = params
        self.offsets = {}
        start = 0
        for p, shape in zip(params, shapes):
            size = int(np.prod(shape, dtype=np.int64))
            self.offsets[p.name] = (start, start + size, tuple(shape))
            start += size
        self.numel = start

    def zero_grad(self):
        self.grad.fill(0)

    def named_arrays(self, buffer):
        """``{name: view of buffer}`` for a 1-D array laid out like ``data``."""
        if buffer.shape != (self.numel,):
            raise ValueError(f"buffer shape {buffer.shape}: expected ({self.numel},)")
        return {n: buffer[lo:hi].reshape(s) for n, (lo, hi, s) in self.offsets.items()}

    def state_dict(self):
        """``{name: copy of the parameter}``; independent of any parallel layout."""
        return {n: a.copy() for n, a in self.named_arrays(self.data).items()}

    def load_state_dict(self, state):
        """Copy ``{name: array}`` into the buffer; raises ValueError on a mismatch."""
        missing = sorted(set(self.offsets) - set(state))
        extra = sorted(set(state) - set(self.offsets))
        if missing or extra:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {extra}")
        for name, view in self.named_arrays(self.data).items():
            value = np.asarray(state[name])
            if value.shape != view.shape:
                raise ValueError(f"{name}: shape {value.shape}, expected {view.shape}")
            view[...] = value
