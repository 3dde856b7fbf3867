"""Figure 2: cost of one span on the training thread (microbenchmark).

    python tests/perf/span_cost.py [--json] [--against DIR]

Times ``with prof.phase(name): pass`` in a tight loop against an empty loop
of the same shape, with the sampler and writer threads running, and reports
the difference per span. Flushing happens on the writer thread only.

``--against DIR`` compares with another version of the recorder in the same
process: DIR holds its ``tbdprof`` package (for the last commit:
``git archive HEAD tbdprof | tar -x -C DIR``). Both Profilers record at once;
blocks of spans (and of ``prof.loader()`` steps, step observers left out) alternate in random order
with empty blocks, and a bootstrap over blocks gives the 90 % interval of the
paired difference, in ns.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

import tbdprof  # noqa: E402


def per_span_us(n: int = 200_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        prof = tbdprof.Profiler(out=tmp, run_id="spans", flush_s=1.0)
        with prof:
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                _spans(prof, n)
                spans = time.perf_counter() - t
                empty = _empty(n)
                samples.append((spans - empty) / n * 1e6)
        return statistics.median(samples)


def _spans(prof, n: int) -> None:
    for _ in range(n):
        with prof.phase("forward"):
            pass


def _steps(prof, n: int) -> None:
    for _ in prof.loader([None] * n):
        pass


def _empty(n: int) -> float:
    null = _Null()
    t = time.perf_counter()
    for _ in range(n):
        with null:
            pass
    return time.perf_counter() - t


def _empty_steps(n: int) -> float:
    t = time.perf_counter()
    for _ in iter([None] * n):
        pass
    return time.perf_counter() - t


class _Null:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _load(folder: Path, name: str):
    """The ``tbdprof`` package in ``folder``, imported as ``name`` (its imports are relative)."""
    init = folder / "tbdprof" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compare(against: Path, blocks: int = 30, n: int = 20_000, seed: int = 0) -> dict:
    """ns per span and per loader step, this recorder vs the one in ``against``, interleaved in one process."""
    other = _load(against, "tbdprof_against")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        profs = {"this": tbdprof.Profiler(out=tmp, run_id="this", flush_s=1.0, clock_sync=False),
                 "against": other.Profiler(out=tmp, run_id="against", flush_s=1.0, clock_sync=False)}
        for p in profs.values():
            p.start()
            # the Profiler's own step path: its observers (progress watch, deep windows) are other objects' costs
            p._step_observers.clear()
        try:
            result = {}
            for what, body, empty in (("span", _spans, _empty), ("step", _steps, _empty_steps)):
                ns: dict[str, list[float]] = {k: [] for k in profs}
                for k, p in profs.items():
                    body(p, n)  # warm
                for _ in range(blocks):
                    order = list(profs)
                    rng.shuffle(order)
                    base = empty(n)
                    for k in order:
                        t = time.perf_counter()
                        body(profs[k], n)
                        ns[k].append((time.perf_counter() - t - base) / n * 1e9)
                diffs = [a - b for a, b in zip(ns["this"], ns["against"])]
                boot = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
                result[what] = {"this_ns": round(statistics.median(ns["this"]), 1),
                                "against_ns": round(statistics.median(ns["against"]), 1),
                                "diff_ns": round(statistics.median(diffs), 1),
                                "diff_ci90_ns": [round(boot[100], 1), round(boot[1899], 1)]}
        finally:
            for p in profs.values():
                p.close()
    return {**result, "blocks": blocks, "per_block": n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--against", type=Path, help="a folder holding another version's tbdprof package")
    p.add_argument("--blocks", type=int, default=30)
    args = p.parse_args(argv)
    if args.against is None:
        emit({"span_cost_us": per_span_us()}, args.json)
        return 0
    if not (args.against / "tbdprof" / "__init__.py").is_file():
        print(f"span_cost.py: error: {args.against} holds no tbdprof package", file=sys.stderr)
        return 2
    if args.blocks < 2:
        print("span_cost.py: error: --blocks must be at least 2", file=sys.stderr)
        return 2
    emit(compare(args.against, args.blocks), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
