"""The ground truth a corpus script prints about itself: one line per rank,

    TBDCHECK {"rank": 0, "world": 2, "steps": 20, "samples": 320, "grad_bytes": N, "weight_bytes": N}

steps: optimizer steps that updated the model (counted by the script or read
from the framework's own counter); samples: samples that went through a
training forward and backward whose optimizer step happened; weight_bytes:
numel * element_size summed over the trained model's parameters; grad_bytes:
the same over those that require grad (what DDP and Horovod allreduce once
per optimizer step); pid: the process that trained (to match the profiler's
rank folders). Knows nothing of tbdprof.
"""

import json
import os


def param_bytes(params, trainable_only=False) -> int:
    """Bytes of a parameter collection, each tensor once (tied weights count once)."""
    seen, total = set(), 0
    for p in params:
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def tbdcheck(rank: int, world: int, steps: int, samples: int, model, **extra) -> dict:
    truth = {"rank": rank, "world": world, "pid": os.getpid(), "steps": steps, "samples": samples,
             "grad_bytes": param_bytes(model.parameters(), trainable_only=True),
             "weight_bytes": param_bytes(model.parameters()), **extra}
    print("TBDCHECK " + json.dumps(truth, sort_keys=True), flush=True)
    return truth
