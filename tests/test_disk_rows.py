"""`DiskRows`: shards of .npy files read from disk as one array, checked against NumPy's own concatenation."""
import pickle

import numpy as np
import pytest

from mbt_core.data.disk_rows import DiskRows, save_rows


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 3, 2, 4, 4, 3), dtype=np.uint8) for n in (5, 0, 2)]
    paths = [tmp_path / f"shard_{i}.frames.npy" for i in range(3)]
    for path, part in zip(paths, parts):
        save_rows(path, part)
    return paths, np.concatenate(parts)


def test_rows_views_and_slices_equal_the_concatenated_arrays(shards):
    paths, want = shards
    rows = DiskRows(paths)
    assert rows.shape == want.shape and len(rows) == 7 and rows.dtype == np.uint8
    for i in range(-7, 7):
        np.testing.assert_array_equal(rows[i], want[i])
        for v in range(3):
            np.testing.assert_array_equal(rows[i, v], want[i, v])
            np.testing.assert_array_equal(rows[i, v, :, 1:3, 0:2], want[i, v, :, 1:3, 0:2])
    np.testing.assert_array_equal(rows[2:6], want[2:6])
    np.testing.assert_array_equal(np.asarray(rows), want)
    rows[0][...] = 0  # a read is a private copy: the file is not changed through it
    np.testing.assert_array_equal(rows[0], want[0])
    with pytest.raises(IndexError):
        rows[7]


def test_pickled_rows_carry_file_names_not_data(shards):
    paths, want = shards
    blob = pickle.dumps(DiskRows(paths))
    assert len(blob) < 1000 < want.nbytes
    np.testing.assert_array_equal(pickle.loads(blob)[6, 2], want[6, 2])


def test_a_truncated_shard_is_named(shards):
    paths, _ = shards
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-10])
    with pytest.raises(OSError, match="shard_2.frames.npy: truncated"):
        DiskRows(paths)[6, 2]
