"""The single source of truth for the tbdprof store: tables, columns, kinds, metrics, units.

Every table is written as Parquet segments under
``<run_dir>/host=<host>/rank=<rank>/<table>-<seq>.parquet``; ``host`` and
``rank`` come from the path (hive partitioning), not from columns. Timestamps
are integer nanoseconds since the Unix epoch on the recording host's clock;
the per-rank offset to rank 0 lives in ``rank.json`` and analysis applies it.

Each table has one row type (:class:`SpanRow`, :class:`SampleRow`,
:class:`MemoryRow`, :class:`HangRow`, :class:`OpRow`, :class:`RollupRow`...); the Arrow schemas in
:data:`TABLES` are derived from them, so the recorder's rows and the files
cannot disagree on a column's place.

docs/schema.md documents the same tables for people; ``tests/unit/test_schema``
keeps the two in step.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, NamedTuple

import pyarrow as pa

SCHEMA_VERSION = 1

# --- tables -----------------------------------------------------------------

SPANS = "spans"
SAMPLES = "samples"
MEMORY = "memory"
HANGS = "hangs"
OPS = "ops"
KERNELS = "kernels"
ROLLUPS = "rollups"

Label = Annotated[str, pa.dictionary(pa.int32(), pa.string())]
"""A string column stored dictionary-encoded: names and kinds, few distinct values."""
Ints = Annotated[list, pa.list_(pa.int32())]
"""A list of small integers: a histogram's bucket indexes, or its counts."""


# One row type per table: its fields are the table's columns in order (TABLES
# is derived from them), ``X | None`` is a nullable column and trailing nullable
# columns default to None. Producers append instances, except the two that
# append many rows a second (the training thread's spans, the sampler's
# readings): they append plain tuples of every column in this order. A
# NamedTuple stays tracked by the garbage collector while it is buffered, an
# exact tuple of numbers and strings is untracked at its first collection
# (instances there doubled the span cost: docs/performance.md).


class SpanRow(NamedTuple):
    """Table ``spans``: one timed interval on a rank (a whole step, a phase inside it, a communication bucket, a user mark)."""

    step: int  # -1 outside any step
    name: Label  # phase or op name
    kind: Label  # one of SPAN_KINDS
    start_ns: int
    end_ns: int
    bytes: int | None = None  # payload (comm buckets), else null
    items: int | None = None  # samples in the step (kind=step), else null
    units: int | None = None  # tokens/frames in the step, where that is the workload's unit


class SampleRow(NamedTuple):
    """Table ``samples``, long format: one (timestamp, metric, device) reading."""

    ts_ns: int
    metric: Label  # a key of METRICS
    device: Label  # core, NIC, disk, GPU index or ""
    value: float  # in METRICS[metric].unit


class MemoryRow(NamedTuple):
    """Table ``memory``: the TBD memory breakdown of one recorded step, in bytes."""

    step: int
    ts_ns: int
    device: Label  # "cpu" or "cuda:N"
    weights: int
    gradients: int
    optimizer_state: int
    activations: int  # saved for backward
    other: int  # total - the four above
    total: int  # RSS (cpu) or allocated (cuda)
    peak: int  # highest total seen in the step


class HangRow(NamedTuple):
    """Table ``hangs``: one progress event of a rank (tbdprof/progress.py): training stopped
    moving (a hang, with every thread's Python stack), moved again, or failed."""

    step: int  # the step that did not end (last ended + 1)
    event: Label  # one of HANG_EVENTS
    ts_ns: int  # when the event was seen
    since_ns: int  # last progress (a step's end, or the start)
    threshold_s: float | None = None  # no progress for this long is a hang
    place: Label | None = None  # one of HANG_PLACES: where the training thread is
    waiting_in: str | None = None  # the call it waits in: "all_reduce", "barrier", "__getitem__"...
    location: str | None = None  # the script's frame: "train.py:41 in train" (a loader worker's when it is the stuck part)
    phase: str | None = None  # the phase open at the time
    collective: str | None = None  # collectives in flight: "allreduce bucket 3 (1.2 MiB)"
    stacks: str | None = None  # Python stacks of every thread (and the stuck loader worker), or the traceback


