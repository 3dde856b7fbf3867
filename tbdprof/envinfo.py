"""What a rank ran on: versions, thread settings, hardware, launcher variables.

Benchmarks differ for exactly these reasons, so every rank records them. Only
variables on an allow-list (by prefix) are kept, and a value whose name looks
like a secret is redacted even then.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Any, Mapping

ENV_PREFIXES = (
    "OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_",
    "CUDA_", "NCCL_", "TORCH_", "PYTORCH_", "TORCHELASTIC_",
    "HOROVOD_", "OMPI_COMM_WORLD_", "PMI_", "SLURM_", "MASTER_", "GLOO_",
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TBDPROF_",
)
_SECRET = re.compile(r"TOKEN|SECRET|PASSW|PASSWD|KEY|CREDENTIAL|AUTH|COOKIE|SESSION", re.I)
REDACTED = "<redacted>"


def filtered_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed variables of ``env``, secrets redacted."""
    env = os.environ if env is None else env
    out = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIXES):
            continue
        out[name] = REDACTED if _SECRET.search(name) else value
    return dict(sorted(out.items()))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _platform() -> str:
    """``platform.platform()``'s string, without its ``warnings.catch_warnings()``: leaving that block resets
    the warnings registry, so a warning the script had already shown once would be printed again."""
    u = platform.uname()
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else None
    return f"{u.system}-{u.release}-{u.machine}" + (f"-with-{libc.replace(' ', '')}" if libc else "")


def _torch_info() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": bool(torch.cuda.is_available()),
        "cuda": torch.version.cuda,
    }
    try:
        info["mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except Exception:  # noqa: BLE001 - optional backend probe
        pass
    if info["cuda_available"]:
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # noqa: BLE001
            pass
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        info["dist_backend"] = str(dist.get_backend())
    return info


def _module_versions() -> dict[str, str]:
    out = {}
    for name in ("numpy", "horovod", "mpi4py", "pyarrow"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            out[name] = str(mod.__version__)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        try:
            out["mpi_library"] = mpi.Get_library_version().strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            pass
    return out


def capture(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready description of this process's software and hardware."""
    import psutil

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": _platform(),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_logical": psutil.cpu_count(logical=True),
        "cpu_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_bytes": psutil.virtual_memory().total,
        "argv": [REDACTED if _SECRET.search(a.split("=")[0]) and "=" in a else a for a in sys.argv],
        "env": filtered_env(),
    }
    info.update(_torch_info())
    info.update(_module_versions())
    if extra:
        info.update(extra)
    return info
