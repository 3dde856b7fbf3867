"""Open a run folder: metadata, readable segments, and DuckDB views on the aligned clock.

Views (one per table in :mod:`tbdprof.schema`, plus ``host`` and ``rank`` from
the hive path): ``spans``, ``samples``, ``memory``. Their timestamps are
already mapped onto rank 0's clock using each rank's start/end offset
estimates (linear drift), so ranks and hosts can be compared directly.
Unreadable segments (truncated, not Parquet, wrong or future schema) are left
out and listed in ``Run.problems``; they never fail the whole run.
``spans`` leaves out the steps of deep windows (always-on figures must not
count them); ``spans_all`` has every span (:mod:`analysis.windows`). The
steady state is defined here once: ``steady_spans`` (the spans of the steps
after warm-up) and, per kind, ``steady_steps``, ``steady_phases`` and
``steady_comm``; ``steady_memory``. Other queries take kinds, phases and
metrics as parameters.

A large recording (``SCALE_RANK_HOURS`` rank-hours or more, every rank with
rollups) opens in *scale mode*: whole-run figures come from the rollups
(:mod:`analysis.rollups`), ``samples`` is one reading per series and rollup
interval made from them (a gauge's mean at the interval's middle, a counter's
last reading at its end), and ``spans`` and ``memory`` hold only the raw rows
of the zoom window (``Run.zoom``: ``ZOOM_STEPS`` steady steps near the middle of
the run), which the figures that need single spans (overlap of communication
with compute, arrival at collectives, the memory breakdown) read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tbdprof import clock, schema, store
from tbdprof.errors import UserError

from . import windows

T = TypeVar("T")

TIME_COLUMNS = {schema.SPANS: ("start_ns", "end_ns"), schema.SAMPLES: ("ts_ns",), schema.MEMORY: ("ts_ns",),
                schema.HANGS: ("ts_ns", "since_ns"),  # a store from before the hangs table gets an empty view
                schema.OPS: ("start_ns", "end_ns"),  # deep windows' operators (tbdprof/deep.py); often none
                schema.KERNELS: ("start_ns", "end_ns"),  # deep windows' GPU kernels, on CUDA only
                schema.ROLLUPS: ("start_ns", "end_ns")}  # per-interval summaries (analysis/rollups.py); none in older stores


SCALE_RANK_HOURS = 16.0  # a recording this large (ranks x hours) or larger opens in scale mode
ZOOM_STEPS = 100  # steady steps whose raw spans and memory rows scale mode reads
ZOOM_AT = 0.4637  # where in the steady steps the zoom window lies: off the round fractions at which files start
SOURCES = ("auto", "raw", "rollups")  # how open_run reads a run: by its size, raw rows always, rollups where present
SCALE_TABLES = (schema.SPANS, schema.SAMPLES, schema.MEMORY, schema.ROLLUPS)  # read differently in scale mode
# scale mode's time of a series' reading in an interval: a counter's last reading, a gauge's mean at the middle
SAMPLE_ROLLUP_TS = "CASE WHEN counter THEN t_last ELSE (t_first + t_last) // 2 END"


class RunError(UserError):
    """The folder is not a readable run."""


@dataclass(frozen=True)
class Zoom:
    """Scale mode's window of raw rows: the spans and memory rows of steps ``first``..``last``."""

    first: int
    last: int

    @property
    def steps(self) -> int:
        return self.last - self.first + 1


