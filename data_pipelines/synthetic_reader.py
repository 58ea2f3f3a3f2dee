"""Reader over the generated ECG set, so the embedded default goes through the same converter."""
from __future__ import annotations

import numpy as np

from ecgjax.data import synthetic
from ecgjax.data.records import STANDARD_LEADS, EcgRecord

_GAIN = 1000.0  # adu per mV, as PTB-XL / CinC store it.


class SyntheticReader:
  """Record ``i`` is a pure function of (seed, i): any worker can make any record."""

  label_type = "class_index"
  label_names = tuple(synthetic.CLASS_NAMES)

  def __init__(self, num_records: int = 2000, seed: int = 0, sampling_rate: float = 500.0,
               duration_s: float = 10.0):
    self.num_records = int(num_records)
    self.seed = int(seed)
    self.sampling_rate = float(sampling_rate or 500.0)
    self.duration_s = float(duration_s)

  def list_items(self) -> list[str]:
    return [str(i) for i in range(self.num_records)]

  def read(self, item: str) -> EcgRecord:
    i = int(item)
    rng = np.random.default_rng([self.seed, i])
    cls = i % len(self.label_names)
    signal, r_peaks = synthetic.generate_record(rng, cls, self.sampling_rate, self.duration_s)
    # 80/10/10 split by index, interleaved so every split sees every class.
    split = {8: "val", 9: "test"}.get((i // len(self.label_names)) % 10, "train")
    digital = np.clip(np.round(signal * _GAIN), -32768, 32767).astype(np.int16)
    return EcgRecord(record_id=f"syn{i:06d}", signal=digital, sampling_rate=self.sampling_rate,
                     leads=STANDARD_LEADS, gain=np.full(len(STANDARD_LEADS), _GAIN, np.float32),
                     labels=[cls], split=split, r_peaks=np.asarray(r_peaks, np.int64),
                     metadata={"class": self.label_names[cls]})

  def summary(self) -> dict:
    return {"generated": self.num_records, "seed": self.seed}
