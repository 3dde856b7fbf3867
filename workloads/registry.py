"""The workload registry: names on the command line -> workload classes."""

from __future__ import annotations

import importlib

from .base import Workload

# name -> module that defines and registers it (imported on first use, so
# listing workloads does not build models).
_MODULES = {
    "resnet50": "tbdprof.workloads.resnet",
    "inception_v3": "tbdprof.workloads.inception",
    "seq2seq": "tbdprof.workloads.seq2seq",
    "transformer": "tbdprof.workloads.transformer",
    "faster_rcnn": "tbdprof.workloads.faster_rcnn",
    "deepspeech2": "tbdprof.workloads.deepspeech2",
    "wgan": "tbdprof.workloads.wgan",
    "a3c": "tbdprof.workloads.a3c",
}
_REGISTRY: dict[str, type[Workload]] = {}


class UnknownWorkload(KeyError):
    pass


def register(cls: type[Workload]) -> type[Workload]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_MODULES)


def get(name: str) -> Workload:
    """An instance of the workload registered as ``name``."""
    if name not in _MODULES:
        raise UnknownWorkload(f"unknown workload {name!r}; known: {', '.join(names())}")
    if name not in _REGISTRY:
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]()
