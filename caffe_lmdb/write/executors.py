"""An ordered, bounded parallel map over a pluggable executor.

:func:`ordered_map` yields ``fn(item)`` for every item, in the items' order, while at most
``window`` items are in flight; so memory stays bounded however large the input, and the output
order never depends on which worker finished first.

Executors follow the :class:`Executor` protocol: ``workers``, ``submit(fn, arg) ->
concurrent.futures.Future`` and ``shutdown()``, two recovery hooks, and what a conversion needs
to know of them:

* ``abandon(future) -> bool``: give up on a task that timed out. Returns True when the other
  tasks in flight were lost too (the caller then submits them again).
* ``restart()``: replace workers after one died (a crash in native code).
* ``remote`` (tasks run on other machines: paths must be absolute and shared), ``chunk``
  (samples per task), ``check_source(source)`` (can the workers read the inputs?).

:class:`BaseExecutor` gives the defaults of a local executor; :func:`make_executor` wraps an
object that has only ``submit`` and ``shutdown`` so that it gets them too.

Three are provided: :class:`InlineExecutor` (runs in the caller, no pool), :class:`ThreadExecutor`
(the default for images: OpenCV releases the GIL while it decodes and resizes, and records stay
in memory, never pickled) and :class:`ProcessExecutor` (isolates crashes, at the cost of
pickling every result). A cluster executor (e.g. Ray: ``ray.remote(fn).remote(arg).future()``
returns a concurrent Future) fits the same interface.

Failure handling, so that a stuck or crashing decoder cannot hang or kill the run:

* **timeout**: when the oldest unfinished task has been at the head of the queue for
  ``timeout`` seconds, it is given up: ``on_fail(item, reason)`` supplies its result and the
  executor's ``abandon`` frees its worker (a thread is left behind as a daemon and exits when its
  call returns; a process pool is killed and restarted);
* **dead worker** (``BrokenExecutor``, e.g. a segfault in a process worker): the items that were
  in flight are run again one at a time in fresh workers; the one that kills its worker again
  gets ``on_fail(item, reason)``, the others their normal result.

Without ``on_fail``, both raise :class:`~caffe_lmdb.errors.WorkerError` naming the item.
"""
import collections
import multiprocessing
import queue
import sys
import threading
import time
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from ..errors import WorkerError
from .defaults import default_workers

__all__ = ["Executor", "BaseExecutor", "InlineExecutor", "ThreadExecutor", "ProcessExecutor",
           "make_executor", "ordered_map", "default_workers"]


class Executor(Protocol):
    """What :func:`ordered_map` and the converters use of an executor."""

    kind: str
    workers: int
    remote: bool
    chunk: int

    def submit(self, fn: Any, arg: Any) -> Future: ...

    def shutdown(self) -> None: ...

    def restart(self) -> None: ...

    def abandon(self, fut: Future) -> bool: ...

    def check_source(self, source: Any) -> None: ...


class BaseExecutor:
    """The defaults of an executor on this machine: no recovery beyond its own, one sample
    per task, inputs read where they are."""

    kind = "base"
    workers = 1
    remote = False
    chunk = 1

    def restart(self) -> None:
        """Nothing to replace."""

    def abandon(self, fut: Future) -> bool:
        """A task cannot be interrupted: it runs on; the others are not lost."""
        return False

    def check_source(self, source: Any) -> None:
        """Local workers read what the caller reads."""


class _Adapted(BaseExecutor):
    """An executor object of the caller's that has only some of the protocol: what it lacks
    comes from :class:`BaseExecutor`."""

    def __init__(self, inner):
        self.inner = inner
        self.kind = getattr(inner, "kind", "custom")
        for name in ("workers", "remote", "chunk"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, fn, arg):
        return self.inner.submit(fn, arg)

    def shutdown(self):
        self.inner.shutdown()

    def restart(self):
        if hasattr(self.inner, "restart"):
            self.inner.restart()

    def abandon(self, fut):
        return bool(self.inner.abandon(fut)) if hasattr(self.inner, "abandon") else False

    def check_source(self, source):
        if hasattr(self.inner, "check_source"):
            self.inner.check_source(source)


