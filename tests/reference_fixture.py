"""An export + real records + ecgjax's embeddings, for the no-JAX reference-loader test.

  python -m tests.reference_fixture OUT_DIR     # main venv (JAX): writes OUT_DIR/export, cases.npz

CI makes it with the main venv, then ``tests/test_reference_loader.py`` checks in a venv
without JAX that ``ecgjax_reference.numpy_encoder`` reproduces the embeddings. The weights
are a random init (parity does not depend on training); the records are real (PTB-XL at
100 Hz, CinC 2021 at 500 Hz, a lead subset), so resampling up and down, R-peak windows,
several windows per record and masked leads are all exercised.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from tests.conftest import SHARED_DATA, micro_config

CASES_FILE = "cases.npz"
PTBXL = ("records100/00000/00001_lr", "records100/00000/00010_lr", "records100/01000/01500_lr")
CINC = ("E07500", "HR06000", "JS20000")


def records() -> list[tuple[str, np.ndarray, float, list[str]]]:
  """(name, signal [leads, samples] mV, rate, lead names) of the real records used."""
  import wfdb  # pylint: disable=g-import-not-at-top
  out = []
  for rel in PTBXL:
    r = wfdb.rdrecord(str(SHARED_DATA / "ptbxl" / rel))
    out.append((rel, r.p_signal.T, float(r.fs), list(r.sig_name)))
  for rel in CINC:
    r = wfdb.rdrecord(str(SHARED_DATA / "cinc2021_samples" / rel))
    out.append((rel, r.p_signal.T, float(r.fs), list(r.sig_name)))
  name, sig, fs, leads = out[-1]
  out.append((name + ":II,V1,V5", sig[[1, 6, 10]], fs, ["II", "V1", "V5"]))
  return out


def make_export(out_dir: str, normalize: str = "record", include_heads: bool = False) -> str:
  """A float32 random-init export of the micro architecture at 250 Hz."""
  from ecgjax import state as state_lib  # pylint: disable=g-import-not-at-top
  from ecgjax.inference import encoder, export  # pylint: disable=g-import-not-at-top
  cfg = micro_config("")
  model = encoder.random_init(state_lib.model_config(cfg), seed=1)
  meta = export.export_config(cfg, 0, out_dir, "random", include_heads)
  if normalize == "dataset":  # made-up per-lead statistics in the spec's layout.
    meta["normalize"] = "dataset"
    meta["lead_stats"] = {l: {"mean": 0.01 * i, "std": 0.1 + 0.02 * i}
                          for i, l in enumerate(cfg.data.leads)}
  elif normalize != "record":
    meta["normalize"] = normalize
  return export.write(out_dir, model, meta, run_dir="")


def make(out_dir: str) -> str:
  """OUT/export + OUT/cases.npz (inputs, modes and ecgjax's embeddings)."""
  import ecgjax  # pylint: disable=g-import-not-at-top
  from ecgjax.data import rpeaks  # pylint: disable=g-import-not-at-top
  export_dir = make_export(os.path.join(out_dir, "export"))
  model = ecgjax.load_pretrained(export_dir)
  arrays: dict[str, np.ndarray] = {}
  k = 0
  for name, sig, fs, leads in records():
    peaks = rpeaks.detect_r_peaks(sig.astype(np.float32), fs, leads)
    for mode in ("rpeak", "first", "mean"):
      emb = model.embed(sig, fs, leads, mode=mode, r_peaks=[peaks] if mode == "rpeak" else None)
      arrays.update({f"{k}/signal": sig, f"{k}/fs": np.float64(fs), f"{k}/leads": np.array(leads),
                     f"{k}/r_peaks": peaks, f"{k}/mode": np.array(mode),
                     f"{k}/name": np.array(name), f"{k}/expected": emb[0]})
      k += 1
  np.savez(os.path.join(out_dir, CASES_FILE), num_cases=k, **arrays)
  return out_dir


def load_cases(out_dir: str) -> list[dict[str, object]]:
  with np.load(os.path.join(out_dir, CASES_FILE)) as z:
    return [{"signal": z[f"{k}/signal"], "fs": float(z[f"{k}/fs"]),
             "leads": [str(l) for l in z[f"{k}/leads"]], "r_peaks": z[f"{k}/r_peaks"],
             "mode": str(z[f"{k}/mode"]), "name": str(z[f"{k}/name"]),
             "expected": z[f"{k}/expected"]} for k in range(int(z["num_cases"]))]


if __name__ == "__main__":
  print(make(sys.argv[1]))