class OpRow(NamedTuple):
    """Table ``ops``: one operator (or layer range) torch.profiler saw during a deep window (tbdprof/deep.py)."""

    step: int  # the window step it started in
    name: Label  # aten::convolution, or OP_MODULE_PREFIX + path for a layer
    module: Label | None  # the layer it ran under (module path, e.g. layer3.0.conv2), else null
    thread: int  # the profiler's thread id
    start_ns: int
    end_ns: int  # total time is end_ns - start_ns
    self_ns: int  # time not spent in child operators
    shapes: Label | None = None  # input shapes, e.g. [[4, 3, 32, 32], [8, 3, 3, 3]]
    flops: int | None = None  # where torch counts them (matmul, convolution)


class KernelRow(NamedTuple):
    """Table ``kernels``: one GPU activity (kernel, memcpy, memset) torch.profiler saw during a deep window on CUDA."""

    step: int  # the window step it started in
    name: Label  # the kernel's name, or Kineto's "Memcpy HtoD (Pageable -> Device)"
    kind: Label  # one of KERNEL_KINDS
    device: int  # CUDA device index
    stream: int
    start_ns: int  # on the host clock (CUPTI's GPU timestamps as Kineto maps them)
    end_ns: int
    op: Label | None = None  # the CPU operator that launched it (aten::mm), through its correlation id
    module: Label | None = None  # that operator's layer (module path)
    bytes: int | None = None  # copied or set, for memcpy and memset


class RollupRow(NamedTuple):
    """Table ``rollups``: one rank's summary of one kind and name (and device) over one interval of
    ``ROLLUP_INTERVAL_NS``, made by its writer from the spans and samples it drains (tbdprof/rollup.py).
    Rows of the same rank, interval, kind, name and device add up (a span that arrives after its
    interval was written gets a row of its own)."""

    interval_ns: int  # the interval's start (local clock, a multiple of ROLLUP_INTERVAL_NS): a span's by its step's end (else its own), a sample's by ts_ns
    kind: Label  # a span kind (step, phase, comm, mark), ROLLUP_GAUGE / ROLLUP_COUNTER for samples, ROLLUP_MEMORY for memory rows
    name: Label  # the span's name, or the metric
    device: Label  # the samples' device; "" for spans
    start_ns: int  # earliest span start or reading in the interval
    end_ns: int  # latest span end or reading
    count: int  # spans, or readings
    sum_ns: int | None = None  # spans: total duration
    min_ns: int | None = None  # spans: shortest
    max_ns: int | None = None  # spans: longest
    bytes: int | None = None  # spans: payload total (comm), else null
    items: int | None = None  # spans: samples total (kind=step), else null
    units: int | None = None  # spans: tokens/frames total (kind=step), else null
    first_step: int | None = None  # spans: lowest step
    last_step: int | None = None  # spans: highest step
    hist_bucket: Ints | None = None  # spans: the duration buckets (duration_bucket) that have spans, ascending
    hist_count: Ints | None = None  # spans in each of those buckets
    value_sum: float | None = None  # gauges: sum of readings (mean = value_sum / count); counters: increase since the last reading before
    value_min: float | None = None  # samples: lowest reading
    value_max: float | None = None  # samples: highest reading


ROW_TYPES: dict[str, type] = {SPANS: SpanRow, SAMPLES: SampleRow, MEMORY: MemoryRow, HANGS: HangRow, OPS: OpRow,
                              KERNELS: KernelRow, ROLLUPS: RollupRow}  # rollups last: the writer makes them from the tables above

_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string()}


