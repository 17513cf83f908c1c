"""fastinfer.calibrate: run a model over calibration batches and record, for every Conv2d/Linear
(ConvAct2d/LinearAct included), a symmetric int8 scale for its input and for its output."""
from __future__ import annotations

import contextlib
import inspect
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection, Dict, Iterable, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from .._args import is_integer
from .observers import DEFAULT_OBSERVER, OBSERVERS, Observer

ObserverSpec = Union[str, Callable[[], Observer]]


@dataclass
class CalibrationResult:
    """Per-layer scales, keyed by the module names of the calibrated model (model.named_modules()).

    input_scale / output_scale: amax / 127 of the layer's first input / its output (for ConvAct2d
    and LinearAct the output is taken after the fused activation, as a requantized int8 output
    needs). input_amax / output_amax: the clipping thresholds behind them. skipped: target layers
    with no scale, and why (e.g. never called, nor its weight applied by F.linear).
    """
    observer: str
    num_batches: int
    input_scale: Dict[str, float] = field(default_factory=dict)
    output_scale: Dict[str, float] = field(default_factory=dict)
    input_amax: Dict[str, float] = field(default_factory=dict)
    output_amax: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dicts, floats and strings (JSON-serializable)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"fastinfer.calibrate ({self.observer}, {self.num_batches} batches): "
                 f"{len(self.input_scale)} layer(s), {len(self.skipped)} skipped",
                 f"  {'layer':<32} {'in amax':>12} {'in scale':>12} {'out amax':>12} {'out scale':>12}"]
        for name in self.input_scale:
            lines.append(f"  {name:<32} {self.input_amax[name]:>12.5g} {self.input_scale[name]:>12.5g} "
                         f"{self.output_amax[name]:>12.5g} {self.output_scale[name]:>12.5g}")
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _observer_factory(observer: ObserverSpec) -> Tuple[str, Callable[[], Observer]]:
    if isinstance(observer, str):
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {tuple(OBSERVERS)} or a callable returning an Observer, "
                             f"got {observer!r}")
        return observer, OBSERVERS[observer]
    if callable(observer):
        probe = observer()
        if not isinstance(probe, Observer):
            raise TypeError(f"observer() must return a fastinfer Observer, got {type(probe).__name__}")
        return type(probe).__name__, observer
    raise TypeError(f"observer must be a name in {tuple(OBSERVERS)} or a callable, got {type(observer).__name__}")


def model_call(model: nn.Module, x: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """The (args, kwargs) that run ``model`` on x: a tuple/list is spread over the positional arguments; a
    mapping whose keys all name arguments of model.forward (a Hugging Face tokenizer's output: input_ids,
    attention_mask, ...), or any mapping for a forward(**kwargs) with no required positional argument, is
    passed by keyword; any other mapping (a features dict, as sentence-transformers takes) is one argument,
    as is a tensor."""
    if isinstance(x, (tuple, list)):
        return tuple(x), {}
    if isinstance(x, Mapping) and x and all(isinstance(k, str) for k in x):
        try:
            params = inspect.signature(model.forward).parameters.values()
        except (TypeError, ValueError):
            params = ()
        params = list(params)
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params) and not any(  # forward(self, **kwargs)
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)
        if set(x) <= named or takes_any:
            return (), dict(x)
    return (x,), {}


