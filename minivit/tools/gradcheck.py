"""Gradient checking by random projection and central differences.

For a module ``y = f(x; theta)`` and a fixed random cotangent ``r``, the scalar
``L = <r, f(x; theta)>`` has gradient ``backward(r)``.  Along a random direction
``v`` the directional derivative is estimated by the central difference
five-point central difference
``(-L(z+2h v) + 8 L(z+h v) - 8 L(z-h v) + L(z-2h v)) / (12 h)`` (truncation
error O(h^4), so h = 1e-4 leaves ~1e-12 relative error) and compared with
``<grad, v>``.  One direction is checked for the input and one for EACH
parameter separately, so a wrong factor on a small parameter cannot hide
behind a large one.  Use float64: in float32 the rounding error dominates.
"""
import numpy as np


def relative_error(numeric, analytic):
    """``|numeric - analytic| / max(|numeric|, |analytic|, 1e-30)``."""
    return abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-30)


def _central_difference(objective, array, direction, eps):
    """d objective / d array along direction (five-point stencil); ``array`` is
    perturbed in place and restored."""
    saved = array.copy()
    values = {}
    for k in (-2, -1, 1, 2):
        array[...] = saved + (k * eps) * direction
        values[k] = objective()
    array[...] = saved
    return (-values[2] + 8.0 * values[1] - 8.0 * values[-1] + values[-2]) / (12.0 * eps)


def check_module(module, x, seed=0, eps=1e-4, check_input=True):
    """Relative errors ``{"input": e, param_name: e, ...}`` of ``module``'s backward.

    module: has forward(x) -> (y, ctx), backward(dy, ctx) -> dx, parameters().
    x: float64 input array (not modified).
    Parameter gradients are zeroed first; the module is left with its
    original parameter values.
    """
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.float64, copy=True)
    params = module.parameters()
    y, ctx = module.forward(x)
    cotangent = rng.standard_normal(y.shape)
    for p in params:
        p.grad[...] = 0.0
    dx = module.backward(cotangent.copy(), ctx)

    def objective():
        return float(np.sum(cotangent * module.forward(x)[0]))

    errors = {}
    if check_input:
        v = rng.standard_normal(x.shape)
        errors["input"] = relative_error(_central_difference(objective, x, v, eps),
                                         float(np.sum(dx * v)))
    for p in params:
        v = rng.standard_normal(p.shape)
        errors[p.name] = relative_error(_central_difference(objective, p.data, v, eps),
                                        float(np.sum(p.grad * v)))
    return errors


def check_function(forward, backward, x, seed=0, eps=1e-4):
    """Relative error for a scalar function: ``forward(x) -> float``, ``backward(x) -> dL/dx``."""
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.float64, copy=True)
    analytic = backward(x)
    v = rng.standard_normal(x.shape)
    numeric = _central_difference(lambda: forward(x), x, v, eps)
    return relative_error(numeric, float(np.sum(analytic * v)))
