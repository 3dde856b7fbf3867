"""Host and process samplers built on psutil and /proc."""

from __future__ import annotations

import os
import time

import psutil

from .base import Emit, Sampler

_CHILDREN_REFRESH_S = 1.0


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


class ProcFile:
    """A /proc file kept open and re-read with pread: one syscall per reading
    instead of open+read+close (the kernel regenerates the text at offset 0)."""

    CHUNK = 65536

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read(self) -> str:
        chunks, off = [], 0
        while True:
            b = os.pread(self.fd, self.CHUNK, off)
            chunks.append(b)
            off += len(b)
            if len(b) < self.CHUNK:
                return b"".join(chunks).decode("ascii", "replace")

    def close(self) -> None:
        os.close(self.fd)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _parse_stat(raw: str) -> tuple[float, int, int]:
    """(cpu seconds, threads, rss bytes) from the text of /proc/PID/stat."""
    f = raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return (int(f[11]) + int(f[12])) / _CLK_TCK, int(f[17]), int(f[21]) * _PAGE


def _parse_io(raw: str) -> dict[str, int]:
    out = {}
    for line in raw.splitlines():
        k, _, v = line.partition(":")
        out[k] = int(v)
    return out


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren... from the kernel's per-thread children lists."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue  # exited
        for tid in tasks:
            try:
                kids = [int(k) for k in _read(f"/proc/{p}/task/{tid}/children").split()]
            except FileNotFoundError:
                if p == pid and tid == str(pid):
                    raise  # the kernel does not offer the file at all
                continue
            out += kids
            todo += kids
    return out


class ProcessSampler(Sampler):
    """CPU, threads, RSS and I/O of this rank's process and its children (data-loader workers).

    Reads /proc/PID/stat and /proc/PID/io directly: two small reads per process.
    """

    name = "process"
    scope = "process"

    def __init__(self, pid: int | None = None):
        self._pid = pid or os.getpid()
        self._proc = psutil.Process(self._pid)
        self._children: list[int] = []
        self._children_at = 0.0
        self._last_cpu: float | None = None
        self._last_t = 0.0
        self._files: dict[int, tuple[ProcFile, ProcFile]] = {}

    def is_available(self) -> bool:
        return os.path.exists(f"/proc/{self._pid}/stat")

    def _open(self, pid: int) -> tuple[ProcFile, ProcFile]:
        files = self._files.get(pid)
        if files is None:
            files = self._files[pid] = (ProcFile(f"/proc/{pid}/stat"), ProcFile(f"/proc/{pid}/io"))
        return files

    def start(self) -> None:
        self._last_cpu, self._last_t = self._read_tree()[0], time.monotonic()

    def _tree(self) -> list[int]:
        now = time.monotonic()
        if now - self._children_at > _CHILDREN_REFRESH_S:
            try:
                self._children = _descendants(self._pid)
            except OSError:  # no /proc/PID/task/TID/children: psutil scans all of /proc (slower)
                try:
                    self._children = [c.pid for c in self._proc.children(recursive=True)]
                except psutil.Error:
                    self._children = []
            self._children_at = now
            for gone in set(self._files) - {self._pid, *self._children}:
                for f in self._files.pop(gone):
                    f.close()
        return [self._pid, *self._children]

    def _read_tree(self) -> tuple[float, int, int, list[int]]:
        cpu, rss, threads = 0.0, 0, 0
        io = [0, 0, 0, 0]
        for pid in self._tree():
            try:
                stat, iof = self._open(pid)
                c, t, r = _parse_stat(stat.read())
                d = _parse_io(iof.read())
            except (OSError, ValueError, IndexError):
                continue  # exited between listing and reading, or no permission
            cpu += c
            rss += r
            if pid == self._pid:
                threads = t
            io[0] += d.get("read_bytes", 0)
            io[1] += d.get("write_bytes", 0)
            io[2] += d.get("rchar", 0)
            io[3] += d.get("wchar", 0)
        return cpu, threads, rss, io

    def sample(self, emit: Emit) -> None:
        now = time.monotonic()
        cpu, threads, rss, io = self._read_tree()
        if self._last_cpu is not None and now > self._last_t:
            # Children that exited since the last tick take their CPU with them:
            # clamp instead of reporting a negative share.
            emit("cpu.process_pct", "", max(0.0, (cpu - self._last_cpu) / (now - self._last_t) * 100.0))
        self._last_cpu, self._last_t = cpu, now
        emit("cpu.process_threads", "", float(threads))
        emit("mem.rss_bytes", "", float(rss))
        emit("io.read_bytes", "", float(io[0]))
        emit("io.write_bytes", "", float(io[1]))
        emit("io.read_chars", "", float(io[2]))
        emit("io.write_chars", "", float(io[3]))


