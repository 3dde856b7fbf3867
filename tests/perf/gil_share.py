"""What the recorder's own threads (sampler, writer, progress watch) take from the training thread.

    python tests/perf/gil_share.py [--json] [--seconds 30] [--flush-s 1] [--sample-hz 10]

One process trains the ~5 ms MLP of ``overhead.py`` (one intra-op thread)
under one Profiler with every default on, for ``--seconds``. Each thread's
events are timed where they run (a sampler tick, a writer flush, a progress
tick: wall and thread CPU time), and the training thread times every step.
A step that overlaps an event is compared with the steps that overlap none,
in the same run, so a busy machine's slow stretches fall on both sides:
the median extra wall time of an overlapping step is what one event costs
the training thread (the interpreter lock it waits for, a core it shares),
and the same for the training thread's own CPU time tells the two apart (a
wait costs wall time, not CPU time). Per second of training, that is the
share of step time each thread takes. ``--flush-s`` shortens the writer's
interval to have enough flushes to compare (the default recorder flushes
every 5 s: its share is scaled to that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

DEFAULT_FLUSH_S = 5.0


def _timed(events: list, method):
    """``method`` recording (wall start, wall end, thread CPU seconds) of each call into ``events``."""

    def timed(*args, **kwargs):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            events.append((t, time.perf_counter(), time.thread_time() - c))

    return timed


def _overlap_costs(steps: list[tuple[float, float, float]], events: list[tuple[float, float, float]]) -> dict:
    """Median extra wall and CPU time of the steps that overlap an event, over the steps that overlap none."""
    hit = [False] * len(steps)
    j = 0
    for start, end, _ in sorted(events):
        while j < len(steps) and steps[j][1] <= start:
            j += 1
        k = j
        while k < len(steps) and steps[k][0] < end:
            hit[k] = True
            k += 1
    over = [s for s, h in zip(steps, hit) if h]
    clear = [s for s, h in zip(steps, hit) if not h]
    if len(over) < 5 or len(clear) < 5:
        return {"events": len(events), "error": "too few steps to compare"}

    def med(rows, f):
        return statistics.median(f(r) for r in rows)

    wall = med(over, lambda s: s[1] - s[0]) - med(clear, lambda s: s[1] - s[0])
    cpu = med(over, lambda s: s[2]) - med(clear, lambda s: s[2])
    return {"events": len(events), "steps_overlapping": len(over), "event_cpu_us": round(med(events, lambda e: e[2]) * 1e6, 1),
            "event_wall_us": round(med(events, lambda e: e[1] - e[0]) * 1e6, 1),
            "step_extra_wall_us": round(wall * 1e6, 1), "step_extra_cpu_us": round(cpu * 1e6, 1)}


def measure(seconds: float, flush_s: float, sample_hz: float) -> dict:
    import torch

    import tbdprof
    from overhead import build, loader_for

    torch.set_num_threads(1)
    model, x, y = build("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    loader = loader_for(x, y, 50)
    events: dict[str, list] = {"sampler_tick": [], "writer_flush": [], "progress_tick": []}
    steps: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        prof = tbdprof.Profiler(out=tmp, run_id="gil", flush_s=flush_s, sample_hz=sample_hz)
        prof.start()
        try:
            prof._sampler.thread.tick = _timed(events["sampler_tick"], prof._sampler.thread.tick)
            prof._writer.flush = _timed(events["writer_flush"], prof._writer.flush)
            prof._progress.tick = _timed(events["progress_tick"], prof._progress.tick)
            prof.watch(model, opt)
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                for xb, yb in prof.loader(loader):
                    t, c = time.perf_counter(), time.thread_time()
                    with prof.phase("forward"):
                        loss = crit(model(xb), yb)
                    with prof.phase("backward"):
                        loss.backward()
                    with prof.phase("optimizer"):
                        opt.step()
                        opt.zero_grad()
                    steps.append((t, time.perf_counter(), time.thread_time() - c))
        finally:
            prof.close()
    steps = steps[10:]  # the recorder's start
    first = steps[0][0]
    for name in events:
        events[name] = [e for e in events[name] if e[0] >= first and e[1] <= steps[-1][1]]
    span = steps[-1][1] - first
    step_s = statistics.median(s[1] - s[0] for s in steps)
    out = {"seconds": round(span, 1), "steps": len(steps), "step_ms": round(step_s * 1e3, 2),
           "load_average": round(os.getloadavg()[0], 2), "threads": {}}
    total = 0.0
    for name, evs in events.items():
        c = _overlap_costs(steps, evs)
        if "error" not in c:
            per_s = len(evs) / span
            if name == "writer_flush":
                per_s *= flush_s / DEFAULT_FLUSH_S  # at the default interval
            c["share_of_step_time"] = round(max(0.0, c["step_extra_wall_us"]) * 1e-6 * per_s, 5)
            total += c["share_of_step_time"]
        out["threads"][name] = c
    out["share_of_step_time"] = round(total, 5)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--flush-s", type=float, default=1.0)
    p.add_argument("--sample-hz", type=float, default=10.0)
    args = p.parse_args(argv)
    emit(measure(args.seconds, args.flush_s, args.sample_hz), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