@dataclass
class Run:
    path: Path
    meta: dict
    ranks: dict[int, dict]  # rank -> rank.json
    files: dict[str, list[str]]  # table -> readable segment paths
    problems: list[str] = field(default_factory=list)
    con: duckdb.DuckDBPyConnection | None = None
    optional_present: dict[str, frozenset[str]] = field(default_factory=dict)  # segment path -> its optional columns
    zoom: Zoom | None = None  # scale mode: whole-run figures from the rollups, raw rows of these steps only
    scale: bool = False  # opened in scale mode (``zoom`` is set once the views are defined)
    memory_rollups: bool = False  # scale mode with memory rollups: the memory breakdown comes from them, no raw row is read

    @property
    def world_size(self) -> int:
        sizes = [m.get("world_size", 0) for m in self.ranks.values()] + [self.meta.get("world_size", 0)]
        return max([len(self.ranks), *[s for s in sizes if isinstance(s, int)]])

    @property
    def warmup_steps(self) -> int:
        vals = [m.get("warmup_steps") for m in self.ranks.values() if isinstance(m.get("warmup_steps"), int)]
        return max(vals) if vals else 0

    def sql(self, query: str, params: list | dict | None = None) -> list[tuple]:
        """The rows of ``query``; ``params`` fill its ``?`` (a list) or ``$name`` (a dict) placeholders."""
        return self.con.execute(query, params or []).fetchall()

    def cached(self, key, compute: Callable[[], T]) -> T:
        """``compute()`` once per run and key: figures several analyses share."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def has(self, table: str) -> bool:
        return bool(self.files.get(table))

    @cached_property
    def t0_ns(self) -> int | None:
        """The run's first timestamp on the aligned clock (spans and samples); the zero of every timeline."""
        if self.zoom:
            return self.sql("SELECT min(t) FROM (SELECT min(start_ns) AS t FROM rollups UNION ALL "
                            "SELECT min(t_first) FROM sample_rollups)")[0][0]
        return self.sql("SELECT min(t) FROM (SELECT min(start_ns) AS t FROM spans UNION ALL SELECT min(ts_ns) FROM samples)")[0][0]

    def source(self) -> dict:
        """How the run was read (summary.json's ``source``): ``mode`` raw or rollups, its size in rank-hours and, in
        scale mode, the zoom window's steps and what comes from where."""
        out = {"mode": "rollups" if self.zoom else "raw", "rank_hours": round(rank_hours(self.ranks), 3)}
        if self.zoom:
            out |= {"zoom_steps": [self.zoom.first, self.zoom.last],
                    "note": (f"whole-run figures from the per-minute rollups (warm-up steps included, quantiles within 1%); "
                             f"samples one reading per series and minute; overlap of communication, arrival at collectives "
                             f"and the memory breakdown from the raw rows of steps {self.zoom.first}-{self.zoom.last}")}
        return out

    @cached_property
    def span_extent(self) -> dict[int, tuple[int, int, int | None]]:
        """Per rank with spans: (first span start, last span end, last step recorded), aligned ns; in scale
        mode from the rollups (the whole run, not the zoom window)."""
        if self.zoom:
            rows = self.sql("SELECT rank, min(start_ns), max(end_ns), max(last_step) FILTER (WHERE kind = ?) FROM rollups "
                            "WHERE list_contains(?, kind) GROUP BY rank", [schema.KIND_STEP, list(schema.SPAN_KINDS)])
        else:
            rows = self.sql("SELECT rank, min(start_ns), max(end_ns), max(step) FILTER (WHERE kind = ?) FROM spans GROUP BY rank",
                            [schema.KIND_STEP])
        return {r: (a, b, step) for r, a, b, step in rows}

    @cached_property
    def steady_window(self) -> tuple[int, int] | None:
        """(start, end) in aligned ns from the first steady-state step's start to the last step's end (in scale
        mode from the step rollups: from the first rollup interval with a steady step)."""
        if self.zoom:
            row = self.sql("SELECT min(start_ns), max(end_ns) FROM rollups WHERE kind = ? AND last_step >= ?",
                           [schema.KIND_STEP, self.warmup_steps])
        else:
            row = self.sql("SELECT min(start_ns), max(end_ns) FROM steady_steps")
        return None if row[0][0] is None else (row[0][0], row[0][1])


def _check_segment(path: Path, table: str) -> tuple[str | None, frozenset[str]]:
    """(None when the segment is readable and of a schema we understand, else why not;
    the optional columns it has)."""
    try:
        md = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - truncated, empty, not Parquet
        return f"{path.name}: unreadable ({e.__class__.__name__})", frozenset()
    optional = schema.OPTIONAL_COLUMNS.get(table, ())
    return _schema_problem(path, table, md, optional), frozenset(c for c in optional if c in md.names)


def _schema_problem(path: Path, table: str, md, optional) -> str | None:
    meta = md.metadata or {}
    version = meta.get(schema.META_SCHEMA_VERSION)
    if version is not None:
        try:
            if int(version) > schema.SCHEMA_VERSION:
                return f"{path.name}: schema version {int(version)} is newer than this tbdprof ({schema.SCHEMA_VERSION})"
        except ValueError:
            return f"{path.name}: bad schema version {version!r}"
    missing = [f.name for f in schema.TABLES[table] if f.name not in md.names and f.name not in optional]
    if missing:
        return f"{path.name}: missing columns {', '.join(missing)}"
    return None


