"""Bytes per deep-window step (ops rows + the gzip'd Kineto trace) against a plain Kineto JSON trace of the
same steps, and what a window costs in step time, on the small CNN of overhead.py (CPU, one thread).

One process. First the profiled loop: ``Profiler(deep_every=E, deep_steps=K)`` for ``--steps`` steps (anomaly
watch off, so the windows are the scheduled ones); its ``ops`` segments, traces and ``deep.json`` give the
bytes, and the analysis's window cost (window step vs the steps around it) the time. Then the same loop under
``torch.profiler`` alone for K steps, exported with ``export_chrome_trace`` (the plain JSON a user would keep),
with its defaults and with the window's settings (shapes, FLOPs).

    python tests/perf/deep_window_bytes.py [--steps 60] [--every 20] [--window 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from overhead import build  # noqa: E402  (the benchmarks' one CNN)
from phased_loop import train_phased  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    import torch

    import tbdprof
    from tbdprof import schema
    from tbdprof.analysis import load, windows

    torch.set_num_threads(1)
    model, x, y = build("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    out = Path(tempfile.mkdtemp(prefix="deep-bytes-"))
    prof = tbdprof.Profiler(out=out, run_id="r", flush_s=1, clock_sync=False, deep_every=args.every,
                            deep_steps=args.window, deep_anomaly=False)
    train_phased(prof, model, opt, [(x, y)] * args.steps)
    run_dir = out / "r"
    (rank_dir,) = run_dir.glob("host=*/rank=0")
    deep = json.loads((rank_dir / schema.DEEP_FILE).read_text())
    wins = deep["windows"]
    window_steps = sum(w["last"] - w["first"] + 1 for w in wins)
    ops_files = list(rank_dir.glob(f"{schema.OPS}-*{schema.SEGMENT_SUFFIX}"))
    ops_bytes = sum(f.stat().st_size for f in ops_files)
    trace_bytes = sum(w["trace_bytes"] for w in wins)
    rows = sum(w["ops"] for w in wins)
    cost = windows.window_cost(load.open_run(run_dir))

    plain = {}
    for name, kw in (("defaults", {}), ("window_settings", {"record_shapes": True, "with_flops": True})):
        for _ in range(3):
            step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], **kw) as tp:
            for _ in range(args.window):
                step()
        path = out / f"plain-{name}.json"
        tp.export_chrome_trace(str(path))
        plain[name] = path.stat().st_size / args.window

    res = {
        "windows": len(wins), "window_steps": window_steps, "ops_rows": rows,
        "ops_rows_per_step": rows / window_steps,
        "ops_bytes_per_row": ops_bytes / rows,
        "ops_kb_per_window_step": ops_bytes / window_steps / 1e3,
        "trace_gz_kb_per_window_step": trace_bytes / window_steps / 1e3,
        "trace_raw_kb_per_window_step": sum(w["trace_raw_bytes"] for w in wins) / window_steps / 1e3,
        "kb_per_window_step": (ops_bytes + trace_bytes) / window_steps / 1e3,
        "plain_kineto_kb_per_step": plain["defaults"] / 1e3,
        "plain_kineto_window_settings_kb_per_step": plain["window_settings"] / 1e3,
        "window_vs_plain_kineto": (ops_bytes + trace_bytes) / window_steps / plain["defaults"],
        "window_step_ms": cost["window_step_ms"], "neighbour_step_ms": cost["neighbour_step_ms"],
        "window_extra_fraction": cost["extra_fraction"],
        "start_call_s": cost["start_call_s"], "stop_call_s": cost["stop_call_s"], "writer_cpu_s": cost["process_cpu_s"],
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:42} {v:.4g}" if isinstance(v, float) else f"{k:42} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
