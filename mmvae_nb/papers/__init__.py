"""The papers' reproductions: one module per chapter's "Reproduction" section (`#| export papers.<name>`), each
registering its experiments in `mmvae_nb.experiments.EXPERIMENTS`.

Written by hand (nbdev exports modules, not a package's `__init__.py`): importing the package imports every module
in it, in name order, so `mmvae_nb.experiments` (which imports this package last) and `mmvae-nb list` find every
chapter's experiments without a list to keep up to date.
"""
import importlib, pkgutil

__all__ = []
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith('_'): importlib.import_module(f"{__name__}.{_module.name}")
