"""The training runner: one rank of a reference workload, profiled by tbdprof.

Run by a launcher (tbdprof's local launcher, torchrun, mpirun, srun...) as
``python -m tbdprof.workloads.train WORKLOAD [options]``; rank and world come
from the launcher's environment. The run folder comes from
``TBDPROF_RUN_DIR`` (set by tbdprof's launchers) or ``--out``/``--run-id``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from tbdprof.errors import UserError

EXIT_BAD_INPUT = 2
AMP_DTYPES = {"none": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --amp -> torch dtype name
FAULTS = ("hang-getitem", "kill", "skip-collective", "slow-step")  # --fault


class UsageError(UserError):
    """Bad input: reported as one line on stderr with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tbdprof.workloads.train", description=__doc__.splitlines()[0])
    add_training_args(p)
    p.add_argument("--out", default="runs", help="folder for runs (when TBDPROF_RUN_DIR is not set)")
    p.add_argument("--run-id", default=None, help="run folder name")
    return p


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The options shared by the runner and ``tbdprof run``."""
    from tbdprof import deep

    p.add_argument("workload", help="registered workload name (see `tbdprof workloads`)")
    p.add_argument("--preset", default="tiny", help="model/data size: tiny, small or full")
    p.add_argument("--steps", type=int, default=20, help="training steps to run (default 20)")
    p.add_argument("--batch-size", type=int, default=None, help="per-rank batch size (default: the preset's)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of steady-state figures")
    p.add_argument("--sample-hz", type=float, default=10.0, help="system sampling rate")
    p.add_argument("--flush-s", type=float, default=5.0, help="seconds between Parquet segments")
    p.add_argument("--num-workers", type=int, default=None, help="data-loader worker processes")
    p.add_argument("--data", default=None, help="a prepared data set folder (default: generated and cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="none", choices=sorted(AMP_DTYPES), help="mixed precision: autocast to bf16 or fp16 (fp16 with loss scaling)")
    from .engines import ENGINES

    p.add_argument("--engine", default="ddp", choices=sorted(ENGINES), help="distributed engine (default ddp)")
    hvd = p.add_argument_group("Horovod (--engine horovod)")
    hvd.add_argument("--fusion-threshold-mb", type=float, default=None, help="tensor fusion buffer (HOROVOD_FUSION_THRESHOLD)")
    hvd.add_argument("--cycle-time-ms", type=float, default=None, help="background cycle time (HOROVOD_CYCLE_TIME)")
    hvd.add_argument("--hierarchical-allreduce", action="store_true", help="HOROVOD_HIERARCHICAL_ALLREDUCE=1")
    hvd.add_argument("--horovod-timeline", action="store_true", help="record Horovod's timeline into the run's store")
    p.add_argument("--memory-every", type=int, default=20, help="measure the memory breakdown every N steps (default 20)")
    deep.add_options(p)
    p.add_argument("--hang-s", type=float, default=None, metavar="S",
                   help="a rank with no step end for max(S, 20 x its median step) records a hang (default 60; "
                        "reaches the ranks on every host, unlike TBDPROF_HANG_S)")
    p.add_argument("--no-profile", action="store_true", help="run the same loop without the profiler (baseline)")
    fault = p.add_argument_group("fault injection (for experiments: plant a known bottleneck, then `tbdprof diagnose`)")
    fault.add_argument("--data-delay-ms", type=float, default=0.0, help="every sample takes this much longer to load (slow storage)")
    fault.add_argument("--slow-rank", type=int, default=None, metavar="R", help="this rank is slower in its forward phase (a straggler)")
    fault.add_argument("--slow-ms", type=float, default=0.0, help="how much slower per step --slow-rank is")
    fault.add_argument("--slow-mode", default="sleep", choices=["sleep", "burn"], help="the straggler sleeps or burns CPU")
    fault.add_argument("--fault", default=None, choices=FAULTS, help="plant one fault on --fault-rank at step --fault-step: "
                       "hang-getitem (its data set's __getitem__ never returns), kill (the rank SIGKILLs itself), "
                       "skip-collective (it skips the step's gradient allreduce and waits in a barrier: the others deadlock), "
                       "slow-step (that one forward takes --slow-ms longer)")
    fault.add_argument("--fault-rank", type=int, default=1, metavar="R", help="the rank --fault plants its fault on (default 1)")
    fault.add_argument("--fault-step", type=int, default=5, metavar="N", help="the step --fault strikes at (default 5)")


def runner_argv(args) -> list[str]:
    """The runner's command-line arguments for parsed training ``args`` (for launchers)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_training_args(probe)
    argv = [args.workload]
    for action in probe._actions:
        if not action.option_strings:
            continue
        value = getattr(args, action.dest)
        if value is None or value is False or value == action.default:
            continue
        argv += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return argv