class InlineExecutor(BaseExecutor):
    """Runs each task at once in the calling thread (workers=1: no pool, no overhead).
    A timeout cannot interrupt it."""

    kind = "inline"
    workers = 1

    def submit(self, fn, arg):
        fut = Future()
        try:
            fut.set_result(fn(arg))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def shutdown(self):
        pass


class ThreadExecutor(BaseExecutor):
    """A pool of daemon threads. A thread stuck in a task that was abandoned (timed out) is
    replaced at once and quits when its call returns; being a daemon, it never blocks exit."""

    kind = "thread"

    def __init__(self, workers=None):
        self.workers = int(workers or default_workers())
        self._queue = queue.SimpleQueue()
        self._abandoned = set()
        self._lock = threading.Lock()
        self._threads = []
        self._running = {}  # thread -> the future of the task it runs
        for _ in range(self.workers):
            self._spawn()

    def _spawn(self):
        with self._lock:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"caffe_lmdb-worker-{len(self._threads) + 1}")
            self._threads.append(thread)
        thread.start()

    def _work(self):
        me = threading.current_thread()
        while True:
            job = self._queue.get()
            if job is None:
                return
            fut, fn, arg = job
            if not fut.set_running_or_notify_cancel():
                continue
            self._running[me] = fut
            try:
                result = fn(arg)
            except BaseException as exc:  # delivered to the caller, who decides
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            finally:
                del self._running[me]
            with self._lock:
                if id(fut) in self._abandoned:  # a replacement took this thread's place
                    self._abandoned.discard(id(fut))
                    return

    def submit(self, fn, arg):
        fut = Future()
        self._queue.put((fut, fn, arg))
        return fut

    def abandon(self, fut):
        with self._lock:
            if fut.done():
                return False
            self._abandoned.add(id(fut))
        self._spawn()
        return False

    def restart(self):
        pass  # a thread cannot die without killing the process

    def shutdown(self, wait=10.0):
        """Cancel the tasks not started, stop the threads, and wait (at most ``wait`` seconds)
        for the tasks running, unless abandoned. A daemon thread that comes back from OpenCV
        while the interpreter exits aborts the process ("terminate called without an active
        exception", seen after Ctrl-C): no thread is left inside a task, but a hung one."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        with self._lock:
            threads = list(self._threads)  # replacements included; a surplus stop is harmless
            abandoned = set(self._abandoned)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + wait
        for thread in threads:
            task = self._running.get(thread)
            if task is None or id(task) not in abandoned:
                thread.join(max(0.0, deadline - time.monotonic()))


def _default_context():
    # fork copies the parent's threads' locks (tqdm, OpenCV): forkserver starts clean workers
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods and sys.platform != "darwin" else "spawn"


class ProcessExecutor(BaseExecutor):
    """A process pool (``concurrent.futures.ProcessPoolExecutor``). Each result is pickled back
    to the parent. A crashed worker, or an abandoned task, restarts the whole pool."""

    kind = "process"

    def __init__(self, workers=None, context=None):
        self.workers = int(workers or default_workers())
        self._context = multiprocessing.get_context(context or _default_context())
        self._pool = None
        self._start()

    def _start(self):
        self._pool = ProcessPoolExecutor(self.workers, mp_context=self._context)

    def submit(self, fn, arg):
        return self._pool.submit(fn, arg)

    def _kill(self):
        pool = self._pool
        if hasattr(pool, "kill_workers"):  # Python >= 3.14
            pool.kill_workers()
        else:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                if proc.is_alive():
                    proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def restart(self):
        self._kill()
        self._start()

    def abandon(self, fut):
        self.restart()
        return True

    def shutdown(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(executor="thread", workers=None):
    """An executor from a name ("thread", "process", "inline", "ray"; "local" is "thread") or
    an executor object as is. ``workers`` defaults to all cores (for "ray": the cluster's
    CPUs). One worker thread still frees the caller to write while it decodes, and lets a
    timeout apply; "inline" runs everything in the caller."""
    if not isinstance(executor, str):
        return executor if isinstance(executor, BaseExecutor) else _Adapted(executor)
    if executor == "ray":
        from .ray import RayExecutor  # the only module that imports ray

        return RayExecutor(workers)
    workers = max(1, int(workers or default_workers()))
    if executor == "inline":
        return InlineExecutor()
    if executor in ("thread", "local"):
        return ThreadExecutor(workers)
    if executor == "process":
        return ProcessExecutor(workers)
    raise ValueError(f"unknown executor {executor!r}: use 'thread' (or 'local'), 'process', "
                     "'inline' or 'ray'")


def _fail(on_fail, describe, item, reason):
    if on_fail is None:
        raise WorkerError(f"{describe(item)}: {reason}")
    return on_fail(item, reason)


def _await(fut, timeout):
    """("ok", result), ("timeout", reason) or ("broken", reason)."""
    try:
        return "ok", fut.result(timeout=timeout)
    except FutureTimeout:
        return "timeout", f"gave up after {timeout:g} s (the decoder hung?)"
    except BrokenExecutor:
        return "broken", "its worker process died (the decoder crashed?)"


def ordered_map(fn, items, executor, window=None, timeout=None, on_fail=None, describe=repr):
    """Yield ``fn(item)`` for each item, in order, with at most ``window`` items in flight
    (default: 4 per worker). See the module docstring for ``timeout`` and ``on_fail``.
    An exception raised by ``fn`` itself propagates, with a note naming the item."""
    executor = make_executor(executor)
    window = max(1, int(window or 4 * executor.workers))
    items = iter(items)
    pending = collections.deque()

    def fill():
        while len(pending) < window:
            try:
                item = next(items)
            except StopIteration:
                return
            pending.append((item, executor.submit(fn, item)))

    def wait(item, fut):
        try:
            return _await(fut, timeout)
        except Exception as exc:
            if hasattr(exc, "add_note"):
                exc.add_note(f"while processing {describe(item)}")
            raise

    def give_up(fut, status):
        """Free the worker of a failed task; True when the other tasks in flight were lost."""
        if status == "broken":
            executor.restart()
            return True
        return bool(executor.abandon(fut))

    fill()
    while pending:
        item, fut = pending[0]
        status, value = wait(item, fut)
        if status == "ok":
            pending.popleft()
            fill()
            yield value
            continue
        if status == "broken":
            # every task in flight is lost and any of them may be the culprit: run them again
            # one at a time, so that only the one that kills its worker again is failed
            retry = [it for it, _ in pending]
            pending.clear()
            executor.restart()
            for it in retry:
                single = executor.submit(fn, it)
                status, value = wait(it, single)
                if status != "ok":
                    give_up(single, status)
                    value = _fail(on_fail, describe, it, value)
                yield value
            fill()
            continue
        pending.popleft()
        if give_up(fut, status):
            again = [it for it, _ in pending]
            pending.clear()
            pending.extend((it, executor.submit(fn, it)) for it in again)
        fill()
        yield _fail(on_fail, describe, item, value)


_DONE = object()


def prefetch(iterable, max_bytes, size_of=lambda item: 1):
    """Iterate ``iterable`` in a background thread, running ahead of the consumer by at most
    ``max_bytes`` (as measured by ``size_of``; one item is always let through).

    Used between :func:`ordered_map` and the writer: while the writer waits for a commit to
    reach the disk, the workers keep decoding into this buffer instead of stalling. Items come
    out in order; an exception in the producer is raised in the consumer. When the consumer
    stops early, the producer stops at its next item.
    """
    cond = threading.Condition()
    buffered = collections.deque()
    state = {"bytes": 0, "stop": False}

    def produce():
        try:
            for item in iterable:
                size = size_of(item)
                with cond:
                    while buffered and state["bytes"] + size > max_bytes and not state["stop"]:
                        cond.wait()
                    if state["stop"]:
                        return
                    buffered.append((item, size, None))
                    state["bytes"] += size
                    cond.notify_all()
            end = (_DONE, 0, None)
        except BaseException as exc:  # handed to the consumer
            end = (_DONE, 0, exc)
        with cond:
            buffered.append(end)
            cond.notify_all()

    thread = threading.Thread(target=produce, name="caffe_lmdb-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with cond:
                while not buffered:
                    cond.wait()
                item, size, exc = buffered.popleft()
                state["bytes"] -= size
                cond.notify_all()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