def run_folder(path: str | Path) -> Path:
    """``path`` as a Path; :class:`RunError` when it is no run folder."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such folder")
    if not store.is_run_dir(path):
        raise RunError(f"{path}: not a tbdprof run (no {schema.RUN_FILE} and no host=*/rank=* folders)")
    return path


def rank_hours(ranks: dict[int, dict]) -> float:
    """The recording's size in rank-hours, from each rank.json's start and end (0 where they are missing)."""
    total = 0
    for m in ranks.values():
        start, end = m.get("start_ns"), m.get("end_ns")
        if isinstance(start, int) and isinstance(end, int) and end > start:
            total += end - start
    return total / 3.6e12


def open_run(path: str | Path, skip: dict[str, str] | None = None, source: str = "auto") -> Run:
    """Load a run folder. Raises :class:`RunError` when nothing in it is readable.

    ``skip`` maps segment paths to leave out to the reason listed in ``problems``. ``source``
    (:data:`SOURCES`): ``auto`` opens a recording of ``SCALE_RANK_HOURS`` or more in scale mode when
    every rank has rollups, ``rollups`` does so whenever every rank has them, ``raw`` never.
    """
    path = run_folder(path)
    problems: list[str] = []
    meta: dict = {}
    if (path / schema.RUN_FILE).is_file():
        try:
            meta = store.read_json(path / schema.RUN_FILE)
        except (OSError, ValueError) as e:
            problems.append(f"{schema.RUN_FILE}: unreadable ({e.__class__.__name__})")
    ranks: dict[int, dict] = {}
    files: dict[str, list[str]] = {t: [] for t in schema.TABLES}
    optional_present: dict[str, frozenset[str]] = {}
    segments: dict[tuple[int, str], list[Path]] = {}
    for rdir in sorted(path.glob("host=*/rank=*")):
        try:
            rank = int(rdir.name.split("=", 1)[1])
        except ValueError:
            problems.append(f"{rdir.relative_to(path)}: not a rank folder")
            continue
        rmeta: dict = {"rank": rank, "host": rdir.parent.name.split("=", 1)[1]}
        try:
            rmeta.update(store.read_json(rdir / schema.RANK_FILE))
        except FileNotFoundError:
            problems.append(f"rank {rank}: no {schema.RANK_FILE}")
        except (OSError, ValueError, json.JSONDecodeError) as e:
            problems.append(f"rank {rank}: {schema.RANK_FILE} unreadable ({e.__class__.__name__})")
        deep = windows.read_deep(rdir)
        if deep is not None:
            rmeta["deep"] = deep  # its deep windows (deep.json)
        ranks[rank] = rmeta
        names = sorted(e.name for e in os.scandir(rdir) if e.name.endswith(schema.SEGMENT_SUFFIX))  # one listing per rank
        for table in schema.TABLES:
            segments[(rank, table)] = store.live_segments([rdir / n for n in names if n.startswith(f"{table}-")])
    if not ranks:
        raise RunError(f"{path}: no rank folders with data")
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: not one of {SOURCES}")
    with_rollups = all(segments.get((r, schema.ROLLUPS)) for r in ranks)
    scale = with_rollups and (source == "rollups" or source == "auto" and rank_hours(ranks) >= SCALE_RANK_HOURS)
    for (rank, table), segs in segments.items():
        if scale and table in SCALE_TABLES:  # one DuckDB scan each: read whole (rollups) or by the zoom's steps
            files[table] += [str(seg) for seg in segs if str(seg) not in (skip or {})]
            continue
        for seg in segs:
            why, present = (skip or {}).get(str(seg)), frozenset()
            if not why:
                why, present = _check_segment(seg, table)
            if why:
                problems.append(f"rank {rank}: {why}")
            else:
                files[table].append(str(seg))
                optional_present[str(seg)] = present
    run = Run(path, meta, ranks, files, problems, optional_present=optional_present, scale=scale)
    run.con = _connect(run)
    return run


def _damaged_segments(run: Run) -> dict[str, str]:
    """Segments whose footer reads but whose data does not (each read in full), with why."""
    bad = {}
    for paths in run.files.values():
        for p in paths:
            try:
                pq.read_table(p)
            except Exception as e:  # noqa: BLE001 - corrupt pages, bad compression, short file
                bad[p] = f"{Path(p).name}: data unreadable ({e.__class__.__name__})"
    return bad


def analyse(path: str | Path, fn: Callable[[Run], T], source: str = "auto") -> T:
    """``fn(open_run(path, source=source))``. When DuckDB fails on data damaged past a segment's footer, the
    damaged segments are found, left out (listed in ``problems``) and ``fn`` runs once more."""
    run = open_run(path, source=source)
    try:
        return fn(run)
    except duckdb.Error:
        bad = _damaged_segments(run)
        if not bad:
            raise
    return fn(open_run(path, skip=bad, source=source))


def _clock_params(run: Run) -> list[tuple[int, float, float, int]]:
    """(rank, offset at t0, drift per ns, t0) for each rank."""
    rows = []
    for rank, m in run.ranks.items():
        c = m.get("clock") or {}
        start, end = c.get("start"), c.get("end")
        if not start and not end:
            rows.append((rank, 0.0, 0.0, 0))
            continue
        t0 = int((start or end)["at_ns"])
        rows.append((rank, clock.offset_at(start, end, t0), clock.drift(start, end), t0))
    return rows


def _shift_sql(col: str, a: float, b: float, t0: int) -> str:
    """``col`` mapped onto rank 0's clock: an integer add (no float rounding of epoch ns)."""
    if b == 0.0:
        return f"{col} + {int(round(a))}" if round(a) else col
    return f"{col} + CAST(round({a!r} + {b!r} * ({col} - {t0})) AS BIGINT)"