def validate(args) -> tuple:
    """Check the options before any process group exists; returns (workload, preset)."""
    from .base import Workload
    from .registry import UnknownWorkload, get

    try:
        wl = get(args.workload)
    except UnknownWorkload as e:
        raise UsageError(str(e.args[0])) from None
    if args.preset not in wl.presets:
        raise UsageError(f"workload {wl.name} has no preset {args.preset!r}; presets: {', '.join(wl.presets)}")
    for name in ("steps", "batch_size", "sample_hz", "flush_s", "memory_every", "hang_s"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive (got {v})")
    if args.warmup < 0 or (args.num_workers is not None and args.num_workers < 0):
        raise UsageError("--warmup and --num-workers must not be negative")
    from tbdprof.deep import check_options

    check_options(args.deep_every, args.deep_steps, args.deep_anomaly)
    if args.data_delay_ms < 0 or args.slow_ms < 0 or (args.slow_rank is not None and args.slow_ms == 0):
        raise UsageError("--data-delay-ms and --slow-ms must not be negative; --slow-rank needs --slow-ms")
    if args.slow_rank is not None and type(wl).train_step is not Workload.train_step:
        raise UsageError(f"--slow-rank: workload {wl.name} runs its own step; the runner can only slow its forward phase")
    if args.fault and (args.fault_rank < 0 or not 0 <= args.fault_step < args.steps):
        raise UsageError(f"--fault-rank must not be negative and --fault-step must be below --steps ({args.steps})")
    if args.fault == "slow-step" and args.slow_ms == 0:
        raise UsageError("--fault slow-step needs --slow-ms")
    if args.fault in ("skip-collective", "slow-step") and type(wl).train_step is not Workload.train_step:
        raise UsageError(f"--fault {args.fault}: workload {wl.name} runs its own step, which the runner cannot change")
    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: not a folder")
    if args.engine not in wl.engines:
        raise UsageError(f"workload {wl.name} runs with --engine {' or '.join(wl.engines)} only: {wl.engines_reason}")
    from .engines import EngineUnavailable, engine_env

    try:
        os.environ.update(engine_env(args))  # also checks the engine is installed
    except EngineUnavailable as e:
        raise UsageError(str(e)) from None
    if args.amp == "fp16" and type(wl).train_step is not Workload.train_step:
        raise UsageError(f"workload {wl.name} runs its own training step, which has no loss scaling: use --amp bf16")
    preset = wl.presets[args.preset]
    problem = wl.check_batch_size(preset, args.batch_size or preset.batch_size)
    if problem:
        raise UsageError(f"workload {wl.name}: {problem}")
    return wl, preset


def _to_device(batch, device):
    import torch

    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _mixed_precision(amp: str, device):
    """(autocast context factory, GradScaler or None) for ``--amp``; fp16 scales the loss."""
    import torch

    if amp == "none":
        return contextlib.nullcontext, None
    dtype = getattr(torch, AMP_DTYPES[amp])
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _progress(rank: int, steps: int):
    """A per-step progress callback: rich bar on rank 0 when stderr is a terminal, else log lines."""
    if rank != 0:
        return None, lambda i, dt: None
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[st]}"), TimeRemainingColumn(), transient=True)
        task = bar.add_task("train", total=steps, st="")
        return bar, lambda i, dt: bar.update(task, completed=i + 1, st=f"{dt * 1e3:.0f} ms/step")
    every = max(1, steps // 5)
    return None, lambda i, dt: (i + 1) % every == 0 and print(f"tbdprof: step {i + 1}/{steps} ({dt * 1e3:.0f} ms)", file=sys.stderr, flush=True)


def _device(args, info):
    """The rank's device for ``--device`` (a CUDA rank takes the GPU of its local rank)."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{info.local_rank % max(1, torch.cuda.device_count())}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return device


def _input(args, wl, preset, info, device):
    """(data root, sampler, loader, batch size, workers): the workload's data set, sharded over the ranks."""
    import torch

    from .data import DataFormatError, default_root, prepare

    root = Path(args.data) if args.data else prepare(
        default_root(wl.name, args.preset, args.seed), lambda tmp: wl.write_dataset(tmp, preset, args.seed),
        is_writer=info.local_rank == 0)
    batch_size = args.batch_size or preset.batch_size
    num_workers = preset.num_workers if args.num_workers is None else args.num_workers
    try:
        dataset = wl.dataset(root, preset, train=True)
        if args.data_delay_ms or args.fault == "hang-getitem":
            dataset = _Delayed(dataset, args.data_delay_ms / 1e3)
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                                      seed=args.seed, drop_last=True)
        if len(sampler) < batch_size:
            raise UsageError(f"data set of {len(dataset)} samples gives rank {info.rank} {len(sampler)}, "
                             f"less than one batch of {batch_size}")
        batches = wl.batch_sampler(sampler, batch_size)
        if _faulty(args, info.rank, "hang-getitem"):
            batches = _HangAt(batches, args.fault_step)
    except DataFormatError as e:
        raise UsageError(str(e)) from None
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=wl.collate_fn,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
    )
    return root, sampler, loader, batch_size, num_workers


