"""Samplers and the sampling thread."""

import time
from collections import deque

from tbdprof import schema
from tbdprof.samplers import Sampler, default_samplers
from tbdprof.samplers.nvml import NvmlSampler, visible_physical_index
from tbdprof.samplers.system import DiskSampler, HostCpuSampler, HostMemorySampler, NetworkSampler, ProcessSampler
from tbdprof.sampling import SamplingThread


def _collect(sampler, ticks=2, pause=0.05):
    out = []
    sampler.start()
    for _ in range(ticks):
        time.sleep(pause)
        sampler.sample(lambda m, d, v: out.append((m, d, v)))
    return out


def test_every_emitted_metric_is_in_the_schema():
    for s in (ProcessSampler(), HostCpuSampler(), HostMemorySampler(), NetworkSampler(), DiskSampler()):
        if not s.is_available():
            continue
        rows = _collect(s)
        assert rows, s.name
        for metric, device, value in rows:
            assert metric in schema.METRICS, metric
            assert isinstance(device, str) and isinstance(value, float)


def test_process_sampler_sees_this_process_work():
    s = ProcessSampler()
    s.start()
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    out = {}
    s.sample(lambda m, d, v: out.__setitem__(m, v))
    assert out["cpu.process_pct"] > 20
    assert out["mem.rss_bytes"] > 10 * 2**20
    assert out["cpu.process_threads"] >= 1


def test_host_cpu_has_one_row_per_core():
    import os

    rows = _collect(HostCpuSampler(), ticks=1)
    cores = {d for m, d, _ in rows if m == "cpu.core_pct"}
    assert len(cores) == os.cpu_count()
    assert all(0 <= v <= 100 for m, _, v in rows if m.endswith("_pct"))


def test_loopback_counters_are_recorded():
    rows = _collect(NetworkSampler(), ticks=1)
    assert ("net.bytes_sent", "lo") in {(m, d) for m, d, _ in rows}


def test_host_samplers_only_on_local_rank_zero():
    names0 = {s.name for s in default_samplers(0)}
    names1 = {s.name for s in default_samplers(1)}
    assert {"host_cpu", "network", "disk"} <= names0
    assert not {"host_cpu", "network", "disk"} & names1
    assert "process" in names1 and "nvml" in names1


class Boom(Sampler):
    name = "boom"

    def sample(self, emit):
        raise RuntimeError("probe failed")


class Count(Sampler):
    name = "count"

    def __init__(self):
        self.n = 0

    def sample(self, emit):
        self.n += 1
        emit("cpu.runnable", "", float(self.n))


class Unavailable(Sampler):
    name = "absent"

    def is_available(self):
        return False

    def sample(self, emit):  # pragma: no cover - never called
        raise AssertionError


def test_failing_sampler_is_disabled_once_and_others_go_on():
    out = deque()
    good = Count()
    t = SamplingThread([Boom(), good, Unavailable()], out, hz=100)
    t.start()
    time.sleep(0.2)
    t.stop()
    assert "boom" in t.disabled and "probe failed" in t.disabled["boom"]
    assert [s.name for s in t.active] == ["count"]
    assert good.n >= 5
    assert sum(1 for r in out if r[1] == "cpu.runnable") == good.n
    assert not t.is_alive()


def test_nvml_availability_follows_the_driver():
    import os

    # No NVIDIA driver -> unavailable, quietly (no exception); with one -> available.
    assert NvmlSampler(0).is_available() == os.path.exists("/dev/nvidiactl")


def test_cuda_visible_devices_mapping():
    assert visible_physical_index(1, {"CUDA_VISIBLE_DEVICES": "3,5"}) == 5
    assert visible_physical_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == "GPU-abc"
    assert visible_physical_index(2, {}) == 2


def test_process_sampler_includes_children_cpu_and_reads():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt=time.process_time()\nwhile time.process_time()-t<1.0: pass"])
    try:
        s = ProcessSampler()
        s.start()
        time.sleep(0.6)
        out = {}
        s.sample(lambda m, d, v: out.__setitem__(m, v))
        assert out["cpu.process_pct"] > 30  # the child burns a core; this process sleeps
    finally:
        child.wait()


def test_unchanged_counters_are_written_once_a_second_and_at_the_end():
    class Flat(Sampler):
        name = "flat"

        def sample(self, emit):
            emit("net.bytes_sent", "eth9", 100.0)  # a counter that never moves
            emit("cpu.system_pct", "", 5.0)  # a gauge: always recorded

    out = deque()
    t = SamplingThread([Flat()], out, hz=10)
    t._start_samplers()
    for _ in range(25):
        t.tick()
    metrics = [r[1] for r in out]
    assert metrics.count("net.bytes_sent") == 3  # ticks 0, 10, 20 (10 Hz: once a second)
    assert metrics.count("cpu.system_pct") == 25
    t.tick(final=True)
    assert [r[1] for r in out].count("net.bytes_sent") == 4


class Hang(Sampler):
    name = "hang"

    def __init__(self):
        import threading

        self.release = threading.Event()

    def sample(self, emit):
        self.release.wait(30)  # like an NVML call that never returns


def test_hung_sampler_is_disabled_and_sampling_goes_on():
    from tbdprof.sampling import Sampling

    out = deque()
    good, hang = Count(), Hang()
    sampling = Sampling([good, hang], out, hz=50, hang_s=0.2)
    sampling.start()
    try:
        time.sleep(0.5)
        stuck_at = good.n
        time.sleep(0.2)
        assert good.n == stuck_at  # the loop is stuck behind the hung call
        sampling.check()
        time.sleep(0.3)
        assert good.n > stuck_at + 3  # a fresh thread carries on without it
        assert "hang" in sampling.disabled and [s.name for s in sampling.active] == ["count"]
    finally:
        hang.release.set()
        sampling.stop()
    assert sampling.ticks >= good.n - 1
