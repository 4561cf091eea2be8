"""The TFDS `spelkebench` builder: prepared as array_record without TensorFlow, read back with
tfds.data_source and grain, equal to the h5 reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from spelke_jax.data import tfds_spelkebench  # noqa: E402  (registers the builder)
from spelke_jax.data.spelkebench import SpelkeBenchReader  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "assets" / "spelkebench_demo.h5"


def _check_equal(src, reader):
  keys = reader.keys()
  assert len(src) == len(keys)
  for i, key in enumerate(keys):      # shuffling disabled: index i is the i-th sorted key
    ex = src[i]
    want = reader[key]
    assert ex["key"] in (key, key.encode())
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (256, 256, 3)
    np.testing.assert_array_equal(ex["image"], want.image)
    np.testing.assert_array_equal(ex["segments"], want.segments.astype(np.uint8))
    assert ex["points"].dtype == np.int32
    np.testing.assert_array_equal(ex["points"], want.points)


def test_prepare_and_read_back_without_tensorflow(tmp_path):
  b = tfds_spelkebench.prepare(DEMO, tmp_path)
  assert b.info.splits["test"].num_examples == 6
  assert list((tmp_path / "spelkebench" / "1.0.0").glob("*.array_record*"))
  src = tfds.data_source("spelkebench", split="test", data_dir=tmp_path, download=False)
  reader = SpelkeBenchReader(DEMO)
  _check_equal(src, reader)
  grain = pytest.importorskip("grain")
  ds = grain.MapDataset.source(src).map(lambda e: int(e["points"].shape[0]))
  assert list(ds) == [len(reader[k].points) for k in reader.keys()]


def test_h5_from_env_var_and_builder_kwargs(tmp_path, monkeypatch):
  monkeypatch.setenv(tfds_spelkebench.ENV_VAR, str(DEMO))
  src = tfds.data_source("spelkebench", split="test", data_dir=tmp_path / "env")
  assert len(src) == 6
  monkeypatch.delenv(tfds_spelkebench.ENV_VAR)
  src = tfds.data_source("spelkebench", split="test", data_dir=tmp_path / "kw",
                         builder_kwargs={"h5_path": str(DEMO)})
  _check_equal(src, SpelkeBenchReader(DEMO))


def test_no_h5_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.delenv(tfds_spelkebench.ENV_VAR, raising=False)
  with pytest.raises(ValueError, match="no .h5 given.*SPELKEBENCH_H5"):
    tfds_spelkebench.Spelkebench(data_dir=str(tmp_path)).download_and_prepare()
  assert not list(tmp_path.rglob("*.array_record*"))


def test_wrong_image_size_is_rejected(tmp_path):
  from spelke_jax.data.spelkebench import Example, write_spelkebench_h5
  small = tmp_path / "small.h5"
  write_spelkebench_h5(small, [Example("k", np.zeros((8, 8, 3), np.uint8),
                                       np.ones((1, 8, 8), bool), np.array([[1, 1]]))])
  with pytest.raises(ValueError, match=r"group 'k': image is \(8, 8, 3\)"):
    tfds_spelkebench.prepare(small, tmp_path / "data")
