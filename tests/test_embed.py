"""Embedding API and CLI: same features as the training encoder, lead handling, errors."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ecgjax
from ecgjax.data import example, pipeline
from ecgjax.data.records import STANDARD_LEADS
from ecgjax.inference import embed as embed_cli
from ecgjax.inference import export
from tests.trained_run import shared_trained_run


# The encoder itself, jitted (eager op-by-op dispatch is slow on CPU).
_model_embed = nnx.jit(lambda model, x, mask: model.embed(x, mask))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_shards) -> str:
  return shared_trained_run(tmp_path_factory, synthetic_shards)


@pytest.fixture(scope="module")
def pretrained(trained_run):
  return ecgjax.load_pretrained(os.path.join(trained_run, "export"), batch_size=8)


def _records(shards, split="test", n=6):
  from ecgjax.data.source import ShardedSource  # pylint: disable=g-import-not-at-top
  source = ShardedSource(shards, split)
  recs = [example.decode(source[i]) for i in range(n)]
  signals = np.stack([r["signal"].astype(np.float32) / r["gain"][:, None] for r in recs])
  return recs, signals


def test_matches_training_encoder_on_pipeline_eval_batch(pretrained, trained_run,
                                                         synthetic_shards):
  model, _ = export.load_model(os.path.join(trained_run, "export"))
  data_cfg = export.load_train_config(trained_run).data
  data_cfg.path = synthetic_shards
  ds, _ = pipeline.make_eval_dataset(data_cfg, "test", batch_size=6)
  batch = ds[0]
  want = np.asarray(_model_embed(model, jnp.asarray(batch["view1"]),
                                 jnp.asarray(batch["lead_mask"])))
  recs, signals = _records(synthetic_shards)
  got = pretrained.embed(signals, recs[0]["sampling_rate"], recs[0]["leads"],
                         r_peaks=[r["r_peaks"] for r in recs])
  assert got.shape == (6, pretrained.embedding_dim) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_reordered_leads_and_lead_subsets(pretrained, synthetic_shards):
  recs, signals = _records(synthetic_shards, n=3)
  rate = recs[0]["sampling_rate"]
  full = pretrained.embed(signals, rate, STANDARD_LEADS, mode="first")
  perm = np.random.default_rng(0).permutation(12)
  shuffled = pretrained.embed(signals[:, perm], rate, [STANDARD_LEADS[i] for i in perm],
                              mode="first")
  np.testing.assert_allclose(shuffled, full, atol=1e-6)
  # Aliases / case are accepted.
  upper = pretrained.embed(signals, rate, [l.upper() for l in STANDARD_LEADS], mode="first")
  np.testing.assert_allclose(upper, full, atol=1e-6)

  subset = ("II", "V5", "I")
  rows = [STANDARD_LEADS.index(l) for l in subset]
  part = pretrained.embed(signals[:, rows], rate, subset, mode="first")
  assert np.isfinite(part).all() and not np.allclose(part, full, atol=1e-3)
  # Equals the encoder on the full windows with the other leads masked out.
  wins = np.stack([pretrained.windows(s, rate, STANDARD_LEADS, "first")[0][0] for s in signals])
  mask = np.isin(np.asarray(STANDARD_LEADS), subset)[None].repeat(3, 0)
  direct = np.asarray(_model_embed(pretrained.encoder.model, jnp.asarray(wins),
                                   jnp.asarray(mask)))
  np.testing.assert_allclose(part, direct, atol=1e-5)


def test_shapes_rates_and_modes(pretrained, synthetic_shards):
  recs, signals = _records(synthetic_shards, n=2)
  one = pretrained.embed(signals[0], 250.0, STANDARD_LEADS)
  assert one.shape == (1, pretrained.embedding_dim)
  # Records of different lengths and rates in one call; 'mean' over several windows.
  short = signals[1][:, :1500]
  at_500 = np.repeat(signals[0], 2, axis=1)  # same signal, sample-and-hold at 500 Hz.
  out = pretrained.embed([signals[0], short, at_500], [250.0, 250.0, 500.0], STANDARD_LEADS,
                         mode="mean")
  assert out.shape == (3, pretrained.embedding_dim) and np.isfinite(out).all()
  cos = out[0] @ out[2] / np.linalg.norm(out[0]) / np.linalg.norm(out[2])
  assert cos > 0.9, cos
  n_win = pretrained.windows(signals[0], 250.0, STANDARD_LEADS, "mean")[0].shape[0]
  assert n_win == 5  # 10 s record, 2 s windows.


def test_rejects_bad_input_clearly(pretrained, synthetic_shards):
  _, signals = _records(synthetic_shards, n=3)
  with pytest.raises(ValueError, match=r"unknown lead name\(s\) \['V7'\]"):
    pretrained.embed(signals[:, :2], 250.0, ("I", "V7"))
  with pytest.raises(ValueError, match="duplicate lead"):
    pretrained.embed(signals[:, :2], 250.0, ("I", "I"))
  bad = signals.copy()
  bad[1, 3, 77] = np.nan
  with pytest.raises(ValueError, match=r"record 1: 1 NaN/inf value\(s\), first in lead aVR at "
                                       r"sample 77"):
    pretrained.embed(bad, 250.0, STANDARD_LEADS)
  with pytest.raises(ValueError, match=r"record 2: 400 samples at 250 Hz .* shorter than the "
                                       r"model's 2 s window \(500 samples"):
    pretrained.embed([signals[0], signals[1], signals[2][:, :400]], 250.0, STANDARD_LEADS)
  with pytest.raises(ValueError, match="expected \\[12 leads, samples\\]"):
    pretrained.embed(signals[:, :5], 250.0, STANDARD_LEADS)
  with pytest.raises(ValueError, match="mode="):
    pretrained.embed(signals, 250.0, STANDARD_LEADS, mode="middle")


def test_cli_numpy_and_shards(pretrained, trained_run, synthetic_shards, tmp_path):
  recs, signals = _records(synthetic_shards, n=4)
  np.save(tmp_path / "x.npy", signals[:, :6])
  out = tmp_path / "emb.npz"
  export_dir = os.path.join(trained_run, "export")
  embed_cli.main([f"--model={export_dir}", f"--input={tmp_path / 'x.npy'}", f"--output={out}",
                  "--sampling_rate=250", "--leads=I,II,III,aVR,aVL,aVF", "--mode=first",
                  "--quiet"])
  z = np.load(out)
  want = pretrained.embed(signals[:, :6], 250.0, STANDARD_LEADS[:6], mode="first")
  np.testing.assert_allclose(z["embeddings"], want, atol=1e-5)
  assert list(z["record_ids"]) == ["0000", "0001", "0002", "0003"]

  embed_cli.main([f"--model={export_dir}", f"--input={synthetic_shards}", f"--output={out}",
                  "--splits=test", "--quiet"])
  z = np.load(out)
  assert z["embeddings"].shape == (24, pretrained.embedding_dim)
  assert list(z["label_names"])[0] == "normal_sinus" and z["labels"].shape == (24, 6)
  assert set(z["splits"]) == {"test"} and z["record_ids"][0] == recs[0]["record_id"]
  want = pretrained.embed(signals, 250.0, STANDARD_LEADS, r_peaks=[r["r_peaks"] for r in recs])
  np.testing.assert_allclose(z["embeddings"][:4], want, atol=1e-5)
