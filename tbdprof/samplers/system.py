"""Host and process samplers built on psutil and /proc."""

from __future__ import annotations

import os
import time

import psutil

from .base import Emit, Sampler

_CHILDREN_REFRESH_S = 1.0


class ProcessSampler(Sampler):
    """CPU, threads, RSS and I/O of this rank's process and its children (data-loader workers)."""

    name = "process"
    scope = "process"

    def __init__(self, pid: int | None = None):
        self._proc = psutil.Process(pid)
        self._children: list[psutil.Process] = []
        self._children_at = 0.0
        self._last_cpu: float | None = None
        self._last_t = 0.0

    def start(self) -> None:
        self._last_cpu, self._last_t = self._cpu_total(), time.monotonic()

    def _tree(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._children_at > _CHILDREN_REFRESH_S:
            try:
                self._children = self._proc.children(recursive=True)
            except psutil.Error:
                self._children = []
            self._children_at = now
        return [self._proc, *self._children]

    def _cpu_total(self) -> float:
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def sample(self, emit: Emit) -> None:
        now = time.monotonic()
        cpu = self._cpu_total()
        if self._last_cpu is not None and now > self._last_t:
            # Children that exited since the last tick take their CPU with them:
            # clamp instead of reporting a negative share.
            emit("cpu.process_pct", "", max(0.0, (cpu - self._last_cpu) / (now - self._last_t) * 100.0))
        self._last_cpu, self._last_t = cpu, now
        rss = 0
        io = [0, 0, 0, 0]
        for p in self._tree():
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    c = p.io_counters()
                io[0] += c.read_bytes
                io[1] += c.write_bytes
                io[2] += getattr(c, "read_chars", 0)
                io[3] += getattr(c, "write_chars", 0)
            except (psutil.Error, AttributeError):
                continue
        emit("cpu.process_threads", "", float(self._proc.num_threads()))
        emit("mem.rss_bytes", "", float(rss))
        emit("io.read_bytes", "", float(io[0]))
        emit("io.write_bytes", "", float(io[1]))
        emit("io.read_chars", "", float(io[2]))
        emit("io.write_chars", "", float(io[3]))


class HostCpuSampler(Sampler):
    """Per-core and whole-host CPU busy, iowait and runnable threads."""

    name = "host_cpu"
    scope = "host"

    def start(self) -> None:
        self._last = psutil.cpu_times(percpu=True)

    @staticmethod
    def _busy(a, b) -> tuple[float, float]:
        total = sum(b) - sum(a)
        if total <= 0:
            return 0.0, 0.0
        idle = (b.idle - a.idle) + (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
        iowait = getattr(b, "iowait", 0) - getattr(a, "iowait", 0)
        return 100.0 * (total - idle) / total, 100.0 * iowait / total

    def sample(self, emit: Emit) -> None:
        now = psutil.cpu_times(percpu=True)
        busy_sum = iowait_sum = 0.0
        for i, (a, b) in enumerate(zip(self._last, now)):
            busy, iowait = self._busy(a, b)
            busy_sum += busy
            iowait_sum += iowait
            emit("cpu.core_pct", str(i), busy)
        n = max(1, len(now))
        emit("cpu.system_pct", "", busy_sum / n)
        emit("cpu.iowait_pct", "", iowait_sum / n)
        self._last = now
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = f.read().split()[3].split("/")[0]
            emit("cpu.runnable", "", float(running))
        except (OSError, IndexError, ValueError):
            pass


class HostMemorySampler(Sampler):
    name = "host_memory"
    scope = "host"

    def sample(self, emit: Emit) -> None:
        vm = psutil.virtual_memory()
        emit("mem.used_bytes", "", float(vm.total - vm.available))
        emit("mem.available_bytes", "", float(vm.available))
        emit("mem.swap_used_bytes", "", float(psutil.swap_memory().used))


class NetworkSampler(Sampler):
    """Per-interface byte and packet counters (loopback included: local ranks talk over it)."""

    name = "network"
    scope = "host"

    def is_available(self) -> bool:
        return bool(psutil.net_io_counters(pernic=True))

    def sample(self, emit: Emit) -> None:
        for nic, c in psutil.net_io_counters(pernic=True).items():
            emit("net.bytes_sent", nic, float(c.bytes_sent))
            emit("net.bytes_recv", nic, float(c.bytes_recv))
            emit("net.packets_sent", nic, float(c.packets_sent))
            emit("net.packets_recv", nic, float(c.packets_recv))


class DiskSampler(Sampler):
    """Per-disk read/write bytes for whole block devices (no partitions, loops or ram disks)."""

    name = "disk"
    scope = "host"

    def start(self) -> None:
        try:
            blocks = set(os.listdir("/sys/block"))
        except OSError:
            blocks = set()
        self._disks = {d for d in blocks if not d.startswith(("loop", "ram", "zram"))}

    def is_available(self) -> bool:
        try:
            return bool(psutil.disk_io_counters(perdisk=True))
        except Exception:  # noqa: BLE001 - some containers have no diskstats
            return False

    def sample(self, emit: Emit) -> None:
        for disk, c in psutil.disk_io_counters(perdisk=True).items():
            if self._disks and disk not in self._disks:
                continue
            emit("disk.read_bytes", disk, float(c.read_bytes))
            emit("disk.write_bytes", disk, float(c.write_bytes))
