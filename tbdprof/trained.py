"""Which modules are being trained: those holding parameters that an optimizer updates.

The zero-code recorder must time the model the user trains, not the last
module that happened to run: a loss module (``nn.CrossEntropyLoss()``), a
metric, an EMA copy or a frozen teacher also run forwards. The parameters
every optimizer was built with decide, whatever wraps it (Horovod's
``DistributedOptimizer``, Lightning's and Accelerate's optimizer wrappers all
hold a plain ``torch.optim.Optimizer`` built from the model's parameters).

:class:`TrainedParams` learns each optimizer's parameters when its param
groups are added (``Optimizer.add_param_group``, which ``__init__`` calls,
wrapped once per process by :meth:`install`) or at its first step, and
answers :meth:`is_trained` for a module from a per-module cache.
"""

from __future__ import annotations

import weakref
from typing import Callable


class TrainedParams:
    """The parameters of every optimizer of this process, and which modules hold some of them."""

    def __init__(self):
        self._ids: set[int] = set()
        self._optimizers: "weakref.WeakSet" = weakref.WeakSet()
        self._last: "weakref.ref | None" = None  # the optimizer knows() said yes to last: asked at its every step
        self._version = 0
        # id(module) -> (weak reference to it, version, trained): a plain dict lookup on the hot path (a loss
        # module's every call), where a WeakKeyDictionary makes a weak reference per lookup
        self._cache: dict[int, tuple] = {}

    def add(self, optimizer) -> None:
        """Learn ``optimizer``'s parameters (again, after a param group was added)."""
        ids = {id(p) for g in getattr(optimizer, "param_groups", ()) for p in g.get("params", ())}
        self._optimizers.add(optimizer)
        if not ids <= self._ids:
            self._ids |= ids
            self._version += 1

    def knows(self, optimizer) -> bool:
        """True when ``optimizer``'s parameters are known."""
        if self._last is not None and self._last() is optimizer:
            return True
        if optimizer in self._optimizers:
            self._last = weakref.ref(optimizer)
            return True
        return False

    def is_trained(self, module) -> bool:
        """True when ``module`` (or a submodule) holds a parameter some optimizer updates."""
        key = id(module)
        hit = self._cache.get(key)
        if hit is not None and hit[1] == self._version and hit[0]() is module:
            return hit[2]
        trained = any(id(p) in self._ids for p in module.parameters())
        cache = self._cache
        self._cache[key] = (weakref.ref(module, lambda _, key=key: cache.pop(key, None)), self._version, trained)
        return trained

    def optimizers_of(self, module) -> list:
        """The known optimizers that update some parameter of ``module``."""
        ids = {id(p) for p in module.parameters()}
        return [o for o in list(self._optimizers) if any(id(p) in ids for g in o.param_groups for p in g["params"])]

    def install(self) -> Callable[[], None]:
        """Wrap ``torch.optim.Optimizer.add_param_group`` so that every optimizer built from now on is known;
        returns the function that undoes it."""
        from torch.optim import Optimizer

        original = Optimizer.add_param_group
        registry = self

        def add_param_group(self, param_group):
            result = original(self, param_group)
            try:
                registry.add(self)
            except Exception:  # noqa: BLE001 - never break building an optimizer
                pass
            return result

        add_param_group.__wrapped__ = original
        Optimizer.add_param_group = add_param_group
        return lambda: setattr(Optimizer, "add_param_group", original)
