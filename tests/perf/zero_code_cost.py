"""What the recorder's training-thread paths add per step, in microseconds: the zero-code hooks and the API.

One process, one training loop with a DataLoader, loss, backward and SGD,
one CPU thread: ``--workload tiny`` (default: a 4-layer 64-wide MLP, about
0.5 ms a step) or ``mlp`` (the ~5 ms MLP of ``overhead.py``, whose large
matrix products evict the caches between the recorder's calls, as a real
step does: each call then costs several times what it costs back to back;
its block medians vary by some hundreds of microseconds on a shared
machine, so it needs a quiet one and many blocks).
Blocks of steps alternate in random order between modes, and a bootstrap
over blocks gives the 90 % interval of the paired difference of block
medians of the training thread's CPU time per step (its own clock: what the
recorder's code adds, not what other processes on a busy machine take).
Modes:

- ``none``: the loop;
- ``zero_code``: the hooks ``tbdprof profile`` installs (an ``AutoRecorder``
  installed and removed between blocks; its Profiler keeps recording);
- ``api``: ``prof.loader``, three ``prof.phase`` spans and ``prof.watch`` of
  one long-lived Profiler (every default on but the sampling rate);
- ``empty_hooks``: PyTorch's own cost for two empty global module hooks, the
  floor of a recorder that keeps global hooks in through the model's forward
  (the zero-code recorder takes its one out there).

Each mode trains its own model object and optimizer over the same layers
(the same weight tensors: copies would place them apart in memory, and
the matrix products run at different speeds), so that no recorder's hooks
on a model or optimizer fire in another mode's blocks.
The recorders sample once in 5 s: their threads run through every block
alike and would only add noise here (``gil_share.py`` measures them). Also, counted rather than timed (the
same on a busy machine), the Python calls per step each recorder adds
(``sys.setprofile``).

``--against DIR`` adds ``zero_code_against`` and ``api_against``: the same
paths of another version of the recorder in the same process (DIR holds its
``tbdprof`` package, e.g. ``git archive HEAD tbdprof | tar -x -C DIR``), and
the paired difference of each mode against its ``_against`` twin.

    python tests/perf/zero_code_cost.py [--workload tiny|mlp] [--blocks 24] [--steps 60] [--against DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import timed_steps  # noqa: E402

SAMPLE_HZ = 0.2  # the recorders' sampling threads: one tick in 5 s


_built: dict = {}


def build(workload: str):
    """(model, loss, dataset) of one workload: a new ``Sequential`` over the same layers every call."""
    import torch

    if workload not in _built:
        _built[workload] = _build(workload)
    layers, crit, data = _built[workload]
    return torch.nn.Sequential(*layers), crit, data


def _build(workload: str):
    import torch

    torch.manual_seed(0)
    if workload == "tiny":
        model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
        data = torch.utils.data.TensorDataset(torch.randn(64 * 64, 64), torch.randn(64 * 64, 64))
        return model, torch.nn.MSELoss(), data
    from overhead import build as build_overhead

    model, x, y = build_overhead(workload)
    reps = 64
    data = torch.utils.data.TensorDataset(x.repeat(reps, *[1] * (x.dim() - 1)), y.repeat(reps))
    return model, torch.nn.CrossEntropyLoss(), data


class Mode:
    """One mode: its model and optimizer, and what it puts in around a block (``on``, ``off``)."""

    def __init__(self, workload: str):
        import torch

        self.model, self.crit, self.data = build(workload)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.loader = torch.utils.data.DataLoader(self.data, batch_size=64)
        self.prof = None  # a Profiler whose API the loop uses

    def on(self) -> None:
        pass

    def off(self) -> None:
        pass

    def close(self) -> None:
        pass


class EmptyHooks(Mode):
    def on(self) -> None:
        from torch.nn.modules import module

        self.handles = [module.register_module_forward_pre_hook(lambda m, a: None),
                        module.register_module_forward_hook(lambda m, a, o: None, always_call=True)]

    def off(self) -> None:
        for h in self.handles:
            h.remove()


class ZeroCode(Mode):
    """A recorder version's zero-code hooks, installed for the block; its Profiler keeps recording."""

    def __init__(self, workload: str, package, run_dir: str):
        super().__init__(workload)
        autoprofile = __import__(package.__name__ + ".autoprofile", fromlist=["AutoRecorder"])
        autoprofile.TRAINED.add(self.opt)
        self.rec = autoprofile.AutoRecorder()
        self.run_dir = run_dir

    def on(self) -> None:
        os.environ["TBDPROF_RUN_DIR"] = self.run_dir
        self.rec.off = False
        self.rec.install()

    def off(self) -> None:
        self.rec.remove()

    def close(self) -> None:
        self.rec.close()


