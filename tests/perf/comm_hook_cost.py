"""What recording DDP's gradient allreduce costs: DDP's built-in allreduce against a Python comm hook.

    python tests/perf/comm_hook_cost.py [--json] [--rounds 14] [--steps 40] [--workload mlp]

Two ranks (gloo on loopback, one intra-op thread each) train ``overhead.py``'s
model under DDP, in blocks of ``--steps`` steps; each round runs one block of
every mode in a random order (the same on both ranks), a fresh DDP wrapper per
block:

- ``builtin``: DDP's own allreduce (C++, no comm hook);
- ``tbdprof_hook``: tbdprof's comm hook (``tbdprof.comm.make_allreduce_hook``,
  what ``prof.watch`` and ``tbdprof profile`` install), recording into a list;
- ``pytorch_python_hook``: PyTorch's own ``default_hooks.allreduce_hook``, the
  same allreduce from Python without recording anything: the floor of any
  comm hook in Python.

Each hook mode's paired median ratio of block median step times to the
``builtin`` blocks of the same rounds, with a bootstrap 90 % interval over
rounds (the first two rounds are warm-up).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402
from overhead import _free_port, bootstrap, build, loader_for  # noqa: E402

MODES = ("builtin", "tbdprof_hook", "pytorch_python_hook")
WARMUP_ROUNDS = 2


def run_rank(rank: int, args) -> dict:
    import time

    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tbdprof.comm import make_allreduce_hook
    from tbdprof.cuda import CudaPending

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    inner, x, y = build(args.workload)
    opt = torch.optim.SGD(inner.parameters(), lr=1e-3, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    rows: list = []
    per = {m: [] for m in MODES}
    rng = random.Random(args.seed)
    for r in range(args.rounds + WARMUP_ROUNDS):
        order = list(MODES)
        rng.shuffle(order)
        for mode in order:
            model = DDP(inner)
            if mode == "tbdprof_hook":
                model.register_comm_hook(None, make_allreduce_hook(rows.append, lambda: 0, CudaPending(rows.append)))
            elif mode == "pytorch_python_hook":
                model.register_comm_hook(None, default_hooks.allreduce_hook)
            times, t = [], time.perf_counter()
            for xb, yb in loader_for(x, y, args.steps):
                crit(model(xb), yb).backward()
                opt.step()
                opt.zero_grad()
                now = time.perf_counter()
                times.append(now - t)
                t = now
            if r >= WARMUP_ROUNDS:
                per[mode].append(statistics.median(times[4:]))
    dist.destroy_process_group()
    return {"block_median_s": per, "comm_spans": len(rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="mlp", choices=("mlp", "cnn", "transformer"))
    p.add_argument("--rounds", type=int, default=14)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank is not None:
        Path(args.result).write_text(__import__("json").dumps(run_rank(args.rank, args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
               "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, __file__, *(argv or sys.argv[1:]), "--rank", str(r), "--result",
                                   str(Path(tmp) / f"{r}.json")], env={**env, "RANK": str(r)}) for r in range(2)]
        if any(proc.wait() for proc in procs):
            raise RuntimeError("a rank failed")
        res = [__import__("json").loads((Path(tmp) / f"{r}.json").read_text()) for r in range(2)]
    block = {m: [statistics.fmean(x["block_median_s"][m][i] for x in res) for i in range(args.rounds)] for m in MODES}
    out = {"workload": args.workload, "step_ms": statistics.median(block["builtin"]) * 1e3, "rounds": args.rounds,
           "steps_per_block": args.steps, "comm_spans_per_step": res[0]["comm_spans"] / ((args.rounds + WARMUP_ROUNDS) * args.steps)}
    for mode in MODES[1:]:
        ratios = [a / b for a, b in zip(block[mode], block["builtin"])]
        lo, hi = bootstrap(ratios)
        out[mode] = {"ratio": statistics.median(ratios), "lo90": lo, "hi90": hi}
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