def _default_step(args, rank, step, wl, engine, model, optimizer, batch, phase, autocast, scaler) -> None:
    """forward, backward and optimizer of a workload that leaves its step to the runner."""
    with phase("forward"), autocast():
        loss = wl.loss(model, batch)
        _stall(args, rank, step)  # after DDP's buffer broadcast, as a slower device would be
    with phase("backward"):
        if _faulty(args, rank, "skip-collective", step):
            engine.barrier()  # the planted deadlock: no backward, so no gradient allreduce, on this rank
        (scaler.scale(loss) if scaler else loss).backward()
    with phase("optimizer"):
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train(args) -> int:
    wl, preset = validate(args)
    import torch

    import tbdprof

    from .engines import EngineUnavailable, get_engine

    info = tbdprof.detect_rank()
    if args.fault and args.fault_rank >= info.world_size:
        raise UsageError(f"--fault-rank {args.fault_rank}: the job has {info.world_size} rank(s)")
    device = _device(args, info)
    torch.manual_seed(args.seed)
    root, sampler, loader, batch_size, num_workers = _input(args, wl, preset, info, device)
    try:
        engine = get_engine(args.engine, info, device)
        engine.setup()
    except EngineUnavailable as e:
        raise UsageError(str(e)) from None
    model = wl.build_model(preset).to(device)
    model, optimizer = engine.wrap(model, wl.optimizer(model, preset))

    config = {
        "workload": wl.name, "domain": wl.domain, "preset": args.preset, "engine": args.engine,
        "batch_size": batch_size, "global_batch_size": batch_size * info.world_size, "steps": args.steps,
        "num_workers": num_workers, "device": str(device), "dtype": AMP_DTYPES[args.amp], "amp": args.amp, "seed": args.seed,
        "preprocessing": "cpu, in data-loader workers" if num_workers else "cpu, in the training process",
        "params": sum(p.numel() for p in model.parameters()), "unit": wl.unit, "data": str(root),
    }
    prof = tbdprof.Profiler(
        out=args.out, run_id=args.run_id, sample_hz=args.sample_hz, flush_s=args.flush_s,
        warmup_steps=args.warmup, memory_every=args.memory_every, enabled=not args.no_profile, metadata=config,
        deep_every=args.deep_every, deep_steps=args.deep_steps, deep_anomaly=args.deep_anomaly, hang_s=args.hang_s,
    )
    bar, tick = _progress(info.rank, args.steps)
    step_times: list[float] = []
    step = epoch = 0
    autocast, scaler = _mixed_precision(args.amp, device)
    use_cuda = device.type == "cuda"
    phase = prof.cuda_phase if use_cuda else prof.phase  # on the GPU: device time, not launch time

    def average_gradients(params):
        engine.average_gradients(params, lambda nbytes: prof.comm(nbytes=nbytes))

    with prof, (bar or contextlib.nullcontext()):
        prof.watch(model, [optimizer, *wl.other_optimizers()])
        model.train()
        while step < args.steps:
            sampler.set_epoch(epoch)
            epoch += 1
            t0 = time.perf_counter()
            for batch in prof.loader(loader):
                if _faulty(args, info.rank, "kill", step):
                    os.kill(os.getpid(), signal.SIGKILL)  # the planted death: nothing of the rank runs after it
                with phase("h2d"):
                    batch = _to_device(batch, device)
                with autocast():
                    handled = wl.train_step(model, optimizer, batch, phase, average_gradients)
                if not handled:
                    _default_step(args, info.rank, step, wl, engine, model, optimizer, batch, phase, autocast, scaler)
                if use_cuda:
                    torch.cuda.synchronize(device)
                prof.end_step(wl.batch_items(batch), wl.batch_units(batch) if wl.unit != "samples" else None)
                t1 = time.perf_counter()
                step_times.append(t1 - t0)
                tick(step, t1 - t0)
                t0 = t1
                step += 1
                if step >= args.steps:
                    break
    _write_timing(info, step_times, config, args)
    if info.rank == 0:
        steady = step_times[args.warmup :] or step_times
        print(f"tbdprof: rank 0 ran {step} steps, median {statistics.median(steady) * 1e3:.1f} ms/step", file=sys.stderr)
    engine.shutdown()
    return 0


