"""The 3-D process grid: tensor (tp), data (dp) and pipeline (pp) groups.

Rank order follows Megatron-LM (Shoeybi et al. 2019; Narayanan et al. 2021,
section 3.3): tp varies fastest, then dp, then pp.  Neighbouring world ranks,
which on a real cluster share a node and its fast links, therefore form the
tensor-parallel groups that communicate every layer::

    world_rank = tp_rank + tp * (dp_rank + dp * pp_rank)

Example, world 8 = tp 2 x dp 2 x pp 2::

    pp_rank 0:  dp 0 -> ranks [0 1]   dp 1 -> ranks [2 3]     (each [..] is a tp group)
    pp_rank 1:  dp 0 -> ranks [4 5]   dp 1 -> ranks [6 7]
    dp groups:  {0,2} {1,3} {4,6} {5,7}      pp groups: {0,4} {1,5} {2,6} {3,7}

The grid is an explicit object passed to whoever needs it; there is no
module-level singleton.
"""
from .comm import Communicator, Ledger


def _check_size(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")


def grid_coords(world_rank, dp, tp=1, pp=1):
    """``(tp_rank, dp_rank, pp_rank)`` of ``world_rank`` (tp fastest, then dp, then pp)."""
    return world_rank % tp, (world_rank // tp) % dp, world_rank // (tp * dp)


def grid_rank(tp_rank, dp_rank, pp_rank, dp, tp=1):
    """World rank of grid coordinates; the inverse of :func:`grid_coords`."""
    return tp_rank + tp * (dp_rank + dp * pp_rank)


def validate_layout(world_size, dp, tp=1, pp=1):
    """Raise ValueError unless ``dp * tp * pp == world_size``.

    Pure arithmetic with no communication, so every rank reaches the same
    verdict with the same message before any collective is posted (a rank that
    raised while the others waited in a collective would hang the job).
    """
    _check_size("dp", dp)
    _check_size("tp", tp)
    _check_size("pp", pp)
    if dp * tp * pp != world_size:
        raise ValueError(
            f"process grid dp={dp} x tp={tp} x pp={pp} = {dp * tp * pp} ranks, but the "
            f"world has {world_size} ranks: expected dp*tp*pp == world size")


class ProcessGrid:
    """Split a world communicator into tp, dp and pp groups.

    Parameters
    ----------
    world_comm : mpi4py ``Intracomm`` (usually ``MPI.COMM_WORLD``).
    dp, tp, pp : group sizes, positive integers with ``dp*tp*pp == world size``.
    ledger : :class:`~minivit.parallel.comm.Ledger` that records every call made
        through the grid's communicators; a fresh one if omitted.

    Attributes
    ----------
    world, tp_group, dp_group, pp_group : instrumented :class:`Communicator`
        (group names ``"world"``, ``"tp"``, ``"dp"``, ``"pp"``).
    rank, world_size : world rank and size.
    tp_rank, dp_rank, pp_rank : coordinates (equal to the rank inside each group).
    prev_stage, next_stage : world rank of the previous / next pipeline stage
        with the same (tp_rank, dp_rank), or None at the first / last stage.

    Raises ValueError (identical on every rank, before any collective) when
    ``dp*tp*pp`` differs from the world size or a size is not a positive int.
    """

    def __init__(self, world_comm, dp, tp=1, pp=1, ledger=None):
        self.world_size = world_comm.Get_size()
        validate_layout(self.world_size, dp, tp, pp)
        self.dp, self.tp, self.pp = dp, tp, pp
        self.rank = world_comm.Get_rank()
        self.tp_rank, self.dp_rank, self.pp_rank = grid_coords(self.rank, dp, tp, pp)
        self.ledger = Ledger() if ledger is None else ledger
        # Split colours: every rank sharing the *other two* coordinates lands in
        # the same group; the key orders the group by the coordinate itself, so
        # the group rank equals the grid coordinate.
        tp_comm = world_comm.Split(color=self.dp_rank + dp * self.pp_rank, key=self.tp_rank)
        dp_comm = world_comm.Split(color=self.tp_rank + tp * self.pp_rank, key=self.dp_rank)
        pp_comm = world_comm.Split(color=self.tp_rank + tp * self.dp_rank, key=self.pp_rank)
        self.world = Communicator(world_comm, "world", self.ledger)
        self.tp_group = Communicator(tp_comm, "tp", self.ledger)
        self.dp_group = Communicator(dp_comm, "dp", self.ledger)
        self.pp_group = Communicator(pp_comm, "pp", self.ledger)
        self._owned = (tp_comm, dp_comm, pp_comm)
        self.prev_stage = (None if self.is_first_stage else
                           grid_rank(self.tp_rank, self.dp_rank, self.pp_rank - 1, dp, tp))
        self.next_stage = (None if self.is_last_stage else
                           grid_rank(self.tp_rank, self.dp_rank, self.pp_rank + 1, dp, tp))

    @property
    def is_first_stage(self):
        """True on pipeline stage 0 (it reads the images)."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self):
        """True on the last pipeline stage (it computes the loss)."""
        return self.pp_rank == self.pp - 1

    @property
    def coords(self):
        """Short label such as ``"rank 5 (tp 1, dp 0, pp 1)"`` for log prefixes."""
        return f"rank {self.rank} (tp {self.tp_rank}, dp {self.dp_rank}, pp {self.pp_rank})"

    def free(self):
        """Release the split communicators (the world communicator is not owned)."""
        for comm in self._owned:
            comm.Free()
        self._owned = ()

    def __repr__(self):
        return (f"ProcessGrid(world={self.world_size}, dp={self.dp}, tp={self.tp}, "
                f"pp={self.pp}, {self.coords})")
