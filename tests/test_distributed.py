"""Batches of files on dask.distributed (issue 16): the same outputs as one process, --resume,
an unreachable scheduler, a failing file among good ones, and a worker killed mid-batch."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tifffile

from napari_cvdm.cli import main
from napari_cvdm.io import read_tiff

pytest.importorskip("distributed")

KINDS = ("mean", "std", "var")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread, shared by the tests that use --scheduler."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as local:
        yield local


@pytest.fixture
def three_tiffs(tmp_path, nuclei_widefield):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i, name in enumerate(("a", "b", "c")):
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, nuclei_widefield[40 * i:40 * i + 32, 60:92])  # 32 x 32 uint16
        paths.append(path)
    return paths


def _cli(inputs, out, model_file, *extra):
    return main(["predict", *map(str, inputs), "-o", str(out), "--model", str(model_file),
                 "--samples", "2", "--steps", "2", "--quiet", *extra])


def _names(inputs):
    return sorted(f"{p.stem}_cvdm_{kind}.tif" for p in inputs for kind in KINDS)


def test_two_local_workers_write_what_one_process_writes(three_tiffs, tiny_model_file,
                                                         tmp_path, capsys):
    # fp32: bf16 (auto on some CPUs) sums in an order that depends on the thread count
    same = ("--seed", "5", "--precision", "fp32")
    assert _cli(three_tiffs, tmp_path / "one", tiny_model_file, *same) == 0
    capsys.readouterr()
    assert _cli(three_tiffs, tmp_path / "two", tiny_model_file, *same, "--workers", "2") == 0
    out = capsys.readouterr().out
    assert out.count("(seed 5,") == 3 and all(f"{p} -> " in out for p in three_tiffs)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == _names(three_tiffs)
    for name in _names(three_tiffs):
        single, clustered = (read_tiff(tmp_path / d / name) for d in ("one", "two"))
        assert clustered.data.shape == (64, 64) and clustered.data.dtype == np.float32
        np.testing.assert_allclose(clustered.data, single.data, rtol=1e-5,
                                   atol=1e-5 * float(np.abs(single.data).max()))


def test_resume_skips_complete_outputs_and_redoes_partial_ones(three_tiffs, tiny_model_file,
                                                               tmp_path, capsys, cluster):
    out = tmp_path / "out"
    assert _cli(three_tiffs, out, tiny_model_file, "--seed", "1") == 0
    (out / "b_cvdm_std.tif").unlink()  # as if the run had died half way through b
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()
            if not p.name.startswith("b_")}
    old_b_mean = (out / "b_cvdm_mean.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert _cli(three_tiffs, out, tiny_model_file, "--seed", "1", "--resume") == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped, its outputs are complete") == 2
    assert f"{three_tiffs[1]} -> " in printed
    assert sorted(p.name for p in out.iterdir()) == _names(three_tiffs)
    assert {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in
            ((n, out / n) for n in kept)} == kept
    assert (out / "b_cvdm_mean.tif").stat().st_mtime_ns != old_b_mean
    assert read_tiff(out / "b_cvdm_std.tif").data.shape == (64, 64)

    # The same on a cluster (--scheduler): only c is redone.
    (out / "c_cvdm_var.tif").unlink()
    assert _cli(three_tiffs, out, tiny_model_file, "--resume", "--scheduler",
                cluster.scheduler_address) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 2 and f"{three_tiffs[2]} -> " in printed
    assert sorted(p.name for p in out.iterdir()) == _names(three_tiffs)

    # Everything complete: nothing to do, no work; --resume with --overwrite is refused.
    assert _cli(three_tiffs, out, tiny_model_file, "--resume") == 0
    assert capsys.readouterr().out.count("skipped") == 3
    assert _cli(three_tiffs, out, tiny_model_file, "--resume", "--overwrite") == 2
    assert "--resume" in capsys.readouterr().err


def test_an_unreachable_scheduler_is_a_quick_clear_error(three_tiffs, tiny_model_file,
                                                         tmp_path, capsys):
    start = time.monotonic()
    code = _cli(three_tiffs, tmp_path / "out", tiny_model_file, "--scheduler",
                "tcp://127.0.0.1:1", "--scheduler-timeout", "2")
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 15
    assert "no dask scheduler answered at tcp://127.0.0.1:1 within 2 s" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("listener", ["silent", "http"])
def test_a_port_that_is_no_dask_scheduler_is_a_clear_error_not_a_hang(
        three_tiffs, tiny_model_file, tmp_path, capsys, listener):
    """Found by a review: a port that accepts connections but is no dask scheduler (a web
    server, a listener that never answers) made `--scheduler` wait for ever, whatever
    --scheduler-timeout said."""
    import http.server
    import socket
    import threading

    if listener == "silent":
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
    else:
        server = http.server.HTTPServer(("127.0.0.1", 0),
                                        http.server.BaseHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
    try:
        start = time.monotonic()
        code = _cli(three_tiffs, tmp_path / "out", tiny_model_file, "--scheduler",
                    f"tcp://127.0.0.1:{port}", "--scheduler-timeout", "2")
        err = capsys.readouterr().err
        assert code == 2 and time.monotonic() - start < 20
        assert f"no dask scheduler answered at tcp://127.0.0.1:{port} within 2 s" in err
    finally:
        (server.server_close if listener == "http" else server.close)()


def test_cluster_options_that_do_not_go_together_are_refused(three_tiffs, tiny_model_file,
                                                             tmp_path, capsys, monkeypatch):
    assert _cli(three_tiffs, tmp_path / "o", tiny_model_file, "--workers", "0") == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert _cli(three_tiffs, tmp_path / "o", tiny_model_file, "--threads-per-worker", "2") == 2
    assert "needs --workers or --scheduler" in capsys.readouterr().err
    for timeout in ("inf", "1e300", "nan", "-1"):  # inf was a KeyError traceback, 1e300 a hang
        assert _cli(three_tiffs, tmp_path / "o", tiny_model_file, "--scheduler",
                    "tcp://127.0.0.1:1", "--scheduler-timeout", timeout) == 2
        assert "--scheduler-timeout must be more than 0 and at most 3600" in \
            capsys.readouterr().err
    for extra in ((), ("--workers", "2")):  # a review: accepted, even nan, and not used
        assert _cli(three_tiffs, tmp_path / "o", tiny_model_file, *extra,
                    "--scheduler-timeout", "nan") == 2
        assert "--scheduler-timeout needs --scheduler" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # not installed
    assert _cli(three_tiffs, tmp_path / "o", tiny_model_file, "--workers", "2") == 2
    assert "pip install 'napari-cvdm[cluster]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _damaged_tiff(folder):
    """A TIFF with intact headers (a file that is no TIFF at all is refused before the work)
    and damaged compressed pixels: it fails when its task reads it."""
    bad = folder / "broken.tif"
    tifffile.imwrite(bad, np.arange(256, dtype=np.uint16).reshape(16, 16), compression="zlib")
    with tifffile.TiffFile(bad) as tif:
        start, length = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    raw = bytearray(bad.read_bytes())
    raw[start:start + length] = b"\xff" * length
    bad.write_bytes(bytes(raw))
    return bad


def test_a_bad_file_fails_alone_and_the_others_are_written(three_tiffs, tiny_model_file,
                                                           tmp_path, capsys, cluster):
    from distributed import Client

    from napari_cvdm.model_cache import cache_info

    bad = _damaged_tiff(three_tiffs[0].parent)
    out = tmp_path / "out"
    with Client(cluster) as client:
        before = client.run(cache_info)
        code = _cli([*three_tiffs, bad], out, tiny_model_file, "--seed", "2", "--scheduler",
                    cluster.scheduler_address)
        after = client.run(cache_info)
    err = capsys.readouterr().err
    assert code == 2, err
    # the model was loaded at most once per worker; the bad file was not retried
    loads = {w: after[w]["misses"] - before[w]["misses"] for w in after}
    uses = sum(after[w]["hits"] + after[w]["misses"] - before[w]["hits"] - before[w]["misses"]
               for w in after)
    assert all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1 and uses == 4
    assert f"cvdm predict: error: {bad}: " in err and "could not be read as a TIFF" in err
    assert "1 of 4 inputs failed" in err
    assert sorted(p.name for p in out.iterdir()) == _names(three_tiffs)


def test_a_worker_killed_mid_batch_still_gives_every_output_once(three_tiffs, tiny_model_file,
                                                                 tmp_path, cluster):
    """The worker running b.tif dies (os._exit) on b's first attempt; dask runs b again on
    a live worker, with the same seed; every output exists once, nothing half-written."""
    from distributed import Client

    from napari_cvdm.distributed import run_batch, run_file
    from napari_cvdm.file_prediction import FileTask, RunSpec
    from napari_cvdm.settings import PredictSettings

    out = tmp_path / "out"
    died = tmp_path / "died"

    def dies_once_on_b(task, spec):
        if task.input.name == "b.tif" and not died.exists():
            died.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-task, as with SIGKILL or a lost node
        return run_file(task, spec)

    tasks = [FileTask(p, tuple(out / f"{p.stem}_cvdm_{k}.tif" for k in KINDS), seed=7)
             for p in three_tiffs]
    settings = PredictSettings(model=str(tiny_model_file), samples=2, steps=2, device="cpu")
    spec = RunSpec(settings, {}, 2, threads=1)
    with Client(cluster) as client:
        pids = set(client.run(os.getpid).values())
        outcomes = run_batch(client, tasks, spec, progress=False, function=dies_once_on_b)
    assert died.exists() and int(died.read_text()) in pids  # a worker did die
    assert [o.error for o in outcomes] == [None] * 3
    assert [o.done["input"] for o in outcomes] == [str(p.absolute()) for p in three_tiffs]
    assert all(o.done["seed"] == 7 for o in outcomes)
    assert sorted(p.name for p in out.iterdir()) == _names(three_tiffs)  # no .part files
    for path in out.iterdir():
        assert read_tiff(path).data.shape == (64, 64)


def test_errors_from_a_worker_keep_their_message():
    import pickle

    from napari_cvdm.errors import OutOfMemory

    error = OutOfMemory("cuda:1", 128, 2)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is OutOfMemory and str(again) == str(error)
    assert (again.device, again.tile, again.batch) == ("cuda:1", 128, 2)


def test_worker_i_uses_gpu_i_mod_count_when_there_are_several(monkeypatch):
    import torch

    from napari_cvdm.distributed import _worker_index, worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [worker_device("cuda", i) for i in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert worker_device("auto", 4) == "cuda:1"
    assert worker_device("cuda:2", 0) is None and worker_device("cpu", 1) is None  # as given
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_device("cuda", 3) is None  # one GPU per worker (SLURM): its cuda:0

    class Worker:
        def __init__(self, name, address="tcp://10.0.0.1:4000"):
            self.name, self.address = name, address

    assert _worker_index(Worker(2)) == 2
    assert _worker_index(Worker("SLURMCluster-7")) == 7
    assert _worker_index(Worker("gpu-node")) == _worker_index(Worker("gpu-node"))


def test_two_resumes_on_one_folder_share_the_batch_on_a_cluster(three_tiffs, tiny_model_file,
                                                                 tmp_path, capsys, cluster,
                                                                 monkeypatch):
    """As in one process: outputs another `--resume` run completed while this one ran are
    said to be done, not failures of the batch (checked by the worker before it starts, and
    by the client where they appear while the worker writes)."""
    import napari_cvdm.distributed as nd

    out = tmp_path / "out"
    real = nd.run_batch

    def raced(client, tasks, spec, **kwargs):  # the other run writes the first input's
        assert _cli(three_tiffs[:1], out, tiny_model_file) == 0
        return real(client, tasks, spec, **kwargs)

    monkeypatch.setattr(nd, "run_batch", raced)
    assert _cli(three_tiffs, out, tiny_model_file, "--resume", "--scheduler",
                cluster.scheduler_address) == 0
    printed = capsys.readouterr()
    # the worker finds them complete before it starts (or, at the writing, the client does)
    assert f"{three_tiffs[0]}: skipped, its outputs are complete" in printed.out
    assert "failed" not in printed.err
    assert sorted(p.name for p in out.iterdir()) == _names(three_tiffs)


def test_local_workers_log_nothing_and_a_failure_still_reaches_the_user(three_tiffs,
                                                                        tiny_model_file,
                                                                        tmp_path, capfd):
    """--workers: the workers' own log is silenced (slow workers at shutdown logged heartbeat
    errors with two tracebacks after a run that had succeeded); a file that fails is still
    said, by the command line, with its reason."""
    import logging

    from napari_cvdm.distributed import connect

    def log_an_error():
        logging.getLogger("distributed.worker").error("a worker's own error log")

    with connect(workers=1) as client:
        client.run(log_an_error)
    assert "a worker's own error log" not in capfd.readouterr().err
    bad = _damaged_tiff(three_tiffs[0].parent)
    code = _cli([three_tiffs[0], bad], tmp_path / "out", tiny_model_file, "--workers", "1")
    err = capfd.readouterr().err
    assert code == 2, err
    assert f"cvdm predict: error: {bad}: " in err and "1 of 2 inputs failed" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == _names(three_tiffs[:1])


def test_more_workers_than_files_start_one_per_file(three_tiffs, tiny_model_file, tmp_path,
                                                    monkeypatch):
    """A worker runs one file at a time: --workers 40 for three files starts three."""
    import napari_cvdm.distributed as distributed_module

    started = []
    real_connect = distributed_module.connect

    def recording_connect(workers=None, *args, **kwargs):
        started.append(workers)
        return real_connect(workers, *args, **kwargs)

    monkeypatch.setattr(distributed_module, "connect", recording_connect)
    assert _cli(three_tiffs, tmp_path / "out", tiny_model_file, "--workers", "40") == 0
    assert started == [3]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == _names(three_tiffs)


def test_workers_beyond_the_free_memory_are_refused_before_any_starts(three_tiffs,
                                                                      tiny_model_file,
                                                                      tmp_path, monkeypatch,
                                                                      capsys):
    """A mistyped count (--workers 1000) would start a process per worker and exhaust the
    machine: refused at once, saying how many fit; nothing is written."""
    import psutil

    from napari_cvdm.distributed import WORKER_BYTES, connect

    free = 5 * WORKER_BYTES + WORKER_BYTES // 2

    class Memory:
        available = free

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    started = time.perf_counter()
    with pytest.raises(ValueError, match="use at most 5 "):
        with connect(workers=6):
            pass
    assert time.perf_counter() - started < 5
    inputs = [*three_tiffs] + [three_tiffs[0].with_name(f"{n}.tif") for n in "defg"]
    for path in inputs[3:]:
        path.write_bytes(three_tiffs[0].read_bytes())
    code = _cli(inputs, tmp_path / "out", tiny_model_file, "--workers", "1000")
    err = capsys.readouterr().err
    assert code == 2 and "7 local workers need about" in err and "use at most 5" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