def _arrow_schema(row: type) -> pa.Schema:
    """The Arrow schema of a row type: one field per NamedTuple field, in order."""
    hints, fields = typing.get_type_hints(row, include_extras=True), []
    for name in row._fields:
        hint = hints[name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        (base,) = [a for a in args if a is not type(None)]
        arrow = base.__metadata__[0] if typing.get_origin(base) is Annotated else _ARROW[base]
        fields.append(pa.field(name, arrow, nullable=len(args) > 1))
    return pa.schema(fields)


TABLES: dict[str, pa.Schema] = {table: _arrow_schema(row) for table, row in ROW_TYPES.items()}

# --- span kinds and standard phases -------------------------------------------

KIND_STEP = "step"
KIND_PHASE = "phase"
KIND_COMM = "comm"
KIND_MARK = "mark"
# Horovod's own timeline, ingested on rank 0's clock into rank 0's partition:
# name is "<ACTIVITY>|<tensor>" (NEGOTIATE_ALLREDUCE, ALLREDUCE, QUEUE, ...;
# bytes on the outermost op only); "READY_RANK_<r>|<tensor>" runs from the
# negotiation's start to when rank r reported the tensor ready.
KIND_HOROVOD = "hvd"
HVD_SEP = "|"
HVD_READY = "READY_RANK_"
SPAN_KINDS = (KIND_STEP, KIND_PHASE, KIND_COMM, KIND_MARK, KIND_HOROVOD)

PHASE_DATA = "data_wait"
PHASE_H2D = "h2d"
PHASE_FORWARD = "forward"
PHASE_BACKWARD = "backward"
PHASE_OPTIMIZER = "optimizer"
PHASE_COMM = "comm"
STANDARD_PHASES = (
    PHASE_DATA,
    PHASE_H2D,
    PHASE_FORWARD,
    PHASE_BACKWARD,
    PHASE_OPTIMIZER,
    PHASE_COMM,
)
COMM_ALLREDUCE = "allreduce"
COMM_ALLGATHER = "all_gather"  # FSDP's parameter gathers
COMM_REDUCE_SCATTER = "reduce_scatter"  # FSDP's gradient reductions
MARK_EVAL = "eval"  # an evaluation pass between training steps (forwards without gradients)
MARK_DEEP_WINDOW = "deep_window"  # a deep window (tbdprof/deep.py): step = its first step; deep.json has the rest
OP_MODULE_PREFIX = "module: "  # an ops row named "module: layer3.0.conv2" is that layer's forward range
KERNEL_KINDS = ("kernel", "memcpy", "memset")  # table kernels' kind (Kineto's activity types)

# --- rollups (table rollups, tbdprof/rollup.py) --------------------------------------

ROLLUP_INTERVAL_NS = 60_000_000_000  # one minute: a rank-hour is 60 rows per span name or sample series
ROLLUP_GAUGE = "gauge"  # rollup kind of a sampled metric that is not a counter
ROLLUP_COUNTER = "counter"  # rollup kind of a counter (Metric.counter)
ROLLUP_MEMORY = "memory"  # rollup kind of a memory-breakdown column (name: weights... total, peak; device: the row's)
ROLLUP_RATIO = 1.02  # duration buckets: [RATIO**b, RATIO**(b+1)) ns; a bucket's middle is within 1 % of all it holds


def duration_bucket(ns: int) -> int:
    """The rollup histogram bucket of a duration in ns (bucket 0 holds everything under 1.02 ns)."""
    return int(math.log(ns) / _LOG_RATIO) if ns > 1 else 0


def bucket_value(bucket: int) -> float:
    """The middle of a duration bucket (geometric): within 1 % of every duration in it."""
    return ROLLUP_RATIO ** (bucket + 0.5)


_LOG_RATIO = math.log(ROLLUP_RATIO)

# Columns added after version 1 files were first written: readers fill them
# with nulls in older segments instead of rejecting those.
OPTIONAL_COLUMNS = {SPANS: ("units",)}

MEMORY_CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "other")


# --- metrics ------------------------------------------------------------------


class Metric:
    """A sampled metric: its unit, whether it is a monotonic counter, and its scope."""

    __slots__ = ("name", "unit", "counter", "scope", "help")

    def __init__(self, name: str, unit: str, counter: bool, scope: str, help: str):
        self.name, self.unit, self.counter, self.scope, self.help = name, unit, counter, scope, help


def _m(name: str, unit: str, scope: str, help: str, counter: bool = False) -> Metric:
    return Metric(name, unit, counter, scope, help)


