"""Process-0 metric writing: TensorBoard (tensorboardX, no TensorFlow) + metrics.jsonl.

Only the writing is gated on process 0; every process computes the same values, so no
collective ever depends on the process index.

The workdir may be a bucket (``gs://``). Object stores cannot append, so metrics.jsonl is
kept in memory (its earlier rows read back on resume) and uploaded whole at each write, and
the TensorBoard event file is written locally and uploaded every ``TB_SYNC_S`` seconds and at
close. (tensorboardX's own gs:// writer works against the emulator, but uploads the file
again from ``__del__`` at garbage collection, which blocks for minutes of retries at exit
when the store is unreachable.)
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Mapping

import jax
import numpy as np

from ecgjax import storage

TB_SYNC_S = 60.0  # bucket workdirs: upload the TensorBoard event file at most this often.


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      storage.makedirs(workdir)
      self._tb_dir = storage.join(workdir, "tb")
      self._tb_local = (tempfile.mkdtemp(prefix="ecgjax_tb_") if storage.is_remote(workdir)
                        else self._tb_dir)
      self._tb = SummaryWriter(self._tb_local)
      self._synced = time.time()
      self._jsonl = JsonlAppender(storage.join(workdir, "metrics.jsonl"))

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
    if time.time() - self._synced > TB_SYNC_S:
      self._sync_tb()

  def _sync_tb(self) -> None:
    """Uploads the local event files of a bucket workdir (whole; they are small)."""
    self._synced = time.time()
    if self._tb_local == self._tb_dir:
      return
    self._tb.flush()
    for rel in storage.walk_files(self._tb_local):
      storage.upload(os.path.join(self._tb_local, rel), storage.join(self._tb_dir, rel))

  def image(self, step: int, tag: str, png_path: str) -> None:
    if not self.enabled:
      return
    import matplotlib.image  # pylint: disable=g-import-not-at-top
    img = matplotlib.image.imread(io.BytesIO(storage.read_bytes(png_path)), format="png")
    self._tb.add_image(tag, np.asarray(img)[..., :3], step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._sync_tb()
      if self._tb_local != self._tb_dir:
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._jsonl.close()


class JsonlAppender:
  """Appends lines to a local file, or to an object (re-uploaded whole at each write)."""

  def __init__(self, path: str):
    self.path = path
    if storage.is_remote(path):
      self._file = None
      self._text = storage.read_text(path) if storage.exists(path) else ""
      if self._text and not self._text.endswith("\n"):
        self._text += "\n"
    else:
      self._file = open(path, "a")

  def write(self, line: str) -> None:
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
      return
    self._text += line
    storage.write_text(self.path, self._text)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def progress_line(step: int, total: int, m: Mapping[str, float], eta_s: float) -> str:
  keys = [k for k in ("loss", "mae", "nt_xent", "contrastive_acc", "grad_norm", "lr") if k in m]
  parts = [f"step {step}/{total}"] + [f"{k} {m[k]:.4g}" for k in keys]
  parts += [f"{m['samples_per_s']:.0f} samples/s", f"{m['step_time_s'] * 1e3:.0f} ms/step"]
  if "mfu" in m:
    parts.append(f"MFU {100 * m['mfu']:.1f}%")
  if m.get("bad_steps"):
    parts.append(f"bad_steps {int(m['bad_steps'])}")
  h, rem = divmod(int(eta_s), 3600)
  parts.append(f"ETA {h}:{rem // 60:02d}:{rem % 60:02d}")
  return " | ".join(parts)


def log(msg: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(msg, *args)
