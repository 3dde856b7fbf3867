"""Helpers of the multi-node tests: launching on the testbed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tbdprof.launch import testbed

# node1's clock runs this far ahead: the clock-alignment test must recover it.
SKEW_NS = 5_000_000


def launch(tb: testbed.Testbed, out: Path, run_id: str, launcher: str, hosts: str, *extra: str,
           env: dict[str, str] | None = None) -> Path:
    """``tbdprof launch`` started on node0 (with ``env`` added); fails the test with the job's output on error."""
    argv = [
        sys.executable, "-m", "tbdprof", "launch", "resnet50", "--launcher", launcher, "--hosts", hosts,
        "--iface", "eth0", "--out", str(out), "--run-id", run_id, "--no-report", *extra,
    ]
    res = tb.run(argv, env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}), timeout=240)
    assert res.returncode == 0, f"launch failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return out / run_id
