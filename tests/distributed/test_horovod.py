"""Horovod engine end to end: 2 ranks over gloo (horovodrun and tbdprof's local
launcher) and over MPI (mpirun), comm spans, timeline ingestion, tunables.

Runs wherever Horovod is installed (`make test` builds it); skipped, with the
reason, where it is not.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tbdprof import schema
from tbdprof.horovod_timeline import ingest

needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="Horovod is not installed: run `make horovod`"
)
STEPS = 4
TRAIN = [sys.executable, "-m", "tbdprof.workloads.train", "resnet50", "--engine", "horovod", "--steps", str(STEPS)]
# Two ranks on two cores: one OpenMP thread each (horovodrun and mpirun do not set it).
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd, timeout=240, **kw):
    proc = subprocess.run(cmd, env={**os.environ, **ENV, **kw.pop("env", {})}, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _spans(run_dir, **where):
    rows = [
        {**r, "rank": int(seg.parent.name.split("=")[1])}
        for seg in Path(run_dir).glob(f"host=*/rank=*/{schema.SPANS}-*{schema.SEGMENT_SUFFIX}")
        for r in pq.read_table(seg).to_pylist()
    ]
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def _params(run_dir) -> int:
    meta = json.loads(next(Path(run_dir).glob("host=*/rank=0/rank.json")).read_text())
    return meta["metadata"]["params"]


def _launch(kind, out: Path, data_cache) -> Path:
    run_dir = out / kind
    args = ["--out", str(out), "--run-id", kind, "--horovod-timeline", "--fusion-threshold-mb", "8"]
    if kind == "horovodrun":
        hvdrun = str(Path(sys.executable).parent / "horovodrun")
        _run([hvdrun, "-np", "2", "-H", "localhost:2", "--gloo", *TRAIN, *args])
    elif kind == "mpirun":
        from tbdprof.launch.horovod import mpirun_for_horovod

        _run([mpirun_for_horovod(), "--allow-run-as-root", "--oversubscribe", "-np", "2", *TRAIN, *args])
    else:  # tbdprof's local launcher with Horovod's gloo rendezvous
        script = (
            "import sys; from tbdprof.launch.execute import run_here; from tbdprof.launch.local import new_run_dir\n"
            f"sys.exit(run_here({TRAIN + args[4:]!r}, 2, new_run_dir({str(out)!r}, {kind!r}, 'x'), {{}}, horovod=True))"
        )
        _run([sys.executable, "-c", script])
    return run_dir


@pytest.fixture(scope="module", params=["horovodrun", "mpirun", "local"])
def run(request, tmp_path_factory, data_cache):
    return _launch(request.param, tmp_path_factory.mktemp("hvd"), data_cache)


@needs_horovod
def test_comm_bytes_per_step_equal_gradient_bytes(run):
    grad_bytes = _params(run) * 4  # fp32
    for rank in (0, 1):
        comm = _spans(run, rank=rank, kind=schema.KIND_COMM)
        per_step = {}
        for s in comm:
            assert s["name"] == schema.COMM_ALLREDUCE and s["end_ns"] >= s["start_ns"]
            per_step[s["step"]] = per_step.get(s["step"], 0) + s["bytes"]
        assert per_step == {step: grad_bytes for step in range(STEPS)}, rank


@needs_horovod
def test_timeline_ingested_on_rank0_with_negotiation_and_readiness(run):
    hvd = _spans(run, kind=schema.KIND_HOROVOD)
    assert hvd and {s["rank"] for s in hvd} == {0}
    activities = {s["name"].split(schema.HVD_SEP)[0] for s in hvd}
    assert {"NEGOTIATE_ALLREDUCE", "ALLREDUCE", f"{schema.HVD_READY}0", f"{schema.HVD_READY}1"} <= activities
    allreduce = {}
    for s in hvd:
        if s["name"].startswith("ALLREDUCE" + schema.HVD_SEP):
            allreduce[s["step"]] = allreduce.get(s["step"], 0) + s["bytes"]
    assert allreduce == {step: _params(run) * 4 for step in range(STEPS)}


@needs_horovod
def test_tunables_are_recorded_in_every_rank(run):
    for rank_json in Path(run).glob("host=*/rank=*/rank.json"):
        env = json.loads(rank_json.read_text())["env"]["env"]
        assert env["HOROVOD_FUSION_THRESHOLD"] == str(8 * 1024 * 1024), rank_json


@needs_horovod
def test_truncated_timeline_ingests_the_complete_part(run, tmp_path):
    full = (Path(run) / "horovod_timeline.json").read_text()
    (tmp_path / "cut.json").write_text(full[: full.index('"ph"', len(full) * 2 // 3)])  # inside a record
    whole, cut = ingest(Path(run) / "horovod_timeline.json", tmp_path / "a", "h"), ingest(tmp_path / "cut.json", tmp_path / "b", "h")
    assert whole.dropped is None and 0 < cut.spans < whole.spans
    assert cut.dropped and cut.dropped_bytes > 0


def test_missing_horovod_is_one_line_and_exit_2(tmp_path):
    script = (
        "import sys; sys.modules['horovod'] = None\n"
        "from tbdprof.cli import main\n"
        f"sys.exit(main(['run', 'resnet50', '--engine', 'horovod', '--nproc', '2', '--out', {str(tmp_path)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "make horovod" in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())


def test_horovod_options_need_the_horovod_engine(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tbdprof", "run", "resnet50", "--cycle-time-ms", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "need --engine horovod" in proc.stderr
