#!/usr/bin/env bash
# Regenerate every number and figure of docs/tutorial.md.
#
#   docs/tutorial/regenerate.sh            # from the repository root, venv built (make install)
#
# Reruns the tutorial's commands (tiny and small presets, few steps: about 10
# minutes on 2 cores), keeps the run folders in a temporary directory (deleted
# at the end; KEEP=1 keeps it), and writes into docs/tutorial/:
#   machine.json   the machine the figures came from (cores, CPU model, versions)
#   numbers.json   every number the tutorial quotes
#   out-*.md       terminal output of report / compare / diagnose / scaling, trimmed
#   *.png          the figures
# Part 4 (two emulated hosts, a fast and a shaped slow link) needs root and the
# testbed (launch/testbed.sh); it is skipped with a message otherwise.
# Environment: TBDPROF_DATA (data-set cache, default ~/.cache/tbdprof/data).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/docs/tutorial
if [ -x "$ROOT/.venv/bin/tbdprof" ]; then PATH=$ROOT/.venv/bin:$PATH; fi
PY=$(command -v python)
command -v tbdprof >/dev/null || { echo "regenerate: tbdprof not found (run 'make install' first)" >&2; exit 2; }

# REUSE=DIR (a folder KEEP=1 left): runs already there are not run again.
WORK=${REUSE:-$(mktemp -d "${TMPDIR:-/tmp}/tbdprof-tutorial.XXXXXX")}
RUNS=$WORK/runs
CAP=$WORK/captured
mkdir -p "$RUNS" "$CAP"
cleanup() {
    if [ -n "${TESTBED_UP:-}" ]; then "$ROOT/launch/testbed.sh" down >/dev/null 2>&1 || true; fi
    if [ "${KEEP:-0}" = 1 ] || [ -n "${REUSE:-}" ]; then echo "regenerate: runs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
export COLUMNS=100 NO_COLOR=1
START=$(date +%s)
"$PY" "$HERE/build.py" machine "$HERE/machine.json" start

say() { echo "== $*" >&2; }
run() {  # run ID ARGS...: a profiled run under $RUNS, report not printed
    local id=$1; shift
    [ ! -s "$CAP/$id.summary.json" ] || return 0
    tbdprof run "$@" --out "$RUNS" --run-id "$id" --no-report >"$CAP/$id.run.log" 2>&1 \
        || { echo "regenerate: run $id failed:" >&2; tail -20 "$CAP/$id.run.log" >&2; exit 1; }
    tbdprof report "$RUNS/$id" --json >"$CAP/$id.summary.json"
}

# 1. Profile one workload and read its report (its memory table gives the
#    memory breakdown of part 2).
say "1. resnet50 small"
run p1 resnet50 --preset small --steps 16 --memory-every 2
tbdprof report "$RUNS/p1" >"$CAP/p1.report.txt"

# 2. The TBD observations.
say "2. seq2seq vs transformer (small, batch 16)"
run rnn seq2seq --preset small --batch-size 16 --steps 8
run attn transformer --preset small --batch-size 16 --steps 8
say "2. batch-size sweep (resnet50 tiny)"
# one OpenMP thread: on a shared 2-core machine two threads per rank turn every
# descheduling into a stall (part 3 shows it), which would hide the batch effect
for b in 2 8 32 64; do OMP_NUM_THREADS=1 run "bs$b" resnet50 --preset tiny --batch-size "$b" --steps 20; done

# 3. Benchmarking pitfalls.
say "3. threads, warm-up, data loading (resnet50 tiny)"
# The baseline uses one OpenMP thread: on a shared machine it is the setting
# least disturbed by other processes; B is what a 1-rank run gets by default
# on 2 cores (OMP_NUM_THREADS=2). The warm-up run also gives the warm-up curve.
OMP_NUM_THREADS=1 run base resnet50 --preset tiny --steps 20 --num-workers 2
OMP_NUM_THREADS=2 run omp2 resnet50 --preset tiny --steps 20 --num-workers 2
OMP_NUM_THREADS=1 run warm0 resnet50 --preset tiny --steps 20 --num-workers 2 --warmup 0
# loading made costly (2 ms per sample, as slow decoding would): in 2 workers vs in the training process
OMP_NUM_THREADS=1 run nw2 resnet50 --preset tiny --steps 20 --num-workers 2 --data-delay-ms 2
OMP_NUM_THREADS=1 run nw0 resnet50 --preset tiny --steps 20 --num-workers 0 --data-delay-ms 2
tbdprof compare "$RUNS/base" "$RUNS/omp2" >"$CAP/compare-threads.txt"
tbdprof compare "$RUNS/base" "$RUNS/warm0" >"$CAP/compare-warmup.txt"
tbdprof compare "$RUNS/nw2" "$RUNS/nw0" >"$CAP/compare-workers.txt"

# 5. Diagnosing planted bottlenecks (2 ranks); the healthy run also shows
#    asynchronous communication (part 3).
say "5. healthy, slow storage, straggler (resnet50 tiny, 2 ranks)"
run healthy resnet50 --preset tiny --nproc 2 --steps 30
run slowdata resnet50 --preset tiny --nproc 2 --steps 30 --data-delay-ms 4 --num-workers 1
run straggler resnet50 --preset tiny --nproc 2 --steps 30 --slow-rank 1 --slow-ms 60
for id in healthy slowdata straggler; do
    tbdprof diagnose "$RUNS/$id" >"$CAP/diagnose-$id.txt"
    tbdprof diagnose "$RUNS/$id" --json >"$CAP/diagnose-$id.json"
done
tbdprof report "$RUNS/straggler" >"$CAP/straggler.report.txt"

# 4. Scaling across two emulated hosts: unshaped link, then 20 Mbit/s.
if [ -s "$CAP/scaling-slow.json" ]; then
    say "4. scaling: reusing the sweeps in $WORK"
elif [ "$(id -u)" != 0 ]; then
    say "4. skipped: the testbed needs root (network namespaces); rerun as root for the scaling figures"
    echo '{"skipped": "not root"}' >"$CAP/scaling-skipped.json"
elif ip netns list 2>/dev/null | grep -q '^tbdtut-'; then
    say "4. skipped: another tutorial run's testbed is up on this machine (ip netns list shows tbdtut-*)"
    echo '{"skipped": "testbed busy"}' >"$CAP/scaling-skipped.json"
else
    rm -f "$CAP/scaling-skipped.json"
    say "4. scaling on the testbed (2 hosts, fast then 20mbit)"
    TB="$ROOT/launch/testbed.sh"
    export TBDPROF_TESTBED=$WORK/testbed  # its state folder (throwaway key, logs)
    "$TB" up 2 --name tbdtut >"$CAP/testbed.log" 2>&1  # its own name: test sessions' testbeds may be up too
    TESTBED_UP=1
    for link in fast slow; do
        if [ $link = slow ]; then "$TB" shape --bandwidth 20mbit >>"$CAP/testbed.log" 2>&1; fi
        (cd "$WORK" && OMP_NUM_THREADS=1 "$TB" exec node0 tbdprof sweep resnet50 --preset tiny --launcher mpirun \
            --hosts node0:1,node1:1 --iface eth0 --nproc 1,2 --steps 12 --out "$RUNS" --run-id "sweep-$link") \
            >"$CAP/sweep-$link.log" 2>&1 || { tail -30 "$CAP/sweep-$link.log" >&2; exit 1; }
        tbdprof scaling "$RUNS/sweep-$link" --plots none >"$CAP/scaling-$link.txt"
        cp "$RUNS/sweep-$link/scaling.json" "$CAP/scaling-$link.json"
    done
    "$TB" down >>"$CAP/testbed.log" 2>&1
    TESTBED_UP=
fi

say "figures and fragments"
"$PY" "$HERE/build.py" build "$HERE" "$WORK" "$START"
echo "regenerate: done in $(( $(date +%s) - START )) s" >&2