def _model_call(model: nn.Module, batch: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """A batch is x, or (x, y, ...) whose first item is x (model_call says how x is passed)."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, (Tensor, tuple, list, Mapping)):
        raise TypeError(f"a calibration batch must be a tensor, a dict of them or an (x, y) tuple, got "
                        f"{type(x).__name__}")
    return model_call(model, x)


def calibrate(model: nn.Module, data: Iterable, observer: ObserverSpec = DEFAULT_OBSERVER,
              num_batches: Optional[int] = None,
              targets: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]] = (nn.Conv2d, nn.Conv1d, nn.Linear),
              progress: bool = True, layers: Optional[Collection[str]] = None) -> CalibrationResult:
    """Runs ``model`` in eval mode under torch.inference_mode over ``data`` and returns a
    CalibrationResult with each target layer's input and output scale.

    data: an iterable of batches, each an input tensor or an (x, y) tuple (x is used); at most
    ``num_batches`` are read. observer: 'minmax' | 'percentile' | 'mse' (see observers.py), or a
    callable returning a fresh Observer (e.g. ``lambda: PercentileObserver(99.9)``). targets:
    module types to calibrate, subclasses included (ConvAct2d, LinearAct); ``layers``, if given, the
    names of the only ones to observe (fastinfer.quantize passes the layers it will quantize, so a layer
    it leaves float is not observed and cannot fail calibration). Each target gets two
    observers, fed by a forward hook: its first input and its output. A layer called several times
    per forward pools all calls, and the calls F.linear(x, layer.weight, bias) that model code makes itself with
    a Linear's weight count as calls of the layer (the quantized layer runs them: _FunctionalLinears).

    Every module's training flag is restored and every hook removed afterwards, also on error.
    Raises ValueError for empty data ("calibration data is empty"), for NaN/Inf reaching a layer
    (the message names the layer, input or output, and the batch), and when the model has no target.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(data, Tensor):
        raise TypeError("data must be an iterable of batches, not one tensor (iterating a tensor yields its rows); "
                        "pass [x] for a single batch")
    if num_batches is not None and (not is_integer(num_batches) or num_batches < 1):
        raise ValueError(f"num_batches must be None or an int >= 1, got {num_batches!r}")
    targets = targets if isinstance(targets, tuple) else (targets,)
    if not targets or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in targets):
        raise TypeError(f"targets must be nn.Module types, got {targets!r}")
    obs_name, make = _observer_factory(observer)

    found = {name: m for name, m in model.named_modules() if isinstance(m, targets)}
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError("layers must be a collection of layer names, not one string")
        if unknown := sorted(set(layers) - set(found)):
            raise ValueError(f"layers: no {' / '.join(t.__name__ for t in targets)} module named {unknown}")
        found = {name: m for name, m in found.items() if name in set(layers)}
    if not found:
        raise ValueError(f"model has no {' / '.join(t.__name__ for t in targets)} module to calibrate")
    observers: Dict[str, Tuple[Observer, Observer]] = {}
    for name, m in found.items():
        inp, out = make(), make()
        inp.name = f"layer '{name}' input ({type(inp).__name__})"
        out.name = f"layer '{name}' output ({type(out).__name__})"
        observers[name] = (inp, out)
    calls = dict.fromkeys(found, 0)
    state = {"batch": 0}

    def make_hook(name: str):
        inp, out = observers[name]

        def hook(_mod, args, kwargs, output):
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
            calls[name] += 1
            try:
                if isinstance(x, Tensor):
                    inp.observe(x)
                if isinstance(output, Tensor):
                    out.observe(output)
            except ValueError as exc:
                raise ValueError(f"calibration batch {state['batch']}: {exc}") from None
        return hook

    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    modes = {m: m.training for m in model.modules()}
    hooks = {name: make_hook(name) for name in found}
    handles = [m.register_forward_hook(hooks[name], with_kwargs=True) for name, m in found.items()]
    linears = {name: m for name, m in found.items() if isinstance(m, nn.Linear) and isinstance(m.weight, Tensor)}
    functional = _FunctionalLinears(linears, hooks) if linears else None
    if functional is not None:
        handles += functional.track_own_calls()
    batches = data if num_batches is None else itertools.islice(data, num_batches)
    total = _len_or_none(data)
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
    bar = tqdm(total=total, desc=f"calibrate ({obs_name})", unit="batch", disable=not progress)
    seen = 0
    try:
        model.eval()
        with torch.inference_mode(), functional or contextlib.nullcontext():
            for batch in batches:
                state["batch"] = seen
                args, kwargs = _model_call(model, batch)
                move = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
                model(*map(move, args), **{k: move(v) for k, v in kwargs.items()})
                seen += 1
                bar.update()
    finally:
        bar.close()
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if seen == 0:
        raise ValueError("calibration data is empty")

    result = CalibrationResult(observer=obs_name, num_batches=seen)
    for name, (inp, out) in observers.items():
        if calls[name] == 0:
            result.skipped[name] = "never called during calibration"
        elif inp.count == 0 or out.count == 0:
            result.skipped[name] = "no tensor input/output observed"
        else:
            result.input_amax[name], result.output_amax[name] = inp.amax(), out.amax()
            result.input_scale[name], result.output_scale[name] = inp.scale(), out.scale()
    return result


class _FunctionalLinears(TorchFunctionMode):
    """Observes the calls F.linear(x, layer.weight, bias) that model code makes itself with a calibrated Linear's
    weight, outside that layer's forward (torchvision's Swin attention applies its qkv and proj layers so): the
    quantized layer runs them too (LazyWeight.__torch_function__), so they are calibrated as calls of the layer,
    through the same hook. A weight's view or copy (``w[:n]``, ``w.t()``) is not the layer's: it runs in float after
    quantization as well, and is not observed."""

    def __init__(self, layers: Dict[str, nn.Linear], hooks: Dict[str, Callable]):
        super().__init__()
        self.by_weight = {id(m.weight): (m, name) for name, m in layers.items()}
        self.layers, self.hooks = layers, hooks
        self.inside = set()  # the layers whose own forward is running (their F.linear is the call itself)

    def track_own_calls(self) -> list:
        """Hooks that mark each layer's own forward (remove them as the calibration's hooks)."""
        def enter(name):
            return lambda _mod, _args: self.inside.add(name)

        def leave(name):
            return lambda _mod, _args, _out: self.inside.discard(name)
        return [h for name, m in self.layers.items()
                for h in (m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave(name)))]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            layer, name = self.by_weight.get(id(weight), (None, None))
            if layer is not None and layer.weight is weight and name not in self.inside:
                x = args[0] if args else kwargs.get("input")
                self.hooks[name](layer, (x,), {}, out)
        return out


def _len_or_none(data) -> Optional[int]:
    try:
        return len(data)
    except TypeError:  # a generator, or a DataLoader over an IterableDataset
        return None


__all__ = ["calibrate", "CalibrationResult"]
