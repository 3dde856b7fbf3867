"""The Profiler: the public recorder for any training script.

```python
prof = tbdprof.Profiler(out="runs")
with prof:
    prof.watch(model, optimizer)            # memory breakdown (+ DDP comm spans)
    for batch in prof.loader(loader):       # data wait, step boundaries, samples
        with prof.phase("forward"): loss = criterion(model(batch[0]), batch[1])
        with prof.phase("backward"): loss.backward()
        with prof.phase("optimizer"): optimizer.step()
```

The training thread only appends rows (the row types of tbdprof.schema) to
deques; a sampling thread reads the system counters and a writer thread turns
the buffers into Parquet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import clock, cuda, envinfo, progress, ranks, schema, store
from .cost import CostAccount
from .errors import UserError
from .sampling import Sampling
from .samplers import Sampler, default_samplers
from .schema import SpanRow
from .writer import Buffers, SegmentWriter

log = logging.getLogger("tbdprof")
_NULL = contextlib.nullcontext()
_start_observers: list[Callable[["Profiler"], None]] = []


def on_start(observer: Callable[["Profiler"], None]) -> None:
    """Call ``observer(profiler)`` whenever a Profiler starts (before it records anything).

    ``tbdprof profile``'s automatic recorder uses it to stand down when the
    script starts a Profiler of its own.
    """
    if observer not in _start_observers:
        _start_observers.append(observer)


class RunDirError(UserError):
    """The output folder cannot be used for this rank."""


def _ensure_log_handler() -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
        log.setLevel(logging.WARNING)
        log.propagate = False


def _batch_items(batch: Any) -> int | None:
    """Samples in a batch: the leading dimension of its first tensor-like leaf."""
    obj = batch
    for _ in range(4):
        shape = getattr(obj, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else None
        if isinstance(obj, dict) and obj:
            obj = next(iter(obj.values()))
        elif isinstance(obj, (list, tuple)) and obj:
            obj = obj[0]
        else:
            return None
    return None


def _dist():
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


class _Phase:
    """A reusable context manager timing one phase; cheap on the hot path."""

    __slots__ = ("prof", "name", "kind", "nbytes", "start", "outer")

    def __init__(self, prof: "Profiler", name: str, kind: str, nbytes: int | None = None):
        self.prof, self.name, self.kind, self.nbytes = prof, name, kind, nbytes

    def __enter__(self):
        prof = self.prof
        self.outer, prof._open_span = prof._open_span, self  # what the progress watch reports as open
        self.start = clock.now_ns()
        return self

    def __exit__(self, *exc):
        prof = self.prof
        prof._open_span = self.outer
        # Profiler._record_span inlined, with a plain tuple of SpanRow's columns: this is the per-span path
        prof._spans.append((prof.step_index, self.name, self.kind, self.start, clock.now_ns(), self.nbytes, None, None))
        prof._kinds_seen.add(self.kind)
        return False


class Profiler:
    """Records one rank's spans, samples and memory into ``<out>/<run_id>/host=H/rank=R/``.

    Parameters
    ----------
    out:
        Folder holding runs. Ignored when ``TBDPROF_RUN_DIR`` is set (the
        tbdprof launchers set it so all ranks share one run folder).
    run_id:
        Name of the run folder. Default: ``TBDPROF_RUN_ID``, else agreed over
        the process group (rank 0's choice), else a timestamp.
    sample_hz:
        System sampling rate (default 10 Hz).
    flush_s:
        Seconds between Parquet segments: the most a killed rank can lose.
    warmup_steps:
        Steps the analysis leaves out of steady-state figures (recorded anyway).
    memory_every:
        Measure the memory breakdown on the first steps up to two past warm-up,
        then every this many steps (1 = every step). Counting activations costs
        a few microseconds per saved tensor.
    enabled:
        ``False`` makes every call a no-op (for unprofiled baselines).
    deep_every, deep_steps:
        Deep windows (:mod:`tbdprof.deep`): every ``deep_every`` steps, record
        ``deep_steps`` steps (default 5) with torch.profiler into table ``ops``
        and a Kineto trace. Default: env ``TBDPROF_DEEP_EVERY`` /
        ``TBDPROF_DEEP_STEPS``; 0 or unset, no windows on a schedule. Either
        way ``tbdprof trace RUN_DIR`` asks a live run for one on demand
        (``TBDPROF_DEEP_REQUESTS=0``: not).
    deep_anomaly:
        A deep window when the step time regresses: ``"FACTORxSTEPS"``
        (``STEPS`` steps in a row slower than ``FACTOR`` x the running
        median), ``False`` or ``"off"`` for none. Default: env
        ``TBDPROF_DEEP_ANOMALY``, else ``"1.5x5"``, within a budget of 4
        windows and 64 MiB per hour (:mod:`tbdprof.deep`).
    """

    def __init__(
        self,
        out: str | os.PathLike = "runs",
        run_id: str | None = None,
        sample_hz: float = 10.0,
        flush_s: float = 5.0,
        warmup_steps: int = 2,
        memory_every: int = 20,
        enabled: bool = True,
        samplers: list[Sampler] | None = None,
        metadata: dict[str, Any] | None = None,
        clock_sync: bool = True,
        hang_s: float | None = None,
        hang_factor: float | None = None,
        deep_every: int | None = None,
        deep_steps: int | None = None,
        deep_anomaly: str | bool | None = None,
    ):
        if sample_hz <= 0:
            raise ValueError("sample_hz must be positive")
        if flush_s <= 0:
            raise ValueError("flush_s must be positive")
        self.out = Path(out)
        self.run_id = run_id
        self.sample_hz = sample_hz
        self.flush_s = flush_s
        self.warmup_steps = warmup_steps
        if memory_every < 1:
            raise ValueError("memory_every must be at least 1")
        self.memory_every = memory_every
        self.enabled = enabled
        self.metadata = dict(metadata or {})
        self.clock_sync = clock_sync
        # progress watch (tbdprof/progress.py): no step end for max(hang_s, hang_factor x median step) is a hang
        self.hang_s = hang_s if hang_s is not None else progress.env_float(progress.ENV_HANG_S, progress.DEFAULT_HANG_S)
        self.hang_factor = (hang_factor if hang_factor is not None
                            else progress.env_float(progress.ENV_HANG_FACTOR, progress.DEFAULT_HANG_FACTOR))
        if self.hang_s <= 0 or self.hang_factor <= 0:
            raise ValueError("hang_s and hang_factor must be positive")
        self._progress: progress.ProgressWatch | None = None
        from .deep import anomaly_setting, config as _deep_config

        self.deep_every, self.deep_steps = _deep_config(deep_every, deep_steps)
        self.deep_anomaly = anomaly_setting(deep_anomaly)  # (factor, steps, windows per hour) or None
        self._deep = None  # tbdprof.deep.DeepWindows, unless deep windows are off altogether
        self._open_span: _Phase | None = None  # the innermost prof.phase()/prof.comm() block open
        self._probes: list[Callable[[], dict]] = []  # open phase / collectives in flight, for the progress watch
        try:
            self.info, self._env_error = ranks.detect(), None
        except ranks.LaunchEnvError as e:  # a process group joined later may complete it (start())
            self.info, self._env_error = ranks.RankInfo(0, 1, 0, 1, "none", socket.gethostname(), os.getpid()), e
        self.step_index = -1
        self.run_dir: Path | None = None
        self.rank_dir: Path | None = None
        self._samplers = samplers
        self._buffers = Buffers()
        self._spans = self._buffers.queues[SpanRow]  # appended to by _record_span and _Phase only
        self._memory = self._buffers.queues[schema.MemoryRow]
        self._step_start: int | None = None
        self._step_items: int | None = None
        self._step_units: int | None = None
        self._last_step_end: int | None = None
        self._step_observers: list[Callable[[int], None]] = []
        self._kinds_seen: set[str] = set()  # span kinds recorded, for the coverage defaults
        self.coverage: dict[str, dict[str, str]] = {}
        self._trackers: list = []
        self._pending: list = []  # comm spans completed off the training thread (Horovod's, FSDP's)
        self._cuda: cuda.CudaPending | None = None  # CUDA-event-timed spans (device phases, NCCL buckets)
        self._sampler: Sampling | None = None
        self._writer: SegmentWriter | None = None
        self._started = False
        self._closed = False
        self._meta: dict[str, Any] = {}
        self._rank_json_failed = False
        self._rss_proc = None
        self.cost = CostAccount()  # what this recording cost (rank.json profiling_cost; tbdprof.cost)

    # --- lifecycle ------------------------------------------------------------

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self.note_failure(exc)
        self.close(status="failed" if exc_type else "complete")
        return False

    def _resolve_run_dir(self) -> Path:
        env_dir = os.environ.get("TBDPROF_RUN_DIR")
        if env_dir:
            return Path(env_dir)
        run_id = self.run_id or os.environ.get("TBDPROF_RUN_ID")
        if not run_id:
            run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{store.safe_host(socket.gethostname())}-{os.getpid()}"
            dist = _dist()
            if dist is not None and dist.get_world_size() > 1:
                box = [run_id]
                dist.broadcast_object_list(box, src=0)
                run_id = box[0]
        return self.out / run_id

    def start(self) -> "Profiler":
        """Create the rank folder, write rank.json, start the sampler and writer threads."""
        for observer in list(_start_observers):
            observer(self)
        if self._started or not self.enabled:
            return self
        _ensure_log_handler()
        dist = _dist()
        if dist is not None and (self.info.launcher == "none" or self._env_error is not None):
            # A framework's launcher (Lightning's ddp, mp.spawn) or init_process_group(rank=, world_size=)
            # leaves the environment unset or half set; the process group it joined is the truth.
            self.info = ranks.from_process_group(dist, self._gloo_group(dist))
        elif self._env_error is not None:
            raise self._env_error
        self.run_dir = self._resolve_run_dir()
        self.run_id = self.run_dir.name
        self.rank_dir = store.rank_dir(self.run_dir, self.info.host, self.info.rank)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"output path {self.run_dir} exists and is not a folder")
        if (self.rank_dir / schema.RANK_FILE).exists():
            raise RunDirError(
                f"{self.rank_dir} already holds a recording of rank {self.info.rank}: "
                "use a new run id or another output folder"
            )
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        start_ns = clock.now_ns()
        self._meta = {
            "schema_version": schema.SCHEMA_VERSION,
            "run_id": self.run_id,
            **self.info.to_dict(),
            "status": "running",
            "start_ns": start_ns,
            "sample_hz": self.sample_hz,
            "flush_s": self.flush_s,
            "warmup_steps": self.warmup_steps,
            "memory_every": self.memory_every,
            "env": envinfo.capture(),
            "metadata": self.metadata,
            "clock": {},
        }
        if self.info.rank == 0:
            store.update_run_json(
                self.run_dir, run_id=self.run_id, world_size=self.info.world_size, launcher=self.info.launcher
            )
        self._write_rank_json()
        schemas = {t: schema.table_schema(t, self.run_id, self.info.rank, self.info.host) for t in schema.TABLES}
        samplers = self._samplers if self._samplers is not None else default_samplers(self.info.local_rank)
        self._sampler = Sampling(samplers, self._buffers.queues[schema.SampleRow], self.sample_hz)
        self._writer = SegmentWriter(self.rank_dir, self._buffers, schemas, self.flush_s, [self._resolve_pending, self._sampler.check])
        self._writer.start()
        self._progress = progress.ProgressWatch(
            self, self.hang_s, self.hang_factor, progress.env_float(progress.ENV_STATUS_S, progress.DEFAULT_STATUS_S),
            self.rank_dir, self._buffers.queues[schema.HangRow], self._writer.flush)
        self.on_step_end(self._progress.step_ended)
        from .deep import DeepWindows, requests_enabled

        # on a schedule, on demand (`tbdprof trace`), on slow steps (deep_anomaly)
        if self.deep_every or requests_enabled() or self.deep_anomaly:
            self._deep = DeepWindows(self, self._buffers.queues[schema.OpRow], self.deep_every, self.deep_steps,
                                     self.deep_anomaly, self._buffers.queues[schema.KernelRow])
            self.on_step_end(self._deep.step_ended)
            self._pending.append(self._deep)  # the writer thread turns closed windows into ops rows
            self._progress.tick_hooks.append(self._deep.poll_request)  # the request file, off the training thread
        self._progress.start()
        self._sampler.start()
        self._started = True
        self._pid = os.getpid()
        self._install_sigterm()
        if self.clock_sync:
            self.sync_clocks("start")
        return self

    def _install_sigterm(self) -> None:
        """Flush and mark the rank on SIGTERM (what launchers and schedulers send),
        unless the script installed its own handler."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        # Forked children (data-loader workers) inherit the handler but must not flush.
        if os.getpid() == self._pid:
            self.close(status="terminated")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def sync_clocks(self, when: str) -> None:
        """Estimate this rank's clock offset to rank 0 (collective over the process group)."""
        dist = _dist()
        if dist is None or dist.get_world_size() < 2:
            if self.info.world_size == 1:
                self._meta["clock"][when] = clock.ClockEstimate(0, 0, clock.now_ns(), 0).to_dict()
            return
        try:
            est = clock.estimate_offset(self._gloo_group(dist), timeout_s=30.0 if when == "start" else 10.0)
            self._meta["clock"][when] = est.to_dict()
        except Exception as e:  # noqa: BLE001 - a peer gone at the end must not fail training
            log.warning("tbdprof: clock sync at %s failed on rank %d (%s)", when, self.info.rank, e)
        self._write_rank_json()

    def _gloo_group(self, dist):
        """The group for tbdprof's own CPU collectives: the world's when it is gloo, else a gloo
        group made once (collective: every rank calls this at the same point)."""
        if dist.get_backend() == "gloo":
            return None
        if not hasattr(self, "_gloo"):
            self._gloo = dist.new_group(backend="gloo")
        return self._gloo

    def close(self, status: str = "complete") -> None:
        """End the open step, sync clocks, flush everything and mark the rank's status."""
        if not self._started or self._closed:
            return
        self._closed = True
        if self._step_start is not None:
            self._end_step()
        self._cover_defaults()
        # Only a clean end syncs clocks: it is collective, and after a failure
        # or a signal the peers may be gone.
        if self.clock_sync and status == "complete":
            self.sync_clocks("end")
        for t in self._trackers:
            t.remove()
        self._progress.stop(status)
        self._sampler.stop()
        self._resolve_pending(force=True)
        self._writer.stop()
        self._meta.update(
            status=status,
            end_ns=clock.now_ns(),
            steps=self.step_index + 1,
            rows_written=self._writer.rows_written,
            rows_dropped=self._writer.rows_dropped,
            writer_error=self._writer.failed,
            samplers_active=[s.name for s in self._sampler.active],
            samplers_disabled=self._sampler.disabled,
            sampler_cpu_s=self._sampler.cpu_s,
            sampler_ticks=self._sampler.ticks,
        )
        self._meta["profiling_cost"] = self.cost.summary(self)
        self._meta[schema.COVERAGE_FILE_KEY] = self.coverage
        self._write_rank_json()

    # --- progress: what the progress watch reports (tbdprof/progress.py) ----------

    def add_progress_probe(self, probe: Callable[[], dict]) -> None:
        """Register ``probe() -> {"phase": str|None, "collective": str|None}``, asked (off the training
        thread) by the progress watch: the zero-code recorder's open phase, a comm hook's buckets in flight."""
        self._probes.append(probe)

    def progress_state(self) -> dict:
        """The phase open now and the collectives in flight: ``{"phase": ..., "collective": ...}``."""
        span = self._open_span
        state: dict = {"phase": None, "collective": None}
        if span is not None:
            key = "collective" if span.kind == schema.KIND_COMM else "phase"
            state[key] = span.name
            outer = span.outer
            if key == "collective" and outer is not None and outer.kind == schema.KIND_PHASE:
                state["phase"] = outer.name
        for probe in self._probes:
            try:
                got = probe() or {}
            except Exception:  # noqa: BLE001 - a probe of a half-torn-down object
                continue
            for k, v in got.items():
                if v and not state.get(k):
                    state[k] = v
        return state

    def note_failure(self, exc: BaseException) -> None:
        """Record where and why training raised (table ``hangs``, event ``error``): a peer gone in a collective."""
        if self._progress is not None and not self._closed:
            try:
                self._progress.record_error(exc)
            except Exception as e:  # noqa: BLE001
                log.debug("tbdprof: could not record the failure: %s", e)

    # --- coverage: what this recording saw, and what it could not -----------------

    def note_coverage(self, item: str, state: str, how: str) -> None:
        """Say how ``item`` (one of :data:`tbdprof.schema.COVERAGE_ITEMS`) was recorded, or why it was not.

        Written into ``rank.json``; ``report`` and ``diagnose`` open with it.
        Items nobody noted get a default from what was recorded when the
        Profiler closes.
        """
        if item not in schema.COVERAGE_ITEMS or state not in schema.COVERAGE_STATES:
            raise ValueError(f"coverage item {item!r} / state {state!r}: see tbdprof.schema.COVERAGE_ITEMS and COVERAGE_STATES")
        self.coverage[item] = {"state": state, "how": how}

    def _cover_defaults(self) -> None:
        rec, miss = schema.COVERAGE_RECORDED, schema.COVERAGE_MISSING
        steps = self.step_index + 1
        defaults = {
            schema.COVERAGE_STEPS: (rec, f"{steps} steps") if steps else (miss, "no step was recorded"),
            schema.COVERAGE_PHASES: (rec, "phase spans") if schema.KIND_PHASE in self._kinds_seen
            else (miss, "no phase was timed (prof.phase(), prof.loader() or tbdprof.instrument())"),
            schema.COVERAGE_COMM: (rec, "collectives timed with prof.comm()") if schema.KIND_COMM in self._kinds_seen
            else (schema.COVERAGE_NOT_APPLICABLE, "one rank: no collectives") if self.info.world_size == 1
            else (miss, "no collective was recorded: watch() a DistributedDataParallel model or a Horovod "
                        "DistributedOptimizer, or time collectives with prof.comm()"),
            schema.COVERAGE_MEMORY: (rec, "memory breakdown of the watched model") if self._trackers
            else (miss, "no model was watched (prof.watch(model, optimizer))"),
        }
        for item, (state, how) in defaults.items():
            self.coverage.setdefault(item, {"state": state, "how": how})

    def _write_rank_json(self) -> None:
        if self._writer is not None and self._writer.failed:
            return  # the folder is gone or full: the writer has already said so, once
        try:
            store.write_json_atomic(self.rank_dir / schema.RANK_FILE, self._meta)
        except OSError as e:
            if not self._rank_json_failed:
                log.warning("tbdprof: cannot write %s (%s)", self.rank_dir / schema.RANK_FILE, e)
            self._rank_json_failed = True

    def _resolve_pending(self, force: bool = False) -> None:
        for pending in (*self._pending, self._cuda):
            if pending is not None:
                pending.resolve(force=force)

    def _cuda_pending(self) -> cuda.CudaPending:
        if self._cuda is None:
            self._cuda = cuda.CudaPending(self._record_span)
        return self._cuda

    # --- hot path -------------------------------------------------------------

    def phase(self, name: str) -> _Phase:
        """Time a phase of the current step: ``with prof.phase("forward"): ...``."""
        return _Phase(self, name, schema.KIND_PHASE) if self.enabled else _NULL

    def cuda_phase(self, name: str):
        """Time a phase of device work (``h2d``, a forward pass on the GPU) with CUDA events.

        The events are recorded on the current stream, so the span covers the
        phase's work as the GPU ran it, not the host's launch calls; the writer
        thread resolves them. Without CUDA in use this is :meth:`phase`.
        """
        return self._device_timed(name, schema.KIND_PHASE, None)

    def comm(self, name: str = schema.COMM_ALLREDUCE, nbytes: int | None = None):
        """Time a collective the script calls itself, e.g. a hand-written gradient allreduce:
        ``with prof.comm("allreduce", nbytes=flat.nbytes): dist.all_reduce(flat)``.

        Recorded as a ``comm`` span with its bytes, so the breakdown and the
        bandwidth figures count it. Timed like :meth:`cuda_phase`: with CUDA
        events when CUDA is in use (an NCCL collective is asynchronous to the
        host), else with the host clock.
        """
        return self._device_timed(name, schema.KIND_COMM, nbytes)

    def _device_timed(self, name: str, kind: str, nbytes: int | None, device: bool | None = None):
        """A span timed with CUDA events when ``device`` (default: when CUDA is in use), else with the host clock."""
        if not self.enabled:
            return _NULL
        if not (cuda.in_use() if device is None else device):
            return _Phase(self, name, kind, nbytes)
        return cuda.CudaPhase(self._cuda_pending(), self, name, kind, nbytes)

    def mark(self, name: str, start_ns: int, end_ns: int, nbytes: int | None = None) -> None:
        """Record a span timed elsewhere (timestamps from :func:`tbdprof.clock.now_ns`)."""
        self._record_span(SpanRow(self.step_index, name, schema.KIND_MARK, start_ns, end_ns, nbytes))

    def _record_span(self, row: tuple) -> None:
        """Buffer a span, from any thread: steps, the loader's data wait, marks, and the sink of comm
        hooks and CUDA spans (``_Phase`` inlines it). ``row``: a :class:`SpanRow`, or on the training
        thread a plain tuple of all its columns (see :mod:`tbdprof.schema`)."""
        self._spans.append(row)
        self._kinds_seen.add(row[2])  # kind

    def add_span(self, name: str, kind: str, start_ns: int, end_ns: int, nbytes: int | None = None,
                 step: int | None = None) -> None:
        """Record a span timed elsewhere, in ``step`` (default: the current step)."""
        self._record_span((self.step_index if step is None else step, name, kind, start_ns, end_ns, nbytes, None, None))

    def add_phases(self, phases: Iterable[tuple[str, int, int]]) -> None:
        """Record phases of the current step timed elsewhere, ``(name, start_ns, end_ns)`` each: :meth:`add_span`
        for a step's phases at once (one call instead of one per phase, where a hook hands them over)."""
        step = self.step_index
        for name, start, end in phases:
            self._record_span((step, name, schema.KIND_PHASE, start, end, None, None, None))

    # --- steps: the public step API ---------------------------------------------------

    @property
    def step_open(self) -> bool:
        """True while a step is open (between :meth:`begin_step` and :meth:`end_step`)."""
        return self._step_start is not None

    @property
    def last_step_end_ns(self) -> int | None:
        """When the last closed step ended (None before the first)."""
        return self._last_step_end

    def begin_step(self, items: int | None = None, units: int | None = None, start_ns: int | None = None) -> int:
        """Close the open step (if any) and open the next one; returns its index.

        ``items`` counts the step's samples; ``units`` its tokens or frames,
        for workloads whose throughput is counted in those. ``start_ns`` (from
        :func:`tbdprof.clock.now_ns`) dates the start earlier than now, e.g. to
        the fetch of its batch."""
        if not self.enabled:
            self.step_index += 1
            return self.step_index
        now = clock.now_ns()
        if self._step_start is not None:
            self._end_step(now)
        self.step_index += 1
        self._step_start = now if start_ns is None else start_ns
        self._step_items = items
        self._step_units = units
        if self._trackers:
            self._arm_optimizers()
        return self.step_index

    def add_items(self, items: int | None = None, units: int | None = None) -> None:
        """Add samples (and tokens or frames) to the open step: a gradient-accumulation micro-batch."""
        if self._step_start is None:
            return
        if items is not None:
            self._step_items = (self._step_items or 0) + items
        if units is not None:
            self._step_units = (self._step_units or 0) + units

    def end_step(self, items: int | None = None, units: int | None = None, end_ns: int | None = None) -> None:
        """Close the open step, with the samples (and tokens or frames) it processed."""
        if not self.enabled:
            return
        if items is not None:
            self._step_items = items
        if units is not None:
            self._step_units = units
        if self._step_start is not None:
            self._end_step(end_ns)

    def discard_step(self) -> None:
        """Drop the open step: it trained nothing (a batch fetched at the end, never used)."""
        if self._step_start is not None:
            self._step_start = self._step_items = self._step_units = None
            self.step_index -= 1

    def on_step_end(self, observer: Callable[[int], None]) -> None:
        """Call ``observer(step)`` on the training thread each time a step closes."""
        self._step_observers.append(observer)

    def _end_step(self, now: int | None = None) -> None:
        end = clock.now_ns() if now is None else now
        self._record_span((self.step_index, schema.KIND_STEP, schema.KIND_STEP, self._step_start, end, None,
                           self._step_items, self._step_units))
        self._step_start = None
        self._step_units = None
        self._last_step_end = end
        for observer in self._step_observers:
            observer(self.step_index)

    def step(self, items: int | None = None) -> "_StepContext":
        """``with prof.step(items=batch_size): ...`` times one whole step."""
        return _StepContext(self, items)

    def loader(self, iterable: Iterable) -> Iterator:
        """Wrap a data loader: each fetch opens a new step and is timed as ``data_wait``.

        The step closes when the next fetch starts (or the loop ends), so the
        step covers data wait plus everything the loop body does.
        """
        if not self.enabled:
            yield from iterable
            return
        it = iter(iterable)
        while True:
            start = clock.now_ns()
            if self._step_start is not None:
                self._end_step(start)
            try:
                batch = next(it)
            except StopIteration:
                return
            end = clock.now_ns()
            self.begin_step(_batch_items(batch), start_ns=start)
            self._record_span((self.step_index, schema.PHASE_DATA, schema.KIND_PHASE, start, end, None, None, None))
            yield batch

    # --- model hooks ----------------------------------------------------------

    def watch(self, model, optimizer=None) -> None:
        """Record the memory breakdown of ``model`` and ``optimizer`` (see ``memory_every``) and, when
        ``model`` is DistributedDataParallel, its gradient allreduce buckets as comm spans
        (for a Horovod ``DistributedOptimizer``, its per-gradient allreduces; for an FSDP2 model,
        its all-gathers and reduce-scatters). Says what it saw in :attr:`coverage`.

        ``optimizer`` may be a list, for models trained by several (a GAN's generator and critic).
        """
        if not self.enabled:
            return
        from .memory import MemoryTracker

        inner = getattr(model, "module", model)
        optimizers = [] if optimizer is None else list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        tracker = MemoryTracker(inner, optimizers, self._rss, lambda: self.step_index, self._measure_memory)
        if self._deep is not None:
            self._deep.watch(inner)  # layer names relative to the model, not to its DDP wrapper
        if not self._trackers:
            self.on_step_end(self._take_memory_rows)
        self._trackers.append(tracker)
        self.note_coverage(schema.COVERAGE_MEMORY, schema.COVERAGE_RECORDED, f"breakdown of {type(inner).__name__} "
                           f"({tracker.weights} bytes of weights), sampled every {self.memory_every} steps")
        if hasattr(model, "register_comm_hook") and _dist() is not None:
            from .comm import make_allreduce_hook

            try:
                hook = make_allreduce_hook(self._record_span, lambda: self.step_index, self._cuda_pending())
                model.register_comm_hook(None, hook)
                self.add_progress_probe(lambda: {"collective": hook.in_flight_text()})
                self.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_RECORDED, "DDP gradient buckets (comm hook)")
            except (RuntimeError, ValueError) as e:  # e.g. a hook is already registered
                log.warning("tbdprof: no communication spans (%s)", e)
                self.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_MISSING, f"DDP model seen, no comm hook: {e}")
        from .horovod import HorovodComm, is_horovod_optimizer

        for opt in optimizers:
            if is_horovod_optimizer(opt):
                hvd_comm = HorovodComm(opt, self._record_span, lambda: self.step_index)
                self._pending.append(hvd_comm)
                self.add_progress_probe(lambda: {"collective": hvd_comm.in_flight_text()})
                self.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_RECORDED, "Horovod DistributedOptimizer allreduces")
                break
        from .fsdp import FsdpComm, is_fsdp_model

        if is_fsdp_model(model):
            fsdp = FsdpComm(model, self._record_span, lambda: self.step_index, self._cuda_pending())
            if fsdp.groups:
                self._pending.append(fsdp)
                self.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_RECORDED,
                                   f"FSDP2 all-gathers and reduce-scatters of {fsdp.groups} parameter groups")
            else:
                self.note_coverage(schema.COVERAGE_COMM, schema.COVERAGE_MISSING,
                                   "FSDP2 model seen, but its communication could not be wrapped (see the warning)")

    def _arm_optimizers(self) -> None:
        """As a step begins: the trackers' optimizer hooks in if it is measured, else out. (A step begins
        outside any optimizer's hooks: at a fetch, in the model's pre-hook, or in the script.)"""
        measure = self._measure_memory(self.step_index)
        for t in self._trackers:
            if t.optimizers_armed is not measure:
                t.arm_optimizers(measure)

    def _take_memory_rows(self, step: int) -> None:
        """Step observer: the rows of a measured step; the trackers' forward hooks in for the next step if it is
        measured, else out."""
        measure_next = self._measure_memory(step + 1)
        for t in self._trackers:
            row = t.take_row(step)
            if row is not None:
                self._memory.append(row)
            if t.armed is not measure_next:
                t.arm(measure_next)

    def _measure_memory(self, step: int) -> bool:
        return step <= self.warmup_steps + 1 or step % self.memory_every == 0

    def _rss(self) -> int:
        if self._rss_proc is None:
            import psutil

            self._rss_proc = psutil.Process()
        return self._rss_proc.memory_info().rss


class _StepContext:
    __slots__ = ("prof", "items")

    def __init__(self, prof: Profiler, items: int | None):
        self.prof, self.items = prof, items

    def __enter__(self) -> int:
        return self.prof.begin_step(self.items)

    def __exit__(self, *exc) -> bool:
        self.prof.end_step()
        return False
