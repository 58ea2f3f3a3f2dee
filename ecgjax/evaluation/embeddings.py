"""Probe inputs: frozen-encoder embeddings of each split (cached), splits, label fractions.

Embeddings come from the input pipeline's eval mode (one deterministic window per record,
``pipeline.make_eval_dataset``) with the encoder's own rate, leads, window and
normalisation, so the probe sees exactly what the encoder was trained on. They are cached
as ``CACHE_DIR/<split>-<hash>.npz``; the hash covers the encoder (source, step, weights
file), the window and the shard directory, so probes with other fractions, L2 grids or
seeds reuse them.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import sys
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ecgjax import storage
from ecgjax.data import example
from ecgjax.data import pipeline
from ecgjax.data import windows
from ecgjax.inference import encoder as encoder_lib

CACHE_VERSION = 2  # 2: record and patient ids stored beside the embeddings.


def cache_key(enc: encoder_lib.Encoder, data_path: str, spec: dict[str, Any], split: str,
              skip_corrupt: bool) -> dict[str, Any]:
  w = enc.window
  return {
      "version": CACHE_VERSION, "encoder": enc.identity, "split": split,
      "window": {"leads": list(w.leads), "sampling_rate": w.sampling_rate,
                 "window_samples": w.window_samples, "pre_r_s": w.pre_r_s,
                 "normalize": w.normalize,
                 "lead_stats": None if w.lead_stats is None else w.lead_stats.tolist()},
      "data": {"path": storage.abspath(data_path), "created": spec.get("created"),
               "records": spec.get("splits", {}).get(split), "skip_corrupt": bool(skip_corrupt)},
  }


def cache_path(cache_dir: str, key: dict[str, Any]) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return storage.join(cache_dir, f"{key['split']}-{digest}.npz")


def _eval_data_config(enc: encoder_lib.Encoder, data_cfg) -> ml_collections.ConfigDict:
  """A data config for the pipeline's eval mode with the encoder's window, in mV.

  Normalisation is applied afterwards with the encoder's own statistics ('dataset' mode
  must use the pretraining set's lead stats, not the probe set's).
  """
  w = enc.window
  return ml_collections.ConfigDict({
      "path": data_cfg.path, "leads": list(w.leads), "sampling_rate": w.sampling_rate,
      "window_s": w.window_samples / w.sampling_rate, "pre_r_s": w.pre_r_s,
      "stretch": (1.0, 1.0), "normalize": "none",
      "skip_corrupt": bool(data_cfg.get("skip_corrupt", False))})


def normalize_windows(x: np.ndarray, mask: np.ndarray, window: pipeline.WindowConfig) -> np.ndarray:
  """Applies the encoder's normalisation (and its lead stats) to [B, L, T] mV windows."""
  return np.asarray(windows.normalize(jnp.asarray(x), jnp.asarray(mask), window.normalize,
                                      window.lead_stats))


def embed_split(enc: encoder_lib.Encoder, embedder: encoder_lib.BatchEmbedder, data_cfg,
                split: str, cache_dir: str, num_threads: int = 4) -> dict[str, Any]:
  """{'x': [N, 2D], 'y': [N, C] float32, 'record_id', 'patient_id' [N] str, 'cached', 'file',
  'seconds'}; patient_id is '' where the shards do not know it."""
  from ecgjax.data import spec as spec_lib  # pylint: disable=g-import-not-at-top
  spec = spec_lib.load(data_cfg.path)
  skip = bool(data_cfg.get("skip_corrupt", False))
  key = cache_key(enc, data_cfg.path, spec, split, skip)
  path = cache_path(cache_dir, key)
  if cache_dir and storage.exists(path):
    with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as z:
      if json.loads(str(z["key"])) == json.loads(json.dumps(key)):
        logging.info("embeddings of %r from cache %s", split, path)
        return {"x": z["x"], "y": z["y"], "record_id": z["record_id"],
                "patient_id": z["patient_id"], "cached": True, "file": path, "seconds": 0.0}
  start = time.time()
  ds, source = pipeline.make_eval_dataset(_eval_data_config(enc, data_cfg), split,
                                          batch_size=embedder.batch_size)
  window = enc.window
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, int(num_threads)),
                                            prefetch_buffer_size=max(2, 2 * int(num_threads))))
  chunks, labels = [], []
  bar = tqdm.tqdm(total=len(source), unit="rec", desc=f"embed {split}", file=sys.stderr,
                  disable=jax.process_index() != 0, mininterval=2.0)
  for batch in it:
    mask = np.asarray(batch["lead_mask"], bool)
    x = normalize_windows(np.array(batch["view1"], np.float32), mask, window)
    chunks.append(embedder(x, mask))
    labels.append(np.asarray(batch["label"], np.float32))
    bar.update(x.shape[0])
  bar.close()
  x = encoder_lib.gather(chunks)
  y = np.concatenate(labels) if labels else np.zeros((0, len(spec["label_names"])), np.float32)
  record_id, patient_id = record_identities(source)
  if record_id.size != x.shape[0]:
    raise RuntimeError(f"{source!r}: {x.shape[0]} embeddings but {record_id.size} readable "
                       "records; the shards changed while embedding")
  seconds = time.time() - start
  logging.info("embedded %d %r records in %.1fs (%.0f rec/s)", x.shape[0], split, seconds,
               x.shape[0] / max(seconds, 1e-9))
  if cache_dir and jax.process_index() == 0:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, record_id=record_id, patient_id=patient_id,
             key=np.asarray(json.dumps(key)))
    storage.write_bytes(path, buf.getvalue())
  return {"x": x, "y": y, "record_id": record_id, "patient_id": patient_id, "cached": False,
          "file": path, "seconds": seconds}


