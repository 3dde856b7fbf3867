"""tbdprof's interpreter start-up hook: first on PYTHONPATH only under ``tbdprof profile``.

It waits for the process to import torch, then hands over to
:func:`tbdprof.autoprofile.install`; then it runs the ``sitecustomize`` this
one shadows, if there is one. Standard library only: every Python process of
the profiled command loads it, most of them never import torch.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _install_after(exec_module):
    def exec_then_install(module):
        exec_module(module)
        try:
            from tbdprof import autoprofile

            autoprofile.install()
        except Exception as e:  # noqa: BLE001 - e.g. tbdprof not importable by this interpreter
            if os.environ.get("TBDPROF_DEBUG"):
                print(f"tbdprof: no automatic profiling ({e.__class__.__name__}: {e})", file=sys.stderr)

    return exec_then_install


class _TorchImportHook(importlib.abc.MetaPathFinder):
    """Finds torch with the other finders and wraps its loader to call tbdprof once torch is initialised."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = _install_after(spec.loader.exec_module)
        return spec


def _chain() -> None:
    """Run the sitecustomize module this one shadows (its errors surface as they would without tbdprof)."""
    paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", paths)
    if spec is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if os.environ.get("TBDPROF_AUTO") == "1" and "torch" not in sys.modules:
    sys.meta_path.insert(0, _TorchImportHook())
_chain()