# scope "process": every rank records it; "host": only local rank 0 records it;
# "device": per accelerator, recorded by the rank that owns it.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _m("cpu.process_pct", "percent", "process", "CPU of the rank and its children, 100 = one core"),
        _m("cpu.process_threads", "count", "process", "threads in the rank's process"),
        _m("cpu.system_pct", "percent", "host", "host CPU busy, 100 = all cores"),
        _m("cpu.core_pct", "percent", "host", "one core busy (device = core index)"),
        _m("cpu.iowait_pct", "percent", "host", "host CPU time in iowait"),
        _m("cpu.runnable", "count", "host", "runnable threads on the host (procs_running)"),
        _m("mem.rss_bytes", "bytes", "process", "resident memory of the rank and its children"),
        _m("mem.used_bytes", "bytes", "host", "host memory in use"),
        _m("mem.available_bytes", "bytes", "host", "host memory available"),
        _m("mem.swap_used_bytes", "bytes", "host", "swap in use"),
        _m("net.bytes_sent", "bytes", "host", "bytes sent on an interface (device = NIC)", True),
        _m("net.bytes_recv", "bytes", "host", "bytes received on an interface", True),
        _m("net.packets_sent", "count", "host", "packets sent on an interface", True),
        _m("net.packets_recv", "count", "host", "packets received on an interface", True),
        _m("disk.read_bytes", "bytes", "host", "bytes read from a disk (device = disk)", True),
        _m("disk.write_bytes", "bytes", "host", "bytes written to a disk", True),
        _m("io.read_bytes", "bytes", "process", "storage bytes read by the rank and its children", True),
        _m("io.write_bytes", "bytes", "process", "storage bytes written by the rank and its children", True),
        _m("io.read_chars", "bytes", "process", "bytes read through read syscalls (page cache included)", True),
        _m("io.write_chars", "bytes", "process", "bytes written through write syscalls", True),
        _m("gpu.util_pct", "percent", "device", "NVML GPU utilization: a kernel ran in the window (mean of the driver's samples since the last tick)"),
        _m("gpu.mem_util_pct", "percent", "device", "NVML memory-controller utilization (mean of the driver's samples since the last tick)"),
        _m("gpu.mem_used_bytes", "bytes", "device", "device memory in use (all processes)"),
        _m("gpu.mem_total_bytes", "bytes", "device", "device memory size"),
        _m("gpu.process_mem_bytes", "bytes", "device", "device memory used by this rank's process, where the driver reports it"),
        _m("gpu.power_w", "watts", "device", "board power draw"),
        _m("gpu.energy_j", "joules", "device", "energy since driver load", True),
        _m("gpu.temp_c", "celsius", "device", "GPU temperature"),
        _m("gpu.sm_clock_mhz", "MHz", "device", "SM clock"),
        _m("gpu.mem_clock_mhz", "MHz", "device", "memory clock"),
        _m("gpu.pcie_tx_bytes_s", "bytes/s", "device", "PCIe transmit throughput"),
        _m("gpu.pcie_rx_bytes_s", "bytes/s", "device", "PCIe receive throughput"),
        _m("gpu.nvlink_tx_bytes", "bytes", "device", "NVLink data sent, all links", True),
        _m("gpu.nvlink_rx_bytes", "bytes", "device", "NVLink data received, all links", True),
        _m("gpu.sm_util_pct", "percent", "device", "GPM: SMs busy (Hopper and newer)"),
        _m("gpu.sm_occupancy_pct", "percent", "device", "GPM: active warps / maximum warps"),
        _m("gpu.tensor_util_pct", "percent", "device", "GPM: SM time doing any tensor-core operation"),
        _m("gpu.fp32_util_pct", "percent", "device", "GPM: SM time doing non-tensor FP32 math"),
        _m("gpu.fp16_util_pct", "percent", "device", "GPM: SM time doing non-tensor FP16 math"),
        _m("gpu.dram_bw_util_pct", "percent", "device", "GPM: DRAM bandwidth used / peak"),
        _m("torch.allocated_bytes", "bytes", "device", "caching allocator: allocated"),
        _m("torch.reserved_bytes", "bytes", "device", "caching allocator: reserved"),
        _m("torch.inactive_split_bytes", "bytes", "device", "caching allocator: free bytes inside split blocks (fragmentation)"),
        _m("torch.alloc_retries", "count", "device", "caching allocator: cudaMalloc retries after freeing its cache", True),
        _m("recorder.sampler_cpu_s", "seconds", "process", "CPU time spent by the sampler thread", True),
    )
}

