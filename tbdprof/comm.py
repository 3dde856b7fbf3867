"""Communication spans from DistributedDataParallel's gradient buckets.

A DDP communication hook that does exactly what DDP's default hook does
(divide by the world size, allreduce asynchronously) and records each
bucket's allreduce with its byte count. On CPU (gloo) the end is the host
time at which the future completes. On CUDA (NCCL) host callbacks run when
the work is enqueued, not done, so the span is timed with CUDA events on the
stream instead and resolved later by the writer thread.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from . import clock, schema

SpanSink = Callable[[int, str, str, int, int, int | None, int | None], None]


class CudaPending:
    """CUDA-event-timed spans waiting for their events to complete."""

    def __init__(self, sink: SpanSink):
        self.sink = sink
        self.items: list = []

    def add(self, step, name, start_ns, nbytes, ev_start, ev_end) -> None:
        self.items.append((step, name, start_ns, nbytes, ev_start, ev_end))

    def resolve(self, force: bool = False) -> None:
        """Emit every span whose end event has completed (all of them when ``force``)."""
        keep = []
        for item in self.items:
            step, name, start_ns, nbytes, ev_start, ev_end = item
            if force:
                ev_end.synchronize()
            elif not ev_end.query():
                keep.append(item)
                continue
            dur_ns = int(ev_start.elapsed_time(ev_end) * 1e6)
            self.sink(step, name, schema.KIND_COMM, start_ns, start_ns + dur_ns, nbytes, None)
        self.items = keep


def make_allreduce_hook(sink: SpanSink, current_step: Callable[[], int], pending: CudaPending):
    """A DDP comm hook recording ``allreduce`` spans into ``sink``."""

    # No annotations: DDP checks them against the real classes, and this module
    # uses postponed (string) annotations.
    def hook(process_group, bucket):
        group = process_group if process_group is not None else dist.group.WORLD
        tensor = bucket.buffer()
        nbytes = tensor.numel() * tensor.element_size()
        step = current_step()
        start = clock.now_ns()
        tensor.div_(dist.get_world_size(group))
        if tensor.is_cuda:
            ev_start = torch.cuda.Event(enable_timing=True)
            ev_start.record()
            fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()

            def done_cuda(f):
                ev_end = torch.cuda.Event(enable_timing=True)
                ev_end.record()  # on the current stream, which the future has synced with
                pending.add(step, schema.COMM_ALLREDUCE, start, nbytes, ev_start, ev_end)
                return f.value()[0]

            return fut.then(done_cuda)

        fut = dist.all_reduce(tensor, group=group, async_op=True).get_future()

        def done(f):
            sink(step, schema.COMM_ALLREDUCE, schema.KIND_COMM, start, clock.now_ns(), nbytes, None)
            return f.value()[0]

        return fut.then(done)

    return hook