def _connect(run: Run) -> duckdb.DuckDBPyConnection:
    """DuckDB with one view per table: a UNION ALL of one scan per rank, with that rank's host,
    rank and clock shift as constants (no join, no hive-path parsing per row)."""
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute("SET enable_progress_bar = false")
    clocks = {rank: (a, b, t0) for rank, a, b, t0 in _clock_params(run)}
    if run.scale:
        _define_scale_views(con, run, clocks)
    for table, cols in TIME_COLUMNS.items():
        if run.zoom is not None and table in SCALE_TABLES:
            continue
        by_rank: dict[tuple[str, int], list[str]] = {}
        for path in run.files[table]:
            by_rank.setdefault(_host_rank(path), []).append(path)
        if not by_rank:
            fields = ", ".join(f"NULL::{_duck_type(f)} AS {f.name}" for f in schema.TABLES[table])
            con.execute(f"CREATE VIEW {table} AS SELECT {fields}, NULL::VARCHAR AS host, NULL::BIGINT AS rank WHERE false")
            continue
        scans = []
        optional = schema.OPTIONAL_COLUMNS.get(table, ())
        for (host, rank), paths in sorted(by_rank.items(), key=lambda kv: kv[0][1]):
            a, b, t0 = clocks.get(rank, (0.0, 0.0, 0))
            # a column newer than every segment of this rank reads as null
            absent = {c for c in optional if not any(c in run.optional_present.get(p, ()) for p in paths)}
            select = ", ".join(
                f"{_shift_sql(f.name, a, b, t0)} AS {f.name}" if f.name in cols
                else f"NULL::{_duck_type(f)} AS {f.name}" if f.name in absent else f.name
                for f in schema.TABLES[table]
            )
            plist = "[" + ", ".join(_sql_str(p) for p in paths) + "]"
            scans.append(f"SELECT {select}, {_sql_str(host)} AS host, {rank}::BIGINT AS rank "
                         f"FROM read_parquet({plist}, hive_partitioning=false, union_by_name=true)")
        con.execute(f"CREATE VIEW {table} AS " + " UNION ALL ".join(scans))
    windows.define_views(con, run.ranks)  # spans without deep-window steps; spans_all with them
    _define_steady_views(con, run.warmup_steps)
    return con


