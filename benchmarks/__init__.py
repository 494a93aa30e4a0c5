"""Reference implementations used only by ``run/bench.py`` (PyTorch is optional)."""
