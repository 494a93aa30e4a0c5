"""Random corruption of a shard yields only the documented outcomes.

Documented outcomes (docs/io.md): under ``on_error="skip"`` the dataset opens
with ``ShardWarning``s naming path and byte offset, and each sample either
reads back exactly or raises ``CorruptSampleError`` naming path and offset;
fewer samples than written only ever comes with a reported problem.  Under
``"raise"`` the dataset either opens or raises ``ShardError``.  Nothing else:
no other exception, no hang, no silently wrong sample where a CRC is known.
"""
import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivit.io import CorruptSampleError, Loader, ShardDataset, ShardError, ShardWarning
from io_support import image, write_shards

N = 4


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_shards(str(root / "s-%06d.tar"), N, N)
    path = root / "s-000000.tar"
    return path.read_bytes(), (root / "s-000000.tar.idx").read_bytes()


corruption = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("zero_block"), st.floats(0, 1, exclude_max=True), st.just(0)),
)


def _corrupt(data, kind, where, value):
    pos = int(where * len(data))
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ value]) + data[pos + 1:], pos
    if kind == "truncate":
        return data[:pos], pos
    pos -= pos % 512
    return data[:pos] + bytes(512) + data[pos + 512:], pos


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corruption, st.booleans())
def test_random_corruption_has_only_documented_outcomes(original, damage, with_sidecar):
    data, sidecar = original
    bad, pos = _corrupt(data, *damage)
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "s-000000.tar")
        with open(path, "wb") as f:
            f.write(bad)
        if with_sidecar:
            with open(path + ".idx", "wb") as f:
                f.write(sidecar)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = ShardDataset(path)
        assert all(issubclass(w.category, ShardWarning) and path in str(w.message)
                   and "byte" in str(w.message) for w in caught)
        assert len(caught) == len(ds.problems)
        if len(ds) < N:
            assert ds.problems, "samples lost without a report"
        verified = with_sidecar and len(bad) == len(data)   # CRCs in use
        for i in range(len(ds)):
            entry = ds._entries[i]
            j = int(entry["key"])
            try:
                img, label = ds[i]
            except CorruptSampleError as e:
                assert e.path == path and f"{path}: byte" in str(e)
                continue
            if verified or not entry["offset"] <= pos < entry["end"]:
                np.testing.assert_array_equal(img, image(j))
                assert label == j % 3
        if len(ds) >= 2:   # the loader finishes an epoch under skip: no hang
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ShardWarning)
                with Loader(ds, 2, image_size=8, prefetch=1, num_threads=1) as ld:
                    assert len(list(ld.epoch_iter())) == len(ds) // 2
        try:
            ShardDataset(path, on_error="raise")
        except ShardError as e:
            assert e.path == path
        else:
            assert not ds.problems
