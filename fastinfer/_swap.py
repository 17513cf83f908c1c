"""Swapping a layer for its fastinfer version, wherever the model holds it."""
from __future__ import annotations

from typing import List

from torch import nn


def replace_module(model: nn.Module, name: str, new: nn.Module) -> List[str]:
    """Puts `new` in place of the module at `name` and at every other name the same module object is
    registered under (`self.k = self.q`: one layer, two attributes, which stays one layer). Swapping under
    the first name only left the other a float layer that no report mentioned. Returns the names."""
    old = model.get_submodule(name)
    names = [n for n, m in model.named_modules(remove_duplicate=False) if m is old and n]
    for n in names:
        parent, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return names
