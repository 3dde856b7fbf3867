"""Clock alignment over the process group recovers a skew injected into one rank."""

import json
import os
import socket
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys, torch.distributed as dist
    from tbdprof import clock
    dist.init_process_group("gloo")
    est = clock.estimate_offset(rounds=32)
    print(json.dumps(est.to_dict()))
    dist.destroy_process_group()
""")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_injected_skew_is_recovered():
    skew_ns = 7_500_000  # rank 1's clock runs 7.5 ms ahead
    port = _port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if rank == 1:
            env["TBDPROF_TEST_CLOCK_SKEW_NS"] = str(skew_ns)
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, text=True))
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert outs[0]["offset_ns"] == 0
    est = outs[1]
    # offset maps rank 1's clock onto rank 0's: -skew, within the measured uncertainty (+ slack)
    assert abs(est["offset_ns"] + skew_ns) <= max(est["uncertainty_ns"], 0) + 200_000
    assert est["uncertainty_ns"] < 1_000_000
