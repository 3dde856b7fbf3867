"""Communication spans from DistributedDataParallel's gradient buckets.

A DDP communication hook that does exactly what DDP's default hook does
(divide by the world size, allreduce asynchronously) and records each
bucket's allreduce with its byte count.

On CPU (gloo) the span ends at the host time at which the future completes.
On CUDA (NCCL) the future completes when the collective is *enqueued*, so
host time would measure nothing: the span is timed with CUDA events instead.
The start event is recorded on the current stream after the bucket's
division, so it runs once the gradients are ready, which is when NCCL's
stream (made to wait on the current one) can start the collective. The end
event is recorded inside the future's ``then`` callback: for CUDA futures
torch runs the callback with a current stream that waits on the NCCL
kernels, so that event runs when the allreduce has finished. The writer
thread resolves the events into spans (:class:`tbdprof.cuda.CudaPending`).
A bucket queued behind another one is timed from when it was ready;
analysis takes the union of a rank's comm spans, so queueing is not counted
twice.
"""

from __future__ import annotations

from typing import Callable

import torch.distributed as dist

from . import clock, schema
from .cuda import CudaPending, SpanSink
from .schema import SpanRow


def make_allreduce_hook(sink: SpanSink, current_step: Callable[[], int], pending: CudaPending):
    """A DDP comm hook recording ``allreduce`` spans into ``sink`` (CUDA buckets through ``pending``)."""

    in_flight: dict[int, tuple[int, int]] = {}  # bucket index -> (bytes, start_ns), until its future completes

    # No annotations: DDP checks them against the real classes, and this module
    # uses postponed (string) annotations.
    def hook(process_group, bucket):
        group = process_group if process_group is not None else dist.group.WORLD
        tensor = bucket.buffer()
        nbytes = tensor.numel() * tensor.element_size()
        step = current_step()
        start = clock.now_ns()
        index = bucket.index()
        in_flight[index] = (nbytes, start)
        tensor.div_(dist.get_world_size(group))
        if tensor.is_cuda:
            begun = pending.begin()
            fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()

            def done_cuda(f):
                # the current stream here waits on the NCCL kernels
                in_flight.pop(index, None)
                pending.add(step, schema.COMM_ALLREDUCE, schema.KIND_COMM, nbytes, begun, pending.record())
                return f.value()[0]

            return fut.then(done_cuda)

        fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()

        def done(f):
            in_flight.pop(index, None)
            sink(SpanRow(step, schema.COMM_ALLREDUCE, schema.KIND_COMM, start, clock.now_ns(), nbytes))
            return f.value()[0]

        return fut.then(done)

    def in_flight_text() -> str | None:
        """The buckets handed to allreduce and not completed: ``allreduce bucket 3 (1.2 MiB)``, or None."""
        return buckets_text(dict(in_flight))

    hook.in_flight_text = in_flight_text
    return hook


def buckets_text(in_flight: dict[int, tuple[int, int]]) -> str | None:
    if not in_flight:
        return None
    parts = [f"bucket {i} ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"bucket {i} ({n / 2**10:.1f} KiB)"
             for i, (n, _) in sorted(in_flight.items())]
    return schema.COMM_ALLREDUCE + " " + ", ".join(parts)
