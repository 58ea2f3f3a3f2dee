"""The in-memory record every converter produces and every shard stores.

One type crosses the boundary between raw-format readers (``data_pipelines``) and the
shard writer, so readers never know about TFRecord and the writer never knows about WFDB.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Canonical 12-lead order used by models and exports.
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

_LEAD_ALIASES = {name.upper(): name for name in STANDARD_LEADS}
# Holter/ambulatory names that are the same electrode configuration as a standard lead.
_LEAD_ALIASES.update({"MLII": "II", "MLI": "I", "MLIII": "III", "ML2": "II", "ML1": "I"})


def canonical_lead(name: str) -> str:
  """Maps a source lead name ('AVR', 'MLII', ' v1') to its canonical spelling.

  Unknown names are returned stripped but otherwise unchanged so that they can be stored
  and reported; the input pipeline rejects them only if the model asks for them.
  """
  key = name.strip().upper()
  return _LEAD_ALIASES.get(key, name.strip())


@dataclasses.dataclass
class EcgRecord:
  """One recording, as read from a raw archive.

  Attributes:
    record_id: stable id, unique within a dataset (e.g. '100', '00001', 'E07500').
    signal: [leads, samples]. Integer dtypes are digital units (physical = signal / gain);
      float dtypes are already in mV (gain must then be all ones).
    sampling_rate: Hz.
    leads: lead names in canonical spelling, one per row of ``signal``.
    gain: [leads] digital units per mV.
    labels: class indices into the dataset's label vocabulary (multi-label: every positive
      class; multi-class: exactly one index).
    split: 'train', 'val', 'test' or '' when the source defines no split.
    r_peaks: sample indices of detected R peaks, sorted; None until detection ran.
    patient_id: the patient the record comes from, '' when the source does not say
      (the converter then groups splits by record_id).
    metadata: free-form string fields kept in the rejects/summary (not stored in shards).
  """

  record_id: str
  signal: np.ndarray
  sampling_rate: float
  leads: tuple[str, ...]
  gain: np.ndarray
  labels: Sequence[int] = ()
  split: str = ""
  r_peaks: np.ndarray | None = None
  patient_id: str = ""
  metadata: dict[str, str] = dataclasses.field(default_factory=dict)

  def physical(self) -> np.ndarray:
    """Signal in mV as float32, [leads, samples]."""
    return (self.signal.astype(np.float32) / self.gain.astype(np.float32)[:, None])

  @property
  def num_samples(self) -> int:
    return int(self.signal.shape[1])

  @property
  def duration_s(self) -> float:
    return self.num_samples / float(self.sampling_rate)


@dataclasses.dataclass(frozen=True)
class Reject:
  """A record a converter could not use, with the reason; written to rejects.jsonl."""

  record_id: str
  source: str
  reason: str
