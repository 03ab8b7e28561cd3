"""The encode stage on a Ray cluster: :class:`RayExecutor`.

This is the only module that imports ``ray``, and only when an executor is used, so
``import caffe_lmdb`` never needs it (``pip install "caffe_lmdb[ray]"`` adds it).

A :class:`RayExecutor` plugs into :func:`caffe_lmdb.parallel.ordered_map` like the thread and
process pools: ``submit(fn, arg)`` runs ``fn(arg)`` as a Ray task and returns a
``concurrent.futures.Future``. The converters submit :func:`caffe_lmdb.encode.encode_many` over
chunks of :attr:`RayExecutor.chunk` samples; ordered_map keeps a bounded window of tasks in
flight and hands results to the one LMDB writer in the driver, in key order. A task reads
nothing but its argument and the image files it names, so the bytes are the same wherever it
ran.

Inputs: image files must be readable at the same path on every node. :meth:`check_source`
runs a probe task on every node before anything is written, and every task checks the image
root again before it starts, so that a node without the shared storage (one that joined later)
stops the conversion with a :class:`~caffe_lmdb.errors.ClusterError` naming it, instead of
turning its images into skips.

Failures:

* a worker process, a node or a finished result lost (``WorkerCrashedError``,
  ``NodeDiedError``, ``ObjectLostError``, ...): Ray runs the task again (``max_retries``); if
  that is not enough, the executor submits it again itself, up to ``resubmit`` times. The task
  is pure, so running it twice writes nothing twice: only its result, once, reaches the writer.
  A task lost every time fails with :class:`WorkerLost` (a ``BrokenExecutor``), and
  ordered_map then treats it as a crashing decoder: it runs the tasks in flight again one at a
  time, the converter splits a chunk that fails again into single samples, and only a sample
  that keeps killing its worker is skipped;
* the task's function raised (``RayTaskError``): the function is deterministic, so running it
  again would raise again; the original exception is delivered (e.g. an ``EncodeError``);
* a task that exceeds the converter's timeout is cancelled (its worker is killed).
"""
import contextlib
import os
import socket
import threading
from concurrent.futures import BrokenExecutor, Future

from ..errors import ClusterError, MissingDependencyError
from .executors import BaseExecutor

__all__ = ["RayExecutor", "WorkerLost", "import_ray", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "caffe_lmdb[ray]"'

#: Ray's errors that mean "the work was lost", not "the function failed"
_LOST = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError",
         "RaySystemError", "LocalRayletDiedError")


