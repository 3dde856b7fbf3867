"""What the zero-code recorder's hooks add per training step, in microseconds, on a tiny step.

One process: a 4-layer MLP loop (about 0.5 ms a step on one CPU thread)
with a DataLoader, loss, backward and SGD. Blocks of steps alternate in
random order between no hooks and the hooks ``tbdprof profile`` installs
(an ``AutoRecorder`` installed and removed between blocks; its Profiler
keeps recording), and a bootstrap over blocks gives the 90 % interval of
the paired difference of block medians. Also: PyTorch's own cost for two
empty global module hooks, the floor of a recorder that keeps global hooks
in through the model's forward (the zero-code recorder takes its one out
there). And, counted rather than timed (the same on a busy machine), the
Python calls per step the hooks add (``sys.setprofile``).

    python tests/perf/zero_code_cost.py [--blocks 24] [--steps 60]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=24)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.update(TBDPROF_AUTO="1", TBDPROF_RUN_DIR=tempfile.mkdtemp(prefix="zc-"))
    import torch
    from torch.nn.modules import module

    from tbdprof import autoprofile

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    autoprofile.TRAINED.add(opt)
    data = torch.utils.data.TensorDataset(torch.randn(64 * 64, 64), torch.randn(64 * 64, 64))
    loader = torch.utils.data.DataLoader(data, batch_size=64)

    def block(n: int) -> float:
        times, it = [], iter(loader)
        for _ in range(n):
            t = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    rec = autoprofile.AutoRecorder()

    def hooks_on():
        rec.off = False
        rec.install()

    empty = []

    def empty_on():
        empty[:] = [module.register_module_forward_pre_hook(lambda m, a: None),
                    module.register_module_forward_hook(lambda m, a, o: None, always_call=True)]

    modes = {"none": (lambda: None, lambda: None), "zero_code": (hooks_on, rec.remove),
             "empty_hooks": (empty_on, lambda: [h.remove() for h in empty])}
    hooks_on()
    block(args.steps)  # the recorder starts, watches the model: not measured
    rec.remove()
    rng = random.Random(args.seed)
    medians: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.blocks):
        order = list(modes)
        rng.shuffle(order)
        for m in order:
            on, off = modes[m]
            on()
            medians[m].append(block(args.steps))
            off()
    calls = {m: python_calls(block, modes[m], args.steps) for m in ("none", "zero_code")}
    rec.close()

    def paired(mode: str) -> dict:
        diffs = [a - b for a, b in zip(medians[mode], medians["none"])]
        boot = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
        return {"us_per_step": statistics.median(diffs), "ci90": [boot[100], boot[1899]]}

    out = {"step_us_unprofiled": statistics.median(medians["none"]), "zero_code": paired("zero_code"),
           "empty_global_hooks": paired("empty_hooks"), "blocks": args.blocks, "steps_per_block": args.steps,
           "python_calls_per_step_added": (calls["zero_code"] - calls["none"]) / args.steps}
    print(json.dumps(out, indent=2))
    return 0


def python_calls(block, mode, steps: int) -> int:
    """Python function calls (frames) during one block of ``steps`` steps in ``mode``."""
    on, off = mode
    n = [0]

    def count(frame, event, arg):
        if event == "call":
            n[0] += 1

    on()
    sys.setprofile(count)
    try:
        block(steps)
    finally:
        sys.setprofile(None)
        off()
    return n[0]


if __name__ == "__main__":
    sys.exit(main())
