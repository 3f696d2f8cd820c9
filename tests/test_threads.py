"""predict() with one model shared between threads: the sequential results, model untouched."""

from __future__ import annotations

import threading

import numpy as np
import torch

import napari_cvdm as nc


def _weights(model):
    return {k: (v.clone(), v.stride(), v.device) for k, v in model.state_dict().items()}


def test_two_threads_sharing_one_model_give_the_sequential_results(tiny_model):
    images = [np.random.default_rng(i).random((40, 36)).astype(np.float32) for i in range(2)]
    kwargs = {"samples": 3, "steps": 3, "eta": 0.5, "seed": 11, "device": "cpu",
              "precision": "fp32"}
    before = _weights(tiny_model)
    sequential = [nc.predict(image, tiny_model, **kwargs) for image in images]
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i):
        try:
            start.wait()
            for _ in range(2):
                results[i] = nc.predict(images[i], tiny_model, **kwargs)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i in range(2):
        np.testing.assert_array_equal(results[i].mean, sequential[i].mean)
        np.testing.assert_array_equal(results[i].variance, sequential[i].variance)
    after = _weights(tiny_model)
    for name, (value, stride, device) in before.items():
        assert torch.equal(after[name][0], value), name  # values
        assert after[name][1:] == (stride, device), name  # layout and device unchanged


def test_predict_leaves_the_models_mode_and_cudnn_flag_as_they_were(tiny_model):
    tiny_model.train()
    flag = torch.backends.cudnn.benchmark
    nc.predict(np.random.rand(16, 16), tiny_model, samples=1, steps=1, seed=0)
    assert tiny_model.training and torch.backends.cudnn.benchmark == flag
    assert all(p.is_contiguous() for p in tiny_model.parameters())


def test_changed_weights_are_used_by_the_next_call(tiny_model):
    image = np.random.default_rng(3).random((16, 16))
    first = nc.predict(image, tiny_model, samples=1, steps=2, seed=0)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(0.5)
    second = nc.predict(image, tiny_model, samples=1, steps=2, seed=0)
    assert not np.array_equal(first.mean, second.mean)  # no stale cached copy


def test_a_model_turned_to_another_float_type_runs_as_a_float32_copy(tiny_model):
    """Found by a review: model.to(torch.bfloat16) or .double() stopped predict() with
    torch's "Input type (float) and bias type (c10::BFloat16) should be the same"."""
    import copy

    image = np.random.default_rng(4).random((16, 16))
    exact = nc.predict(image, tiny_model, samples=2, steps=2, seed=0, precision="fp32")
    double = copy.deepcopy(tiny_model).double()
    same = nc.predict(image, double, samples=2, steps=2, seed=0, precision="fp32")
    np.testing.assert_allclose(same.mean, exact.mean, rtol=1e-5, atol=1e-5)
    assert all(p.dtype == torch.float64 for p in double.parameters())  # the caller's, as given
    low = copy.deepcopy(tiny_model).to(torch.bfloat16)
    rounded = nc.predict(image, low, samples=2, steps=2, seed=0, precision="fp32")
    assert np.isfinite(rounded.mean).all() and rounded.mean.shape == exact.mean.shape


def test_deterministic_cudnn_keeps_the_autotuner_off():
    """Found by a review: predict() turned the autotuner on inside the bioimage.io sampler's
    exact mode (deterministic cuDNN), whose algorithms are then picked by timing."""
    from napari_cvdm.inference import cudnn_autotune

    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        torch.backends.cudnn.benchmark = False
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            with cudnn_autotune():
                assert not torch.backends.cudnn.benchmark
        with cudnn_autotune():
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def test_overlapping_cuda_runs_leave_the_autotuner_flag_as_the_caller_set_it():
    """Found by an audit (read, not run: no GPU here): run B starting after run A turned the
    flag on and ending after A restored it restored "on" and left it on."""
    import threading

    from napari_cvdm.inference import cudnn_autotune

    torch.backends.cudnn.benchmark = False
    a_started, b_started, a_done = threading.Event(), threading.Event(), threading.Event()

    def run_a():
        with cudnn_autotune():
            a_started.set()
            b_started.wait(5)
        a_done.set()

    def run_b():
        a_started.wait(5)
        with cudnn_autotune():
            b_started.set()
            a_done.wait(5)
            assert torch.backends.cudnn.benchmark  # still running: on

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert torch.backends.cudnn.benchmark is False
