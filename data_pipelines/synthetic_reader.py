"""Reader over the generated ECG set, so the embedded default goes through the same converter."""
from __future__ import annotations

from ecgjax.data import synthetic
from ecgjax.data.records import EcgRecord


class SyntheticReader:
  """Item i -> ``synthetic.make_record(i, seed)``: deterministic and worker-independent."""

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
    return synthetic.make_record(int(item), self.seed, self.sampling_rate, self.duration_s)

  def summary(self) -> dict:
    return {"generated": self.num_records, "seed": self.seed}
