"""tbdprof: a distributed deep-learning training profiler.

Public API::

    from tbdprof import Profiler, instrument
    prof = Profiler(out="runs")           # rank, world and launcher from the environment
    with prof:
        prof.watch(model, optimizer)      # memory breakdown, DDP allreduce spans
        for batch in prof.loader(loader): # data wait, step boundaries, samples per step
            with prof.phase("forward"): ...

``instrument(prof, model, optimizer)`` records forward/backward/optimizer
through hooks instead of ``phase`` blocks. Importing tbdprof does not import torch.
"""

from .profiler import Profiler, RunDirError
from .ranks import LaunchEnvError, RankInfo, detect as detect_rank
from .schema import SCHEMA_VERSION

__version__ = "0.1.0"


def instrument(prof, model, optimizer):
    """Record forward, backward and optimizer phases through hooks (see :mod:`tbdprof.phase_hooks`)."""
    from .phase_hooks import instrument as _instrument

    return _instrument(prof, model, optimizer)


__all__ = ["Profiler", "RunDirError", "LaunchEnvError", "RankInfo", "detect_rank", "instrument", "SCHEMA_VERSION"]
