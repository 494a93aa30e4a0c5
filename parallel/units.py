"""The unit protocol, and the one base class of the wrappers that add to a unit.

A ViT is a list of units, ``model.units = [embed, blocks..., head]``; each has
``forward(x) -> (y, ctx)``, ``backward(dy, ctx) -> dx`` (accumulating into its
parameters' ``grad``), ``parameters()`` and a ``name``.  The parallel schemes
add work *around* those calls, per unit, without changing the model's code:

* ``zero.ShardedUnit``: ZeRO-3 all-gathers the unit's parameters before its
  forward and backward; ZeRO-2/3 reduce-scatter its gradient after backward;
* ``data_parallel.GradReadyUnit``: DP overlap posts the all-reduce of every
  gradient bucket the unit's backward has finished;
* ``recompute.Recompute``: keeps only the unit input and re-runs the forward
  inside backward.

The protocol's split backward (``backward_input(dy, ctx) -> (dx, wctx)`` and
``backward_weight(wctx)``, see ``minivit.layers``) is delegated too; the
wrappers whose communication needs the whole backward (``ShardedUnit``,
``GradReadyUnit``) refuse it, and the configuration rejects those layouts
with the zero-bubble schedule before any step.

They all derive from :class:`UnitWrapper`, and a wrapper is put in place by
one explicit call, :func:`wrap_units`, which the step engine makes where a
reader sees it (``runtime.step.StepEngine.__init__``).
"""


class UnitWrapper:
    """A unit that runs ``unit`` and adds work before or after it.

    unit : the wrapped unit (the protocol above).  index : its position in
    ``model.units`` (flat-buffer order).  Subclasses override ``forward`` and/or
    ``backward``; the defaults only delegate.
    """

    def __init__(self, unit, index=None):
        self.unit, self.index = unit, index
        self.name = getattr(unit, "name", f"unit{index}")

    def parameters(self):
        return self.unit.parameters()

    def forward(self, x):
        return self.unit.forward(x)

    def backward(self, dy, ctx):
        return self.unit.backward(dy, ctx)

    def backward_input(self, dy, ctx):
        return self.unit.backward_input(dy, ctx)

    def backward_weight(self, wctx):
        self.unit.backward_weight(wctx)


def wrap_units(model, wrapper, *args):
    """Replace each ``model.units[u]`` by ``wrapper(unit, u, *args)``; returns ``model``.

    The wrapped units keep their parameters, so ``model.flat`` and
    ``model.unit_ranges()`` are unchanged.
    """
    model.units = [wrapper(unit, u, *args) for u, unit in enumerate(model.units)]
    return model
