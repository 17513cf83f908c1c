"""Pruning workflows: structured (channel) pruning that really shrinks the network, and weight
sparsity (unstructured, 2:4, block) with masks, converted to sparse kernels by sparsify."""
from .api import SparsifyReport, prune, sparsify
from .masks import SparsityReport, prune_weights, remove_masks, sparsity_report
from .structured import PruningError, PruningReport, apply_plan, load_pruned, save_pruned

__all__ = ["prune", "sparsify", "SparsifyReport", "prune_weights", "remove_masks", "sparsity_report",
           "SparsityReport", "PruningReport", "PruningError", "save_pruned", "load_pruned", "apply_plan"]