class _ProcFileSampler(Sampler):
    """A host sampler that parses one /proc file per tick (cheaper than psutil's several)."""

    path = ""

    def is_available(self) -> bool:
        return os.path.exists(self.path)

    def start(self) -> None:
        self._file = ProcFile(self.path)

    def close(self) -> None:
        self._file.close()


class HostCpuSampler(_ProcFileSampler):
    """Per-core and whole-host CPU busy, iowait, and runnable threads, from /proc/stat."""

    name = "host_cpu"
    scope = "host"
    path = "/proc/stat"

    def start(self) -> None:
        super().start()
        self._last, _ = self._parse()

    def _parse(self) -> tuple[dict[str, list[int]], int]:
        cores: dict[str, list[int]] = {}
        running = -1
        for line in self._file.read().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                cores[name[3:]] = [int(v) for v in vals[:8]]
            elif line.startswith("procs_running"):
                running = int(line.split()[1])
        return cores, running

    def sample(self, emit: Emit) -> None:
        now, running = self._parse()
        busy_sum = iowait_sum = 0.0
        for core, b in now.items():
            a = self._last.get(core, b)
            total = sum(b) - sum(a)
            # fields: user nice system idle iowait irq softirq steal
            idle, iowait = b[3] - a[3], b[4] - a[4]
            busy = 100.0 * (total - idle - iowait) / total if total > 0 else 0.0
            iow = 100.0 * iowait / total if total > 0 else 0.0
            busy_sum += busy
            iowait_sum += iow
            emit("cpu.core_pct", core, busy)
        n = max(1, len(now))
        emit("cpu.system_pct", "", busy_sum / n)
        emit("cpu.iowait_pct", "", iowait_sum / n)
        if running >= 0:
            emit("cpu.runnable", "", float(running))
        self._last = now


class HostMemorySampler(_ProcFileSampler):
    """Host memory in use and available, and swap in use, from /proc/meminfo."""

    name = "host_memory"
    scope = "host"
    path = "/proc/meminfo"

    def sample(self, emit: Emit) -> None:
        kb = {}
        for line in self._file.read().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                kb[key] = int(rest.split()[0]) * 1024
        emit("mem.used_bytes", "", float(kb["MemTotal"] - kb["MemAvailable"]))
        emit("mem.available_bytes", "", float(kb["MemAvailable"]))
        emit("mem.swap_used_bytes", "", float(kb.get("SwapTotal", 0) - kb.get("SwapFree", 0)))


class NetworkSampler(_ProcFileSampler):
    """Per-interface byte and packet counters (loopback included: local ranks talk over it)."""

    name = "network"
    scope = "host"
    path = "/proc/net/dev"

    def sample(self, emit: Emit) -> None:
        for line in self._file.read().splitlines()[2:]:
            nic, _, rest = line.partition(":")
            f = rest.split()
            if len(f) < 10:
                continue
            nic = nic.strip()
            emit("net.bytes_recv", nic, float(f[0]))
            emit("net.packets_recv", nic, float(f[1]))
            emit("net.bytes_sent", nic, float(f[8]))
            emit("net.packets_sent", nic, float(f[9]))


class DiskSampler(_ProcFileSampler):
    """Per-disk read/write bytes for whole block devices (no partitions, loops or ram disks)."""

    name = "disk"
    scope = "host"
    path = "/proc/diskstats"
    SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector size

    def start(self) -> None:
        super().start()
        try:
            blocks = set(os.listdir("/sys/block"))
        except OSError:
            blocks = set()
        self._disks = {d for d in blocks if not d.startswith(("loop", "ram", "zram"))}

    def sample(self, emit: Emit) -> None:
        for line in self._file.read().splitlines():
            f = line.split()
            if len(f) < 10 or (self._disks and f[2] not in self._disks):
                continue
            emit("disk.read_bytes", f[2], float(int(f[5]) * self.SECTOR))
            emit("disk.write_bytes", f[2], float(int(f[9]) * self.SECTOR))
