"""ModelRef and the per-process model cache: references, hits, misses, changed files."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from napari_cvdm.model_cache import ModelRef, cache_info, clear_cache, load_cached


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_cache()
    yield
    clear_cache()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_file_reference_is_small_picklable_and_absolute(tiny_model_file):
    ref = ModelRef.of(tiny_model_file)
    assert os.path.isabs(ref.path) and ref.blob is None
    assert ref.sha256 == hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    again = pickle.loads(pickle.dumps(ref))
    assert again == ref and len(pickle.dumps(ref)) < 1000
    assert ModelRef.of(ref) is ref


def test_bundled_name_resolves_to_its_file():
    ref = ModelRef.of("demo")
    assert ref.path.endswith("demo.cvdm.safetensors") and ref.name == "demo"
    assert load_cached(ref).metadata["name"] == "demo"


def test_cache_hit_and_miss(tiny_model_file):
    ref = ModelRef.of(tiny_model_file)
    first = load_cached(ref)
    assert cache_info()["misses"] == 1 and cache_info()["hits"] == 0
    assert load_cached(pickle.loads(pickle.dumps(ref))) is first
    assert cache_info()["hits"] == 1 and cache_info()["cached"] == 1


def test_in_memory_model_travels_as_model_file_bytes(tiny_model):
    ref = ModelRef.of(tiny_model)
    assert ref.path is None and ref.blob[:8] and ref.sha256 == hashlib.sha256(ref.blob).hexdigest()
    loaded = load_cached(pickle.loads(pickle.dumps(ref)))
    assert loaded is not tiny_model and _same_weights(loaded, tiny_model)
    assert load_cached(ref) is loaded  # keyed by the bytes' hash


def test_changed_file_is_refused(tiny_model, tiny_model_file):
    from napari_cvdm import save_model

    ref = ModelRef.of(tiny_model_file)
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    save_model(tiny_model, tiny_model_file)
    os.utime(tiny_model_file, ns=(1, 1))  # a new modification time: the hash is recomputed
    with pytest.raises(ValueError, match="has changed"):
        load_cached(ref)


def test_damaged_blob_and_missing_file_are_refused(tiny_model, tmp_path):
    ref = ModelRef.of(tiny_model)
    with pytest.raises(ValueError, match="damaged"):
        load_cached(ModelRef(ref.sha256, None, ref.blob[:-1] + b" "))
    with pytest.raises(ValueError, match="not there"):
        load_cached(ModelRef("0" * 64, str(tmp_path / "gone.cvdm.safetensors")))
    with pytest.raises(ValueError, match="model must be"):
        ModelRef.of(3)


def test_lru_keeps_a_few_models(tiny_model):
    from napari_cvdm import model_cache

    refs = []
    for i in range(model_cache.MAX_CACHED + 1):
        with torch.no_grad():
            next(tiny_model.parameters()).add_(0.01 * (i + 1))
        refs.append(ModelRef.of(tiny_model))
        load_cached(refs[-1])
    assert cache_info()["cached"] == model_cache.MAX_CACHED
    load_cached(refs[0])  # evicted: loaded again
    assert cache_info()["misses"] == model_cache.MAX_CACHED + 2
