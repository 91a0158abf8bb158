"""featurize's on-disk cache: written batch by batch, read back memory-mapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.features.store import SplitWriter, load_split, open_array, read_paths, write_split
from abcd.training.inputs import load_features


def test_writer_fills_views_and_eval_view_in_order_and_readers_memory_map(tmp_path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 3, 5)).astype(np.float32)  # 2 augmented views + the eval view last
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    paths = [f"img/{i}.jpg" for i in range(7)]
    writer = SplitWriter(tmp_path, "train", paths, (2, 5), eval_view=True)
    for start in range(0, 7, 3):
        writer.add(feats[start : start + 3], labels[start : start + 3])
    writer.close()
    split = load_split(tmp_path, "train")
    assert isinstance(split["features"], np.memmap) and isinstance(split["eval_features"], np.memmap)
    np.testing.assert_array_equal(split["features"], feats[:, :2])
    np.testing.assert_array_equal(split["eval_features"], feats[:, 2])
    np.testing.assert_array_equal(split["labels"], labels)
    assert read_paths(tmp_path, "train") == paths
    x, y = load_features(tmp_path, "train", ["a", "b", "c", "d"])
    assert torch.equal(x, torch.from_numpy(feats[:, :2])) and y.dtype == torch.int64
    x[0] = 0  # copy-on-write: the tensor is writable, the file is not changed
    np.testing.assert_array_equal(np.load(tmp_path / "train" / "features.npy"), feats[:, :2])


def test_writer_refuses_a_short_split_and_readers_name_what_is_missing(tmp_path) -> None:
    writer = SplitWriter(tmp_path, "val", ["a", "b"], (4,), eval_view=False)
    writer.add(np.zeros((1, 4), np.float32), np.zeros(1))
    with pytest.raises(RuntimeError, match="1 of 2 images"):
        writer.close()
    with pytest.raises(MissingFileError, match=r"test .*dvc repro featurize"):
        open_array(tmp_path, "test", "features")
    write_split(tmp_path, "val", np.zeros((2, 4)), [0, 5], ["a", "b"])
    with pytest.raises(InvalidFileError, match="no eval_features"):
        open_array(tmp_path, "val", "eval_features")
    with pytest.raises(InvalidFileError, match=r"labels outside 0\.\.3"):
        load_features(tmp_path, "val", ["a", "b", "c", "d"])
