"""Pruning workflows. Structured (channel) pruning that really shrinks the network."""
from .structured import (PruningError, PruningReport, apply_plan, load_pruned, prune, save_pruned)

__all__ = ["prune", "PruningReport", "PruningError", "save_pruned", "load_pruned", "apply_plan"]
