"""Loads the compiled extension (which registers torch.ops.fastinfer.*) with a helpful error."""
import torch  # noqa: F401  (loads libc10/libtorch_cpu first: _C links them but carries no rpath to them)

try:
    from fastinfer import _C  # noqa: F401  (import runs the TORCH_LIBRARY registrations)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fastinfer's compiled extension fastinfer._C could not be loaded. Build it with "
        "`pip install -e . --no-build-isolation` (or `make test` / `make demo`), using the same "
        f"torch you import now. Original error: {e}"
    ) from e
