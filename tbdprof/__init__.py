"""tbdprof: a distributed deep-learning training profiler.

Public API::

    from tbdprof import Profiler, instrument
    prof = Profiler(out="runs")           # rank, world and launcher from the environment
    with prof:
        prof.watch(model, optimizer)      # memory breakdown, DDP allreduce spans
        for batch in prof.loader(loader): # data wait, step boundaries, samples per step
            with prof.phase("forward"): ...

``instrument(prof, model, optimizer)`` records forward/backward/optimizer
through hooks instead of ``phase`` blocks.

The names are imported when first used: ``import tbdprof`` (or any of its pure
modules, ``tbdprof.schema``, ``tbdprof.store``, ``tbdprof.clock``, as analysis
does) loads neither the recorder (psutil, samplers, threads) nor torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute), imported on first access
_LAZY = {
    "Profiler": ("profiler", "Profiler"),
    "RunDirError": ("profiler", "RunDirError"),
    "LaunchEnvError": ("ranks", "LaunchEnvError"),
    "RankInfo": ("ranks", "RankInfo"),
    "detect_rank": ("ranks", "detect"),
    "SCHEMA_VERSION": ("schema", "SCHEMA_VERSION"),
    "UserError": ("errors", "UserError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def instrument(prof, model, optimizer):
    """Record forward, backward and optimizer phases through hooks (see :mod:`tbdprof.phase_hooks`)."""
    from .phase_hooks import instrument as _instrument

    return _instrument(prof, model, optimizer)


__all__ = ["Profiler", "RunDirError", "LaunchEnvError", "RankInfo", "detect_rank", "instrument", "SCHEMA_VERSION", "UserError"]