class Api(Mode):
    """A recorder version's API: one long-lived Profiler, every default on, watching the model."""

    def __init__(self, workload: str, package, run_dir: str):
        super().__init__(workload)
        os.environ["TBDPROF_RUN_DIR"] = run_dir
        self.prof = package.Profiler(sample_hz=SAMPLE_HZ).start()
        self.prof.watch(self.model, self.opt)

    def close(self) -> None:
        self.prof.close()


def _load(folder: Path, name: str):
    from span_cost import _load as load

    return load(folder, name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=("tiny", "mlp"), default="tiny")
    p.add_argument("--blocks", type=int, default=24)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--against", type=Path, help="a folder holding another version's tbdprof package")
    args = p.parse_args(argv)
    if args.against is not None and not (args.against / "tbdprof" / "__init__.py").is_file():
        print(f"zero_code_cost.py: error: {args.against} holds no tbdprof package", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="zc-")
    # The anomaly watch runs its per-step check but never opens a window: torch.profiler takes one session per
    # process, and here several Profilers record at once.
    os.environ.update(TBDPROF_AUTO="1", TBDPROF_RUN_DIR=tmp, TBDPROF_DEEP_ANOMALY="1000x5",
                      TBDPROF_SAMPLE_HZ=str(SAMPLE_HZ))
    import torch

    import tbdprof

    torch.set_num_threads(1)

    def block(mode: Mode, n: int) -> float:
        """Median training-thread CPU microseconds per step over ``n`` steps of ``mode``."""
        prof = mode.prof
        times: list[float] = []
        while len(times) < n:
            batches = prof.loader(mode.loader) if prof is not None else mode.loader
            for dt in timed_steps(batches, mode.model, mode.crit, mode.opt, prof, time.thread_time):
                times.append(dt)
                if len(times) == n:
                    break
        return statistics.median(times[1:]) * 1e6  # the first pays for the loader's new iterator

    packages = {"": tbdprof}
    if args.against is not None:
        packages["_against"] = _load(args.against, "tbdprof_against")
    modes: dict[str, Mode] = {"none": Mode(args.workload), "empty_hooks": EmptyHooks(args.workload)}
    for suffix, package in packages.items():
        modes["zero_code" + suffix] = ZeroCode(args.workload, package, f"{tmp}/zero-code{suffix}")
        modes["api" + suffix] = Api(args.workload, package, f"{tmp}/api{suffix}")

    def run(mode: Mode, n: int, counted: bool = False) -> float:
        mode.on()
        try:
            return python_calls(lambda: block(mode, n)) if counted else block(mode, n)
        finally:
            mode.off()

    for mode in modes.values():
        run(mode, args.steps)  # recorders start and watch the model, first calls: not measured
    rng = random.Random(args.seed)
    medians: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.blocks):
        order = list(modes)
        rng.shuffle(order)
        for m in order:
            medians[m].append(run(modes[m], args.steps))
    calls = {m: run(modes[m], args.steps, counted=True) for m in modes if m != "empty_hooks"}
    for mode in modes.values():
        mode.close()

    def paired(mode: str, base: str = "none") -> dict:
        diffs = [a - b for a, b in zip(medians[mode], medians[base])]
        boot = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
        return {"us_per_step": round(statistics.median(diffs), 1), "ci90": [round(boot[100], 1), round(boot[1899], 1)]}

    out = {"workload": args.workload, "step_us_unprofiled": round(statistics.median(medians["none"]), 1),
           "clock": "training thread CPU time", "load_average": round(os.getloadavg()[0], 2),
           **{m: paired(m) for m in modes if m != "none"},
           "python_calls_per_step_added": {m: (calls[m] - calls["none"]) / args.steps for m in calls if m != "none"},
           "blocks": args.blocks, "steps_per_block": args.steps}
    if args.against is not None:
        out["this_minus_against"] = {m: paired(m, m + "_against") for m in ("zero_code", "api")}
    print(json.dumps(out, indent=2))
    return 0


def python_calls(block) -> int:
    """Python function calls (frames) during ``block()``."""
    n = [0]

    def count(frame, event, arg):
        if event == "call":
            n[0] += 1

    sys.setprofile(count)
    try:
        block()
    finally:
        sys.setprofile(None)
    return n[0]


if __name__ == "__main__":
    sys.exit(main())
