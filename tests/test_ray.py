"""The Ray executor on a local Ray instance (2 CPUs, started once for this module): the same
bytes as the local executor and as Caffe, a worker killed mid-run, inputs workers cannot read,
a hung image, and Ray missing."""
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
from conftest import read_lmdb
from test_convert_fixtures import IMAGESET_FLAGS

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import ClusterError, MissingDependencyError
from caffe_lmdb.write.ray import RayExecutor


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def images(fixtures):
    return fixtures / "inputs" / "images"


def _skips(summary):
    return [(s.index, s.key, s.where, s.reason) for s in summary.skipped]


@pytest.mark.parametrize("name", sorted(IMAGESET_FLAGS))
def test_ray_writes_the_bytes_of_caffe_and_of_the_local_executor(ray_session, images,
                                                                 fixtures, tmp_path, name):
    args = (f"{images}/", images / "list.txt")
    ray_run = caffe_lmdb.convert_imageset(*args, tmp_path / "ray", executor="ray",
                                          **IMAGESET_FLAGS[name])
    local = caffe_lmdb.convert_imageset(*args, tmp_path / "local", **IMAGESET_FLAGS[name])
    assert read_lmdb(tmp_path / "ray") == read_lmdb(tmp_path / "local")
    assert read_lmdb(tmp_path / "ray") == read_lmdb(fixtures / name)
    assert _skips(ray_run) == _skips(local) and len(ray_run.skipped) == 2
    assert (tmp_path / "ray" / "convert.log").read_text() == \
        (tmp_path / "local" / "convert.log").read_text()


def test_cli_executor_ray_and_small_record_sources(ray_session, fixtures, images, tmp_path,
                                                   capsys):
    assert main(["convert-imageset", "--executor=ray", "--workers=2", "--encoded",
                 f"{images}/", str(images / "list.txt"), str(tmp_path / "db")]) == 0
    assert read_lmdb(tmp_path / "db") == read_lmdb(fixtures / "imageset_encoded_passthrough")
    assert "24 records written, 2 skipped" in capsys.readouterr().out
    # samples that carry their bytes (MNIST) or arrays: no shared storage needed
    mnist = fixtures / "inputs" / "mnist"
    assert main(["convert-mnist", "--executor", "ray", "--quiet", str(mnist / "images-idx3-ubyte"),
                 str(mnist / "labels-idx1-ubyte"), str(tmp_path / "m")]) == 0
    assert read_lmdb(tmp_path / "m") == read_lmdb(fixtures / "mnist_lmdb")
    arrays = np.random.default_rng(1).random((70, 2, 3, 4)).astype(np.float32)
    caffe_lmdb.write_arrays(tmp_path / "a_ray", arrays, list(range(70)), executor="ray")
    caffe_lmdb.write_arrays(tmp_path / "a_local", arrays, list(range(70)))
    assert read_lmdb(tmp_path / "a_ray") == read_lmdb(tmp_path / "a_local")


def _busy_workers():
    """Pids of Ray workers running an encode task: a worker's process title is
    ``ray::encode_many`` while it runs one (``ray::IDLE`` between tasks)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read(32).startswith(b"ray::encode_many"):
                    yield int(pid)
        except (OSError, ValueError):
            continue


class _Killer(threading.Thread):
    """SIGKILLs the first Ray worker seen running an encode task."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and self.killed is None:
            for pid in _busy_workers():
                os.kill(pid, signal.SIGKILL)
                self.killed = pid
                break
            time.sleep(0.001)


@pytest.mark.parametrize("retries", [
    dict(),                              # Ray retries the task itself (max_retries=3)
    dict(max_retries=0),                 # the executor submits it again
    dict(max_retries=0, resubmit=0),     # WorkerLost: ordered_map reruns the tasks in flight
])
def test_a_worker_killed_mid_run_loses_and_repeats_nothing(ray_session, images, tmp_path,
                                                            retries):
    lines = (images / "list.txt").read_text().splitlines()
    big = tmp_path / "big.txt"
    big.write_text("".join(line + "\n" for line in lines * 20))  # 520 lines, 40 unreadable
    opts = dict(resize_height=160, resize_width=160, commit_every=100)
    local = caffe_lmdb.convert_imageset(f"{images}/", big, tmp_path / "local", **opts)
    executor = RayExecutor(**retries)
    killer = _Killer()
    killer.start()
    try:
        summary = caffe_lmdb.convert_imageset(f"{images}/", big, tmp_path / "ray",
                                              executor=executor, **opts)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no busy worker was seen: the test did not kill one"
    assert read_lmdb(tmp_path / "ray") == read_lmdb(tmp_path / "local")
    assert summary.written == local.written == 480 and _skips(summary) == _skips(local)
    if retries.get("max_retries") == 0 and retries.get("resubmit") != 0:
        assert executor.resubmitted == 1