class _Never(int):
    """A sample index marked by --fault hang-getitem: :class:`_Delayed` never returns its item."""


class _HangAt:
    """The batch sampler of the rank --fault hang-getitem plants on: the indices of its ``step``-th batch
    (counted over epochs, in the order the loader asks for them, which is the order of the steps) marked."""

    def __init__(self, batches, step: int):
        self.batches, self.step, self.count = batches, step, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.count += 1
            yield [_Never(i) for i in batch] if self.count - 1 == self.step else batch


class _Delayed:
    """A data set whose items each take ``delay_s`` longer to load (--data-delay-ms), and whose items at indices
    :class:`_HangAt` marked never load (--fault hang-getitem)."""

    def __init__(self, dataset, delay_s: float):
        self.dataset, self.delay_s = dataset, delay_s

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        while isinstance(i, _Never):
            time.sleep(1)  # the planted hang: a read that never returns
        time.sleep(self.delay_s)
        return self.dataset[i]

    def __getattr__(self, name):  # meta, lengths... of the wrapped data set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _faulty(args, rank: int, fault: str, step: int | None = None) -> bool:
    """Whether --fault ``fault`` strikes ``rank`` (at ``step``, unless None)."""
    return args.fault == fault and rank == args.fault_rank and step in (None, args.fault_step)


def _stall(args, rank: int, step: int) -> None:
    """--slow-rank (every step) or --fault slow-step (one step): sleep or spin for --slow-ms on that rank."""
    if rank != args.slow_rank and not _faulty(args, rank, "slow-step", step):
        return
    end = time.perf_counter() + args.slow_ms / 1e3
    if args.slow_mode == "sleep":
        time.sleep(args.slow_ms / 1e3)
    while time.perf_counter() < end:
        pass


def _write_timing(info, step_times, config, args) -> None:
    """The runner's own step times (perf_counter, profiled or not): the same
    measurement in both modes, for overhead comparisons; for unprofiled runs
    the only record."""
    from tbdprof import store

    run_dir = Path(os.environ.get("TBDPROF_RUN_DIR") or Path(args.out) / (args.run_id or "baseline"))
    d = store.rank_dir(run_dir, info.host, info.rank)
    d.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(d / "timing.json", {"rank": info.rank, "profiled": not args.no_profile, "step_times_s": step_times, "config": config, "warmup_steps": args.warmup})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return train(args)
    except UserError as e:  # bad options (UsageError) and bad --deep-* values alike
        print(f"tbdprof: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
