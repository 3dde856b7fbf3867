"""Hooks that tbdprof puts on a script's own modules, made safe to copy.

A hook stored on a module travels with it: ``copy.deepcopy(model)`` (an EMA
or "best model" copy, ``AveragedModel``) deep-copies a bound method's object,
here the recorder with its threads and locks, and fails; ``torch.save(model)``
pickles it and fails the same way. :class:`CopySafeHook` calls its function on
the module it was registered on, and turns into a hook that does nothing in a
copy: the copy is not the model being recorded.
"""

from __future__ import annotations

import functools


def nothing(*_args) -> None:
    """What a copied hook does."""
    return None


class CopySafeHook(functools.partial):
    """``CopySafeHook(fn)`` calls ``fn`` as a module hook (no Python frame of its own: a ``functools.partial``);
    a deep copy or an unpickled copy of it calls :func:`nothing`."""

    def __deepcopy__(self, memo) -> "CopySafeHook":
        return CopySafeHook(nothing)

    def __reduce__(self):
        return CopySafeHook, (nothing,)
