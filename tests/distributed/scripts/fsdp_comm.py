"""FSDP2 training on gloo ranks (torch.multiprocessing.spawn) under tbdprof.fsdp.FsdpComm.

For each mesh of ``--meshes`` ("1d": plain FSDP over all ranks; "RxS": HSDP,
R replicas of S shards), each rank trains the same small MLP (per-layer and
root ``fully_shard``) four times on the same data: (A) without FsdpComm for
2*STEPS steps; (B) with it for STEPS steps, an explicit asynchronous unshard,
``resolve(force=True)``, then STEPS more steps; (C) with a ``current_step``
that raises; (D) with a sink that raises. During B the script also records
every call of the collectives FSDP ends in (``dist.all_gather_single``,
``dist.reduce_scatter_single``, ``dist.all_reduce``), the ground truth the
spans are checked against. It writes what it saw to ``OUT/rank<r>.json``; the
test (tests/distributed/test_fsdp_comm.py) checks it. Knows nothing of the
assertions.
"""

import argparse
import json
import logging
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard

from tbdprof import clock
from tbdprof.cuda import CudaPending
from tbdprof.fsdp import FsdpComm, _param_groups, is_fsdp_model
from tbdprof.launch.local import free_port

ASYNC_STEP = 1000  # the step index the explicit asynchronous unshard is recorded under


class MLP(torch.nn.Module):
    """Dim-0 sizes are even, so FSDP pads nothing on 2 ranks: gathered bytes are the parameters' bytes."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(16, 64)
        self.l2 = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 4)  # stays in the root's group

    def forward(self, x):
        return self.head(torch.relu(self.l2(torch.relu(self.l1(x)))))


def nbytes(module: torch.nn.Module, grads: bool = False) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad or not grads)


def build(mesh):
    torch.manual_seed(0)
    m = MLP()
    sizes = {"l1": nbytes(m.l1), "l2": nbytes(m.l2), "": nbytes(m.head), "params": nbytes(m), "grads": nbytes(m, grads=True)}
    kw = {"mesh": mesh} if mesh is not None else {}
    fully_shard(m.l1, **kw)
    fully_shard(m.l2, **kw)
    fully_shard(m, **kw)
    return m, torch.optim.SGD(m.parameters(), lr=0.05), sizes


class Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def train(m, opt, data, cur, windows=None):
    losses = []
    for i, (x, y) in data:
        cur[0] = i
        t0 = clock.now_ns()
        loss = torch.nn.functional.mse_loss(m(x), y)
        t1 = clock.now_ns()
        loss.backward()
        t2 = clock.now_ns()
        opt.step()
        opt.zero_grad()
        if windows is not None:
            windows[i] = {"forward": [t0, t1], "backward": [t1, t2]}
        losses.append(loss.item())
    return losses


def explicit_async_unshard(m, cur):
    cur[0] = ASYNC_STEP
    m.l1.unshard(async_op=True).wait()
    m.l1.reshard()


def comm_state(m):
    return [(g._all_gather_comm, g._reduce_scatter_comm, g._all_reduce_hook) for g in _param_groups(m)]


def same(state, other) -> bool:
    return len(state) == len(other) and all(x is y for now, then in zip(state, other) for x, y in zip(now, then))


class GroundTruth:
    """Records each call of the c10d functions FSDP2's default comms end in: (name, start, end, bytes)."""

    def __init__(self):
        self.calls = []
        self._orig = {}

    def __enter__(self):
        for fn, name, arg, index in (("all_gather_single", "all_gather", "output_tensor", 0),
                                     ("reduce_scatter_single", "reduce_scatter", "input", 1),
                                     ("all_reduce", "allreduce", "tensor", 0)):
            orig = self._orig[fn] = getattr(dist, fn)

            def wrapper(*args, _orig=orig, _name=name, _arg=arg, _index=index, **kwargs):
                t = kwargs[_arg] if _arg in kwargs else args[_index]
                start = clock.now_ns()
                out = _orig(*args, **kwargs)
                self.calls.append((_name, start, clock.now_ns(), t.numel() * t.element_size()))
                return out

            setattr(dist, fn, wrapper)
        return self

    def __exit__(self, *exc):
        for fn, orig in self._orig.items():
            setattr(dist, fn, orig)


