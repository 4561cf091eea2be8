"""evals/target_quality.py (tools/eisen_target_quality.py): scores targets against the scenes' ids."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from spelke_jax.data import pipeline
from spelke_jax.evals import target_quality as eisen_target_quality
from spelke_jax.evals.pair_errors import pair_errors
from spelke_jax.models import eisen
from spelke_jax.train import eisen as trainer
from spelke_jax.train import eisen_targets
from tests.train.test_eisen_train import _config


def test_agent_merges_counts_pairs_with_an_agent_pixel():
  t = np.array([[5, 5, 5, 5]])
  g = np.array([[1, 1, 2, 3]])
  valid = np.ones(t.shape, bool)
  assert eisen_target_quality.agent_merges(t, g, valid, 3) == pytest.approx(6 / 16)
  assert eisen_target_quality.agent_merges(t, g, valid, 0) == 0.0
  rng = np.random.default_rng(1)
  for _ in range(50):  # against the pairwise count
    t = rng.integers(0, 3, (5, 5))
    g = rng.integers(0, 4, (5, 5))
    valid = rng.random((5, 5)) < 0.8
    a, b = t[valid], g[valid]
    merged = (a[:, None] == a[None]) & (a[:, None] > 0) & (b[:, None] != b[None])
    with_agent = merged & ((b[:, None] == 2) | (b[None] == 2))
    want = with_agent.sum() / max(a.size, 1) ** 2
    assert eisen_target_quality.agent_merges(t, g, valid, 2) == pytest.approx(want)


def test_scores_match_a_direct_count(tmp_path):
  teacher = tmp_path / "round1"
  trainer.train(_config(num_steps=1, checkpoint_every=1), teacher)
  targets = dict(_config().targets.to_dict(), kind="explain_away", min_area=2, teacher_runs=1)
  config = _config(targets=targets, teacher=str(teacher))
  # min_overlap 10**6: no confident segment is a part, nothing is explained away.
  result = eisen_target_quality.target_quality(config, 5, 1, [2, 10 ** 6], ["nearest"])
  assert result["num_images"] == 8
  rows = result["targets"]
  motion = rows["motion segments (round 1)"]
  assert rows["explain away, min_overlap=1000000, unexplained=nearest"] == motion

  # The motion row by hand: the same inputs, key(0), pair errors over moving pixels.
  model = trainer.build_model(config)
  trainer.restore_weights(teacher, model, config)
  model.eval()
  batch = next(pipeline.make_synthetic_stream(5, 32, 8, num_batches=1))
  m, _ = eisen_targets.explain_away_inputs(model, batch, key=jax.random.key(0),
                                           config=config.targets)
  gt = np.asarray(eisen.nearest_resize_labels(batch["instance_ids"], *m.shape[1:]))
  errs = [(bool(batch["agent_id"][b] > 0), pair_errors(m[b], gt[b], m[b] > 0))
          for b in range(8) if (m[b] > 0).any()]
  for name, want in (("agent", True), ("other", False)):
    sel = [e for a, e in errs if a == want]
    assert motion[name]["images"] == len(sel)
    if sel:
      assert motion[name]["merge"] == pytest.approx(np.mean([e[0] for e in sel]))
      assert motion[name]["split"] == pytest.approx(np.mean([e[1] for e in sel]))
  if motion["agent"]["images"]:
    assert 0.0 <= motion["agent"]["merge_with_agent"] <= motion["agent"]["merge"] + 1e-12

  text = eisen_target_quality.markdown(result)
  data_rows = [l for l in text.splitlines() if l.startswith("| ")][1:]  # after the header
  assert len(data_rows) == 4 and data_rows[-1].startswith("| teacher's confident segments")
  with pytest.raises(ValueError, match="teacher"):
    eisen_target_quality.target_quality(_config(), 5, 1, [2], ["nearest"])