def import_ray():
    """``import ray``, or a MissingDependencyError naming the install command."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"the Ray executor needs Ray, which is not installed: "
                                     f"{INSTALL_HINT}") from exc
    return ray


class WorkerLost(BrokenExecutor):
    """A task whose worker (or node, or result) was lost more often than the retries allow."""


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _probe(root, path):
    """Run on one node: can its workers see ``root`` and read ``path``? Returns
    (hostname, caffe_lmdb version, problem or None)."""
    from caffe_lmdb import __version__

    host = socket.gethostname()
    if not os.path.isdir(root):
        return host, __version__, f"{root} is not a folder there"
    if path is not None:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            return host, __version__, f"cannot read {path} there ({exc.strerror or exc})"
    return host, __version__, None


def _call_checked(fn, root, arg):
    """A task: ``fn(arg)``, after checking that this node sees the image root (a node that
    joined after the probe, or lost its mount, must not turn every image into a skip)."""
    if root is not None and not os.path.isdir(root):
        raise ClusterError(f"Ray workers on node {socket.gethostname()} cannot read the input "
                           f"images: {root} is not a folder there (a node without the shared "
                           "storage?); see docs/cluster.md")
    return fn(arg)


def _readable_sample(source, look=64):
    """The path of one of the first samples that this process can read, or None."""
    for n, sample in enumerate(source.samples(0)):
        path = getattr(sample, "path", None)
        if path is not None and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
        if n + 1 >= look:
            return None
    return None


class RayExecutor(BaseExecutor):
    """Run tasks on a Ray cluster (see the module docstring).

    ``address``: the cluster to join (``"auto"``, ``"ray://head:10001"``, ...). When Ray is
    already initialized in this process, that session is used as it is; otherwise the executor
    calls ``ray.init(address, **init_options)`` (with no address: ``$RAY_ADDRESS`` or a new
    local instance) on first use and ``ray.shutdown()`` in :meth:`shutdown`, after which it can
    be used again.

    ``workers``: tasks to keep busy (default: the cluster's CPUs). ``chunk``: samples per task;
    tasks of about 30 images amortize Ray's per-task cost (about a millisecond) while a
    chunk's result (32 x 196 KB for 256 x 256 raw images) stays small.
    ``max_retries``: Ray's own retries of a task whose worker died; ``resubmit``: how many
    times more the executor submits it when Ray gives up.
    """

    kind = "ray"
    #: tasks run in other processes and possibly other machines: inputs must be on storage
    #: they all see, at the same path
    remote = True

    def __init__(self, workers=None, address=None, chunk=32, max_retries=3, resubmit=2,
                 init_options=None):
        self.address = address
        self.chunk = max(1, int(chunk))
        self.max_retries = int(max_retries)
        self.resubmit = int(resubmit)
        self.init_options = dict(init_options or {})
        self.resubmitted = 0
        self._workers = int(workers) if workers else None
        self._ray = None
        self._lost = ()
        self._started = False
        self._remotes = {}
        self.root = None      # the image root every task checks first (see check_source)
        self._lock = threading.Lock()
        self._refs = {}       # id(future) -> (future, ObjectRef of its current attempt)
        self._abandoned = set()

    # -- the session ------------------------------------------------------------------------

    def _connect(self):
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            options = dict(self.init_options)
            joining = self.address or os.environ.get("RAY_ADDRESS")
            if self._workers and not joining:  # a new local instance: that many CPUs
                options.setdefault("num_cpus", self._workers)
            try:
                try:
                    ray.init(address=self.address, **options)
                except ValueError as exc:
                    # ray.init() joined the cluster `ray start` left on this machine, which
                    # takes no num_cpus: join it as it is
                    if "num_cpus" not in options or "existing cluster" not in str(exc):
                        raise
                    options.pop("num_cpus")
                    ray.init(address=self.address, **options)
            except Exception as exc:
                where = joining or "a local instance"
                raise ClusterError(f"cannot start or join the Ray cluster ({where}): "
                                   f"{_first_line(exc)}") from exc
            self._started = True
        self._lost = tuple(getattr(ray.exceptions, name) for name in _LOST
                           if hasattr(ray.exceptions, name))
        self._ray = ray
        return ray

    @property
    def workers(self):
        if self._workers:
            return self._workers
        resources = self._connect().cluster_resources()
        return max(1, int(resources.get("CPU", 1)))

    # -- tasks ------------------------------------------------------------------------------

    def _remote(self, fn):
        remote = self._remotes.get(fn)
        if remote is None:
            ray = self._connect()
            # named after fn: workers show "ray::encode_many" while they run one
            remote = ray.remote(_call_checked).options(
                name=getattr(fn, "__name__", "task"), max_retries=self.max_retries,
                retry_exceptions=False)
            self._remotes[fn] = remote
        return remote

    def submit(self, fn, arg):
        fut = Future()
        fut.set_running_or_notify_cancel()
        self._launch(fut, fn, arg, 0)
        return fut

    def _launch(self, fut, fn, arg, attempt):
        ref = self._remote(fn).remote(fn, self.root, arg)
        with self._lock:
            self._refs[id(fut)] = (fut, ref)
        ref.future().add_done_callback(lambda done: self._settle(fut, fn, arg, attempt, done))

    def _settle(self, fut, fn, arg, attempt, done):
        """Runs in Ray's callback thread when an attempt finishes: deliver its result, or
        submit the task again when its worker was lost."""
        with self._lock:
            if id(fut) in self._abandoned:
                self._abandoned.discard(id(fut))
                return
        exc = done.exception()
        if exc is not None and isinstance(exc, self._lost) and attempt < self.resubmit:
            self.resubmitted += 1
            try:
                self._launch(fut, fn, arg, attempt + 1)
                return
            except Exception as again:  # the session went away: report that instead
                exc = again
        with self._lock:
            self._refs.pop(id(fut), None)
        if fut.done():
            return
        if exc is None:
            fut.set_result(done.result())
        elif isinstance(exc, self._lost):
            fut.set_exception(WorkerLost(f"its Ray task was lost {attempt + 1} times "
                                         f"({type(exc).__name__}: {_first_line(exc)})"))
        else:
            # RayTaskError: the function itself raised; hand over its own exception
            cause = getattr(exc, "cause", None)
            fut.set_exception(cause if isinstance(cause, Exception) else exc)

    def abandon(self, fut):
        """Give up a task that timed out: cancel it (killing its worker). Other tasks in
        flight are not affected (returns False)."""
        with self._lock:
            entry = self._refs.pop(id(fut), None)
            if entry is None or fut.done():
                return False
            self._abandoned.add(id(fut))
        with contextlib.suppress(Exception):  # already finished or gone: nothing to stop
            self._ray.cancel(entry[1], force=True)
        return False

    def restart(self):
        pass  # Ray replaces dead workers itself

    def shutdown(self):
        """Cancel what is still in flight; leave the session if this executor started it."""
        with self._lock:
            entries = list(self._refs.values())
            self._refs.clear()
            self._abandoned.update(id(fut) for fut, _ in entries)
        for _fut, ref in entries:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False
        self._ray = None
        self._remotes.clear()

    # -- inputs on shared storage -----------------------------------------------------------

    def check_source(self, source):
        """Before a conversion: can workers on every node read the source's files? Sources
        whose samples carry their data (MNIST, CIFAR, arrays) need nothing on the nodes."""
        self.root = None
        root = getattr(source, "root", None)
        if root is None:
            return
        self.check_paths(root, _readable_sample(source))
        self.root = root

    def check_paths(self, root, path=None, timeout=120):
        """Run a tiny probe task on every alive node with CPUs: ``root`` must be a folder there
        and ``path`` (one input file) readable. Raises ClusterError naming the node."""
        ray = self._connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .. import __version__

        probe = ray.remote(_probe)
        nodes = [n for n in ray.nodes()
                 if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        if not nodes:
            raise ClusterError("the Ray cluster has no alive node with CPUs to run tasks on")
        refs = [(n.get("NodeManagerAddress", n["NodeID"]),
                 probe.options(num_cpus=0, max_retries=1,
                               scheduling_strategy=NodeAffinitySchedulingStrategy(
                                   n["NodeID"], soft=False)).remote(root, path))
                for n in nodes]
        for where, ref in refs:
            try:
                host, version, problem = ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                raise ClusterError(f"the Ray node {where} did not run a probe task within "
                                   f"{timeout} s (is it busy with other jobs?)") from None
            except Exception as exc:
                raise ClusterError(f"a probe task failed on the Ray node {where} "
                                   f"({_first_line(exc)}): caffe_lmdb must be installed on "
                                   f"every node ({INSTALL_HINT}, version {__version__})") \
                    from exc
            if version != __version__:
                raise ClusterError(f"the Ray node {host} ({where}) has caffe_lmdb {version}, "
                                   f"this process {__version__}: install the same version on "
                                   "every node")
            if problem:
                raise ClusterError(f"Ray workers on node {host} ({where}) cannot read the input "
                                   f"images: {problem}. Every node must see the image root "
                                   "at the same path (shared storage such as NFS, or a copy "
                                   "at the same path on each node); see docs/cluster.md")