def run_mesh(rank, world, steps, spec, logs):
    mesh = None
    if spec != "1d":
        from torch.distributed.device_mesh import init_device_mesh

        replicas, shards = (int(n) for n in spec.split("x"))
        mesh = init_device_mesh("cpu", (replicas, shards), mesh_dim_names=("replicate", "shard"))
    gen = torch.Generator().manual_seed(100 + rank)
    data = [(i, (torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen))) for i in range(2 * steps)]
    first, second = data[:steps], data[steps:]
    res = {}

    # A: no FsdpComm
    m, opt, sizes = build(mesh)
    cur = [-1]
    res["losses_a"] = train(m, opt, first, cur)
    explicit_async_unshard(m, cur)
    res["losses_a"] += train(m, opt, second, cur)

    # B: FsdpComm for STEPS steps and an asynchronous unshard, then removed
    del logs.messages[:]
    m, opt, sizes = build(mesh)
    res["sizes"] = sizes
    res["is_fsdp"] = [is_fsdp_model(m), is_fsdp_model(m.l1), is_fsdp_model(MLP()), is_fsdp_model(object())]
    spans, windows, cur = [], {}, [-1]
    before = comm_state(m)
    sink = spans.append
    with GroundTruth() as truth:
        comm = FsdpComm(m, sink, lambda: cur[0], CudaPending(sink))
        res["groups"] = comm.groups
        during = comm_state(m)
        res["wrapped"] = [a is not a0 and r is not r0 for (a, r, _), (a0, r0, _) in zip(during, before)]
        res["hook_installed"] = [h is not h0 for (_, _, h), (_, _, h0) in zip(during, before)]
        res["losses_b"] = train(m, opt, first, cur, windows)
        explicit_async_unshard(m, cur)
        comm.resolve()  # the writer's periodic call: changes nothing
        res["still_wrapped"] = same(comm_state(m), during)
        comm.resolve(force=True)
        res["restored"] = same(comm_state(m), before)
        res["truth"] = list(truth.calls)
        n_spans = len(spans)
        res["losses_b"] += train(m, opt, second, cur)
        res["truth_after_remove"] = len(truth.calls) - len(res["truth"])
    res["spans_after_remove"] = len(spans) - n_spans
    res["spans"] = spans
    res["windows"] = windows
    res["warnings_b"] = list(logs.messages)

    # C: current_step raises (before the collective); D: the sink raises (after it)
    def bad_step():
        raise RuntimeError("step boom")

    def bad_sink(row):
        raise RuntimeError("sink boom")

    for key, sink, step in (("c", spans.append, bad_step), ("d", bad_sink, lambda: cur[0])):
        del logs.messages[:]
        m, opt, _ = build(mesh)
        n_spans = len(spans)
        comm = FsdpComm(m, sink, step, CudaPending(sink))
        res[f"losses_{key}"] = train(m, opt, first, cur)
        comm.resolve(force=True)
        res[f"spans_{key}"] = len(spans) - n_spans
        res[f"warnings_{key}"] = list(logs.messages)
    return res


def rank_main(rank, world, port, steps, out, meshes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    logs = Counter()
    logging.getLogger("tbdprof").addHandler(logs)
    res = {spec: run_mesh(rank, world, steps, spec, logs) for spec in meshes}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--meshes", default="1d", help="comma-separated: 1d (FSDP) or RxS (HSDP: R replicas of S shards)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mp.spawn(rank_main, args=(args.nprocs, free_port(), args.steps, args.out, args.meshes.split(",")), nprocs=args.nprocs)
