"""Test-only: parameter counts, shapes and names of timm ViTs, built on PyTorch's
``meta`` device (no weights allocated, nothing downloaded).

timm 1.0 imports ``torchvision`` at module level (transforms, ``FrozenBatchNorm2d``)
although building a ``VisionTransformer`` needs none of it, and torchvision is not
installed beside this project's CPU torch (a torchvision wheel would pull its own
torch).  So this helper installs an import hook that answers every
``torchvision*`` import with an inert stub module *in this process only*, then
calls ``timm.create_model(name, pretrained=False, num_classes=1000)``.

    python tests/support/timm_counts.py vit_large_patch16_224 ...   # prints JSON

Returns (``timm_model``) ``{"params": int, "names": [str], "shapes": {name: [int]}}``.
Raises ImportError if torch or timm is missing.
"""
import importlib.abc
import importlib.machinery
import json
import sys
import types


def _install_torchvision_stub():
    import torch

    class _Attr(type(torch.nn.Module)):
        def __getattr__(cls, attr):          # e.g. InterpolationMode.NEAREST
            if attr.startswith("__"):
                raise AttributeError(attr)
            return f"{cls.__name__}.{attr}"

    class _Stub(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            full = f"{self.__name__}.{attr}"
            if full in sys.modules:
                return sys.modules[full]
            return _Attr(attr, (torch.nn.Module,),
                         {"__init__": lambda s, *a, **k: torch.nn.Module.__init__(s)})

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = _Stub(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    try:
        import torchvision  # noqa: F401  (the real one, if present)
    except ImportError:
        sys.meta_path.insert(0, _Finder())


def timm_model(name, num_classes=1000):
    """Parameter count, names (in order) and shapes of ``timm.create_model(name)``."""
    import torch
    _install_torchvision_stub()
    import timm
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    named = list(model.named_parameters())
    return {"params": sum(p.numel() for _, p in named), "names": [n for n, _ in named],
            "shapes": {n: list(p.shape) for n, p in named}}


if __name__ == "__main__":
    print(json.dumps({n: timm_model(n) for n in sys.argv[1:]}))
