"""Training robustness (issue 8): clear option errors; checkpoints survive SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile

from napari_cvdm.cli import main
from napari_cvdm.io import load_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.parametrize("option,value", [("--checkpoint-every", "0"), ("--validate-every", "0"),
                                          ("--batch-size", "0"), ("--lr", "-1"),
                                          ("--scale", "7"), ("--psf-sigma", "nan")])
def test_bad_train_options_are_clear_errors(tmp_path, capsys, option, value):
    hq = tmp_path / "hq"
    hq.mkdir()
    code = main(["train", "--hq", str(hq), "--preset", "tiny", "--steps", "2", "-o",
                 str(tmp_path / "m.cvdm.safetensors"), option, value])
    assert code == 2 and option in capsys.readouterr().err


# -- training checkpoints survive SIGKILL -----------------------------------------------
def _state_step(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(json.loads(fh.metadata()["napari_cvdm_state"])["step"])


def _checkpointing_command(tmp_path, nuclei_truth):
    """(model path, `cvdm train` command without --steps) that checkpoints every step."""
    hq = tmp_path / "hq"
    hq.mkdir()
    tifffile.imwrite(hq / "a.tif", nuclei_truth[:120, :120])
    out = tmp_path / "m.cvdm.safetensors"
    return out, [sys.executable, "-m", "napari_cvdm.cli", "train", "--hq", str(hq), "--preset",
                 "tiny", "-o", str(out), "--patch-size", "32", "--batch-size", "2",
                 "--photons", "50", "100", "--checkpoint-every", "1", "--validate-every",
                 "100000", "--device", "cpu"]


@contextlib.contextmanager
def _after_first_checkpoint(tmp_path, nuclei_truth, stderr=subprocess.DEVNULL):
    """A long `cvdm train` run, yielded as (model path, command, process) once it has written
    its first checkpoint; killed on leaving if it still runs."""
    out, args = _checkpointing_command(tmp_path, nuclei_truth)
    proc = subprocess.Popen(args + ["--steps", "100000"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 240
        while not out.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert out.is_file(), "training wrote no checkpoint"
        time.sleep(0.37)  # an arbitrary moment, most likely in the middle of a checkpoint write
        yield out, args, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killing_training_never_corrupts_the_checkpoint_and_resume_works(tmp_path,
                                                                         nuclei_truth):
    from napari_cvdm.training import state_path

    with _after_first_checkpoint(tmp_path, nuclei_truth) as (out, args, proc):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    model = load_model(out)  # complete, whatever the moment of the kill
    step = _state_step(state_path(out))
    assert 1 <= model.metadata["training"]["step"] <= step
    # Temporary files may remain after SIGKILL; nothing reads them and resume ignores them.
    leftovers = list(tmp_path.glob(".*.part"))
    result = subprocess.run(args + ["--steps", str(step + 2), "--resume"], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from step {step}" in result.stderr
    assert load_model(out).metadata["training"]["step"] == step + 2
    assert set(tmp_path.glob(".*.part")) <= set(leftovers)  # the run itself leaves none


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")
def test_sigterm_stops_training_like_ctrl_c_keeping_the_checkpoint(tmp_path, nuclei_truth):
    """A batch scheduler's time limit (SIGTERM) used to end training where it stood; now
    it is a cancel: exit 143, the checkpoint named, no temporary file left behind."""
    with _after_first_checkpoint(tmp_path, nuclei_truth, subprocess.PIPE) as (out, _, proc):
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "cvdm train:" in err and str(out.name) in err
    load_model(out)
    assert list(tmp_path.glob(".*.part")) == []