def record_identities(source) -> tuple[np.ndarray, np.ndarray]:
  """(record_id, patient_id) [N] str of a source's readable records, in storage order.

  The eval pipeline keeps storage order and drops only records skipped as corrupt, so
  these line up with the embeddings. Only the small fields are parsed (no signal copy).
  """
  rids, pids = [], []
  for i in range(len(source)):
    data = source[i]
    if data is None:
      continue
    rec = example.decode_view(data)
    rids.append(rec["record_id"])
    pids.append(rec["patient_id"])
  return np.asarray(rids, dtype=str), np.asarray(pids, dtype=str)


def split_groups(data_path: str, split: str, skip_corrupt: bool = False) -> np.ndarray:
  """The patient group key (:func:`patient_groups`) of every readable record of a split."""
  from ecgjax.data.source import ShardedSource  # pylint: disable=g-import-not-at-top
  return patient_groups(*record_identities(ShardedSource(data_path, split, skip_corrupt)))


def shared_groups(groups: dict[str, np.ndarray]) -> dict[str, int]:
  """Patients (or records without one) found in two splits: 0 everywhere means no leak."""
  keys = list(groups)
  return {f"{a}/{b}": int(np.intersect1d(groups[a], groups[b]).size)
          for i, a in enumerate(keys) for b in keys[i + 1:]}


def patient_groups(record_id: np.ndarray, patient_id: np.ndarray) -> np.ndarray:
  """One group key per record: its patient, or the record itself when unknown."""
  return np.where(np.asarray(patient_id) != "", np.char.add("patient:", patient_id),
                  np.char.add("record:", record_id))


# ------------------------------------------------------------------------------ splits
def strata(y: np.ndarray) -> np.ndarray:
  """One stratum per record: its rarest positive class, or C for records with none."""
  y = np.asarray(y) > 0
  counts = y.sum(0).astype(np.float64)
  if y.shape[0] == 0:
    return np.zeros(0, np.int64)
  rarity = np.where(y, counts[None], np.inf)
  return np.where(y.any(1), rarity.argmin(1), y.shape[1]).astype(np.int64)


def stratified_holdout(y: np.ndarray, fractions: tuple[float, ...], seed: int,
                       groups: np.ndarray | None = None) -> list[np.ndarray]:
  """Seeded split of records into len(fractions) held-out parts plus the rest.

  With ``groups`` (one key per record, e.g. :func:`patient_groups`) whole groups move
  together, so no patient is in two parts; a group's labels are the union of its records'.
  Each stratum (see :func:`strata`) of groups contributes round(f * n) groups to each
  part, so held-out parts keep the class mix. Without groups each record is its own.
  Returns sorted record index arrays [part_0, ..., rest].
  """
  y = np.asarray(y) > 0
  if groups is None:
    inverse, group_y = np.arange(y.shape[0]), y
  else:
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    group_y = np.zeros((int(inverse.max(initial=-1)) + 1, y.shape[1]), bool)
    np.logical_or.at(group_y, inverse, y)
  rng = np.random.default_rng(seed)
  s = strata(group_y)
  part_of = np.full(group_y.shape[0], len(fractions), np.int64)
  for stratum in np.unique(s):
    members = rng.permutation(np.flatnonzero(s == stratum))
    at = 0
    for p, f in enumerate(fractions):
      k = int(round(f * members.size))
      part_of[members[at:at + k]] = p
      at += k
  record_part = part_of[inverse]
  return [np.flatnonzero(record_part == p) for p in range(len(fractions) + 1)]


def label_fraction_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a seeded, class-stratified ``fraction`` of the train records.

  Every stratum keeps ceil(fraction * n) >= 1 records, and every class with a positive in
  ``y`` keeps at least one positive. One seeded permutation serves all fractions, so the
  subsets are (up to that guarantee) nested: 1% inside 10% inside 100%.
  """
  y = np.asarray(y) > 0
  n = y.shape[0]
  if fraction >= 1.0:
    return np.arange(n)
  perm = np.random.default_rng(seed).permutation(n)
  s = strata(y)[perm]
  chosen = set()
  for stratum in np.unique(s):
    members = perm[s == stratum]
    chosen.update(members[:max(1, math.ceil(fraction * members.size))].tolist())
  for c in range(y.shape[1]):
    pos = perm[y[perm, c]]
    if pos.size and not any(int(i) in chosen for i in pos):
      chosen.add(int(pos[0]))
  return np.sort(np.asarray(sorted(chosen), np.int64))


def class_counts(y: np.ndarray, label_names: list[str]) -> dict[str, int]:
  return {name: int(v) for name, v in zip(label_names, (np.asarray(y) > 0).sum(0))}
