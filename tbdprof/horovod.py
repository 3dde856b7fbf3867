"""Communication spans from Horovod's ``DistributedOptimizer``.

Horovod submits one asynchronous allreduce per gradient (or per group) from
backward hooks, through the optimizer's ``_allreduce_grad_async``, and waits
for all of them in ``synchronize()`` (called by ``step()``). We wrap those two
methods on the optimizer instance: a submission starts a span with the
gradient's byte count; a poller thread ends it when ``hvd.poll`` reports the
handle done, and ``synchronize`` ends whatever is still open when it returns.
Horovod's own C++ background thread does the communication, so polling is
the only way to see completion without waiting for it.
"""

from __future__ import annotations

import threading
import time

from . import clock, schema
from .cuda import SpanSink
from .schema import SpanRow

POLL_INTERVAL_S = 0.0005


def is_horovod_optimizer(optimizer) -> bool:
    """True for an optimizer wrapped by ``horovod.torch.DistributedOptimizer``."""
    return hasattr(optimizer, "_allreduce_grad_async") and hasattr(optimizer, "_handles")


def _grad_bytes(params) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)


class HorovodComm:
    """Records each allreduce of a Horovod ``DistributedOptimizer`` as a ``comm`` span.

    Plays the Profiler's "pending spans" role: ``resolve(force=True)`` at the
    end of the recording stops the poller and restores the optimizer.
    """

    def __init__(self, optimizer, sink: SpanSink, current_step):
        from horovod.torch import poll

        self._poll = poll
        self._opt, self._sink, self._step = optimizer, sink, current_step
        self._open: dict[int, tuple[int, int, int]] = {}  # handle -> (step, start_ns, bytes)
        self._lock = threading.RLock()  # synchronize() may submit while we hold it
        self._wake = threading.Event()
        self._stop = False
        wrappers = {"_allreduce_grad_async": self._submit_one, "_grouped_allreduce_grad_async": self._submit_group, "synchronize": self._synchronize}
        self._orig = {n: getattr(optimizer, n) for n in wrappers if hasattr(optimizer, n)}
        for name in self._orig:
            setattr(optimizer, name, wrappers[name])
        self._thread = threading.Thread(target=self._run, name="tbdprof-hvd-poll", daemon=True)
        self._thread.start()

    def _submit_one(self, p):
        start = clock.now_ns()
        handle, ctx = self._orig["_allreduce_grad_async"](p)
        self._opened(handle, start, _grad_bytes([p]))
        return handle, ctx

    def _submit_group(self, ps):
        start = clock.now_ns()
        handle, ctxs = self._orig["_grouped_allreduce_grad_async"](ps)
        self._opened(handle, start, _grad_bytes(ps))
        return handle, ctxs

    def _opened(self, handle, start: int, nbytes: int) -> None:
        if isinstance(handle, int):  # sparse gradients return a callable: not pollable
            with self._lock:
                self._open[handle] = (self._step(), start, nbytes)
            self._wake.set()

    def _close(self, handle: int, end: int) -> None:
        step, start, nbytes = self._open.pop(handle)
        self._sink(SpanRow(step, schema.COMM_ALLREDUCE, schema.KIND_COMM, start, end, nbytes))

    def in_flight_text(self) -> str | None:
        """Allreduces submitted and not reported done: ``allreduce of 12 tensors (4.1 MiB)``, or None."""
        pending = list(self._open.values())
        if not pending:
            return None
        return f"{schema.COMM_ALLREDUCE} of {len(pending)} tensors ({sum(p[2] for p in pending) / 2**20:.1f} MiB)"

    def _synchronize(self):
        # Finish timing under the lock: synchronize() clears the handles, and
        # polling a cleared handle is an error.
        with self._lock:
            self._poll_open(wait=True)
            result = self._orig["synchronize"]()
            end = clock.now_ns()
            for handle in list(self._open):  # submitted inside synchronize()
                self._close(handle, end)
        return result

    def _poll_open(self, wait: bool) -> None:
        while self._open:
            for handle in [h for h in self._open if self._poll(h)]:
                self._close(handle, clock.now_ns())
            if not wait:
                return
            if self._open:
                self._lock.release()
                try:
                    time.sleep(POLL_INTERVAL_S)
                finally:
                    self._lock.acquire()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            with self._lock:
                self._poll_open(wait=False)
                if not self._open:
                    self._wake.clear()
            time.sleep(POLL_INTERVAL_S)

    def resolve(self, force: bool = False) -> None:
        """At the end (``force``): stop polling and give the optimizer its own methods back."""
        if not force or self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5.0)
        for name in self._orig:
            delattr(self._opt, name)