# --- coverage: what a rank's recording saw, and what it could not ----------------

# ``rank.json`` holds ``"coverage": {item: {"state": ..., "how": "..."}}`` for each
# of COVERAGE_ITEMS: how the item was recorded, or why it was not ("DDP model
# seen, the script registered its own comm hook"). A store written before
# coverage existed has no key; readers call its items unknown.
COVERAGE_FILE_KEY = "coverage"
COVERAGE_STEPS = "steps"
COVERAGE_PHASES = "phases"
COVERAGE_COMM = "comm"
COVERAGE_MEMORY = "memory"
COVERAGE_ITEMS = (COVERAGE_STEPS, COVERAGE_PHASES, COVERAGE_COMM, COVERAGE_MEMORY)
COVERAGE_RECORDED = "recorded"  # seen and recorded
COVERAGE_MISSING = "missing"  # there to see, not recorded: a gap the reader must be told about
COVERAGE_NOT_APPLICABLE = "not_applicable"  # nothing to record (one rank: no collectives)
COVERAGE_STATES = (COVERAGE_RECORDED, COVERAGE_MISSING, COVERAGE_NOT_APPLICABLE)

# --- progress: hangs and failures (table hangs, per-rank status.json) -------------

HANG_HANG = "hang"  # no progress for longer than the threshold (the rank may resume)
HANG_RESUME = "resume"  # progress again after a hang
HANG_ERROR = "error"  # the training thread raised out of the recorder (a peer gone, a timeout)
HANG_EVENTS = (HANG_HANG, HANG_RESUME, HANG_ERROR)
# where the training thread is: loading data (in the process or a loader worker), inside a
# collective the script called, in backward (DDP waits for its buckets there), a phase, or elsewhere
HANG_PLACES = ("data_loading", "collective", "backward", "phase", "other")
STATUS_FILE = "status.json"  # per rank, rewritten every few seconds while it records: `tbdprof status` reads it
DEEP_FILE = "deep.json"  # per rank, beside rank.json: the deep windows recorded, their steps and cost
DEEP_REQUEST_FILE = "deep_request.json"  # in the run folder: `tbdprof trace` asks the live ranks for a deep window
DEEP_TRIGGER_ON_DEMAND = "on_demand"  # deep.json trigger of a window `tbdprof trace` asked for
DEEP_TRIGGER_ANOMALY = "anomaly"  # deep.json trigger of a window the rank opened on slow steps (TBDPROF_DEEP_ANOMALY)

# --- file metadata and layout -----------------------------------------------------

RUN_FILE = "run.json"  # run-level metadata, one per run
RANK_FILE = "rank.json"  # per-rank metadata: env capture, clock offsets, status
EXITS_PREFIX = "exits-"  # in the run folder: exits-HOST-PID.json, how a launcher's ranks ended (tbdprof.exits)
SEGMENT_SUFFIX = ".parquet"

META_SCHEMA_VERSION = b"tbdprof.schema_version"
META_TABLE = b"tbdprof.table"
META_RUN_ID = b"tbdprof.run_id"
META_RANK = b"tbdprof.rank"
META_HOST = b"tbdprof.host"


def table_schema(table: str, run_id: str, rank: int, host: str) -> pa.Schema:
    """The Arrow schema of ``table`` with the self-describing footer metadata."""
    return TABLES[table].with_metadata(
        {
            META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
            META_TABLE: table.encode(),
            META_RUN_ID: run_id.encode(),
            META_RANK: str(rank).encode(),
            META_HOST: host.encode(),
        }
    )