def _define_scale_views(con: duckdb.DuckDBPyConnection, run: Run, clocks: dict[int, tuple[float, float, int]]) -> None:
    """Scale mode's tables: ``rollups`` (every rank's, on the aligned clock), view ``samples`` from them, and
    ``spans`` and ``memory`` of the zoom window's steps. Each is one scan of all its segments, each row given
    its rank, host and clock shift by its file. Sets ``run.zoom``."""
    con.register("_clock_arrow", pa.table({"rank": pa.array(list(clocks), pa.int64()),
                                           "a": pa.array([c[0] for c in clocks.values()], pa.float64()),
                                           "b": pa.array([c[1] for c in clocks.values()], pa.float64()),
                                           "t0": pa.array([c[2] for c in clocks.values()], pa.int64())}))
    con.execute("CREATE TABLE _clock AS SELECT * FROM _clock_arrow")
    paths = [f for t in (schema.SPANS, schema.MEMORY, schema.ROLLUPS) for f in run.files[t]]
    con.register("_file_arrow", pa.table({"filename": pa.array(paths, pa.string()),
                                          "rank": pa.array([_host_rank(f)[1] for f in paths], pa.int64()),
                                          "host": pa.array([_host_rank(f)[0] for f in paths], pa.string())}))
    con.execute("CREATE TABLE _file AS SELECT * FROM _file_arrow")
    for name in ("_clock_arrow", "_file_arrow"):
        con.unregister(name)
    shift = "CAST(round(coalesce(c.a, 0) + coalesce(c.b, 0) * ({col} - coalesce(c.t0, 0))) AS BIGINT)"

    def scan(table: str, where: str = "true", files: list[str] | None = None) -> str:
        fields = schema.TABLES[table]
        files = run.files[table] if files is None else files
        if not files or where == "false":
            nulls = ", ".join(f"NULL::{_duck_type(f)} AS {f.name}" for f in fields)
            return f"SELECT {nulls}, NULL::VARCHAR AS host, NULL::BIGINT AS rank WHERE false"
        select = ", ".join(f"t.{f.name} + {shift.format(col='t.' + f.name)} AS {f.name}" if f.name in TIME_COLUMNS[table]
                           else f"t.{f.name}" for f in fields)
        plist = "[" + ", ".join(_sql_str(p) for p in files) + "]"
        return (f"SELECT {select}, fl.host, fl.rank FROM read_parquet({plist}, hive_partitioning=false, union_by_name=true, "
                f"filename=true) t JOIN _file fl USING (filename) LEFT JOIN _clock c ON c.rank = fl.rank WHERE {where}")

    gauge, counter = _sql_str(schema.ROLLUP_GAUGE), _sql_str(schema.ROLLUP_COUNTER)
    con.execute(f"CREATE TABLE rollups AS {scan(schema.ROLLUPS, f'kind NOT IN ({gauge}, {counter})')}")
    # The samples' rollups, a row per series and interval (and per late row of one), in the columns of
    # timeline.sample_buckets (a view over this table here: every figure over it aggregates its rows); a
    # counter's first and last readings are its interval's lowest and highest.
    con.execute(
        f"CREATE TABLE sample_rollups AS SELECT host, rank, name AS metric, device, kind = {counter} AS counter, "
        "count AS n, value_sum / count AS mean, value_max AS vmax, value_min AS vmin, start_ns AS t_first, "
        "end_ns AS t_last, value_min AS v_first, value_max AS v_last "
        f"FROM ({scan(schema.ROLLUPS, f'kind IN ({gauge}, {counter})')})")
    con.execute(f"CREATE VIEW samples AS SELECT {SAMPLE_ROLLUP_TS} AS ts_ns, "
                "metric, device, CASE WHEN counter THEN v_last ELSE mean END AS value, host, rank FROM sample_rollups")
    first, last = con.execute(
        "SELECT max(lo), min(hi) FROM (SELECT rank, min(first_step) AS lo, max(last_step) AS hi FROM rollups "
        "WHERE kind = ? GROUP BY rank)", [schema.KIND_STEP]).fetchone()
    if first is None:
        run.zoom = Zoom(0, -1)
    else:
        first = max(first, run.warmup_steps)
        mid = first + int((last - first) * ZOOM_AT)
        lo = max(first, mid - ZOOM_STEPS // 2)
        run.zoom = Zoom(lo, min(last, lo + ZOOM_STEPS - 1))
    # the zoom window's steps, and every rank's deep-window steps (the operator figures read their spans)
    with_windows = {rank: ranges for rank, meta in run.ranks.items() if (ranges := windows.excluded_ranges(meta))}
    steps = [f"t.step BETWEEN {run.zoom.first} AND {run.zoom.last}"] + [
        f"(fl.rank = {int(rank)} AND t.step BETWEEN {a} AND {b})" for rank, ranges in sorted(with_windows.items()) for a, b in ranges]
    run.memory_rollups = bool(con.execute("SELECT count(*) FROM rollups WHERE kind = ?", [schema.ROLLUP_MEMORY]).fetchone()[0])
    for table in (schema.SPANS, schema.MEMORY):
        if table == schema.MEMORY and run.memory_rollups:
            con.execute(f"CREATE VIEW {table} AS {scan(table, 'false')}")
            continue
        likely = _zoom_files(con, run, table, set(with_windows))
        con.execute(f"CREATE TABLE _zoom_{table} AS {scan(table, ' OR '.join(steps), likely)}")
        short = [r for r, n in con.execute(  # ranks whose files were guessed wrong: read all of theirs
            f"SELECT f.rank, count(DISTINCT z.step) FILTER (WHERE z.step BETWEEN {run.zoom.first} AND {run.zoom.last}) "
            f"FROM (SELECT DISTINCT rank FROM rollups WHERE kind = ?) f LEFT JOIN _zoom_{table} z USING (rank) GROUP BY f.rank",
            [schema.KIND_STEP]).fetchall() if n < run.zoom.steps]
        if short and len(likely) < len(run.files[table]):
            rest = [f for f in run.files[table] if f not in set(likely) and _rank_of(f) in set(short)]
            con.execute(f"INSERT INTO _zoom_{table} {scan(table, ' OR '.join(steps), rest)}")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM _zoom_{table}")


def _host_rank(path: str) -> tuple[str, int]:
    """(host, rank) of a segment, from its host=H/rank=R folders."""
    rank_dir = Path(path).parent
    return rank_dir.parent.name.split("=", 1)[1], int(rank_dir.name.split("=", 1)[1])


def _rank_of(path: str) -> int:
    return _host_rank(path)[1]


def _zoom_files(con: duckdb.DuckDBPyConnection, run: Run, table: str, every_file: set[int]) -> list[str]:
    """The segments of ``table`` likely to hold the zoom window's rows, without opening any: a rank's flushes are
    numbered in time order, so the zoom's time (from the step rollups) maps onto its files' flush numbers by
    proportion, with a margin. The ranks in ``every_file`` (deep windows) keep all their segments."""
    times = dict(((r, (a, b)) for r, a, b in con.execute(
        "SELECT rank, min(start_ns), max(end_ns) FROM rollups WHERE kind = ? AND first_step <= ? AND last_step >= ? "
        "GROUP BY rank", [schema.KIND_STEP, run.zoom.last, run.zoom.first]).fetchall()))
    extent = dict(((r, (a, b)) for r, a, b in con.execute(
        "SELECT rank, min(start_ns), max(end_ns) FROM rollups GROUP BY rank").fetchall()))
    by_rank: dict[int, list[tuple[int, int, str]]] = {}
    for f in run.files[table]:
        seg = store.parse_segment(Path(f).name)
        by_rank.setdefault(_rank_of(f), []).append((seg[1], seg[2], f) if seg else (-1, -1, f))
    out = []
    for rank, segs in by_rank.items():
        numbered = [x for x in segs if x[0] >= 0]
        if rank in every_file or rank not in times or rank not in extent or len(numbered) < len(segs) or not numbered:
            out += [f for _, _, f in segs]
            continue
        (za, zb), (ta, tb) = times[rank], extent[rank]
        lo, hi = min(a for a, _, _ in numbered), max(b for _, b, _ in numbered)
        span = max(1, tb - ta)
        margin = 0.01 * (hi - lo) + 2
        sa = lo + (za - ta) / span * (hi - lo) - margin
        sb = lo + (zb - ta) / span * (hi - lo) + margin
        out += [f for a, b, f in numbered if b >= sa and a <= sb]
    return out


# The steady state, written once: the spans and memory rows of the steps after warm-up (deep-window steps
# already left out), and one view per span kind.
STEADY_VIEWS = {"steady_steps": schema.KIND_STEP, "steady_phases": schema.KIND_PHASE, "steady_comm": schema.KIND_COMM}


def _define_steady_views(con: duckdb.DuckDBPyConnection, warmup_steps: int) -> None:
    """Views ``steady_spans`` (every span of the steps >= warm-up) and, over it, ``steady_steps``,
    ``steady_phases`` and ``steady_comm``: the spans of that kind; ``steady_memory``: the memory rows of those steps."""
    for view, table in (("steady_spans", schema.SPANS), ("steady_memory", schema.MEMORY)):
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM {table} WHERE step >= {int(warmup_steps)}")
    for view, kind in STEADY_VIEWS.items():
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM steady_spans WHERE kind = {_sql_str(kind)}")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _duck_type(f) -> str:
    import pyarrow as pa

    t = f.type
    if pa.types.is_list(t):
        return _duck_type(t.value_field) + "[]"
    if pa.types.is_dictionary(t) or pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_floating(t):
        return "DOUBLE"
    return "BIGINT"