def test_interrupted_ray_run_resumes_to_the_local_bytes(ray_session, images, tmp_path):
    lines = (images / "list.txt").read_text().splitlines()
    big = tmp_path / "big.txt"
    big.write_text("".join(line + "\n" for line in lines * 8))  # 208 lines
    opts = dict(resize_height=20, resize_width=16, shuffle=True, seed=9, commit_every=10)

    def interrupt(done, total):
        if done >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caffe_lmdb.convert_imageset(f"{images}/", big, tmp_path / "ray", executor="ray",
                                    progress=interrupt, **opts)
    prefix = read_lmdb(tmp_path / "ray")
    resumed = caffe_lmdb.convert_imageset(f"{images}/", big, tmp_path / "ray", executor="ray",
                                          resume=True, **opts)
    local = caffe_lmdb.convert_imageset(f"{images}/", big, tmp_path / "local", **opts)
    whole = read_lmdb(tmp_path / "local")
    assert 0 < len(prefix) < len(whole) and prefix == whole[:len(prefix)]
    assert read_lmdb(tmp_path / "ray") == whole
    assert resumed.resumed_from >= 90 and _skips(resumed) == _skips(local)


class _Unprobed(RayExecutor):
    def check_paths(self, root, path=None, timeout=120):
        pass  # as if the node had joined the cluster after the probe


def test_workers_that_cannot_read_the_root_fail_early(ray_session, images, tmp_path):
    # /proc/self/fd/N is the images folder in this process only: a Ray worker has no fd N
    fd = os.open(images, os.O_RDONLY)
    high = os.dup2(fd, 987)
    try:
        root = f"/proc/self/fd/{high}/"
        assert os.path.isfile(root + "cat/img_000.jpg")
        with pytest.raises(ClusterError) as info:
            caffe_lmdb.convert_imageset(root, images / "list.txt", tmp_path / "db",
                                        executor="ray")
        # a node that joined after the probe: its first task stops the run, rather than
        # skipping every image as unreadable
        with pytest.raises(ClusterError, match="is not a folder there"):
            caffe_lmdb.convert_imageset(root, images / "list.txt", tmp_path / "late",
                                        executor=_Unprobed())
        assert read_lmdb(tmp_path / "late") == []
    finally:
        os.close(high)
        os.close(fd)
    msg = str(info.value)
    assert f"cannot read the input images: {root} is not a folder there" in msg
    assert "shared storage" in msg
    assert not (tmp_path / "db").exists()  # failed before anything was written


def test_a_hung_image_is_skipped_and_its_chunk_neighbours_kept(ray_session, images, tmp_path):
    fifo = tmp_path / "root" / "hang.jpg"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opening it for reading blocks forever: a decoder that hangs
    for entry in images.iterdir():
        if entry.is_dir():
            os.symlink(entry, tmp_path / "root" / entry.name)
    lines = (images / "list.txt").read_text().splitlines()
    (tmp_path / "list.txt").write_text("\n".join(lines[:10] + ["hang.jpg 5"] + lines[10:])
                                       + "\n")
    args = (f"{tmp_path / 'root'}/", tmp_path / "list.txt")
    # 3 s: long enough that a loaded machine does not make a normal image miss it
    ray_run = caffe_lmdb.convert_imageset(*args, tmp_path / "ray", executor="ray", timeout=3,
                                          resize_height=32, resize_width=32)
    local = caffe_lmdb.convert_imageset(*args, tmp_path / "local", timeout=3,
                                        resize_height=32, resize_width=32)
    assert _skips(ray_run)[2][1:3] == (b"00000010_hang.jpg", f"{tmp_path / 'list.txt'}:11")
    assert "gave up after 3 s" in ray_run.skipped[2].reason
    assert _skips(ray_run) == _skips(local)
    assert read_lmdb(tmp_path / "ray") == read_lmdb(tmp_path / "local")
    assert ray_run.written == 24


def test_without_ray_the_error_names_the_extra(monkeypatch, images, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "caffe_lmdb\[ray\]"'):
        caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "db",
                                    executor="ray")
    assert main(["convert-imageset", "--executor=ray", f"{images}/", str(images / "list.txt"),
                 str(tmp_path / "db2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "caffe_lmdb[ray]"' in err
    assert not (tmp_path / "db").exists() and not (tmp_path / "db2").exists()
