"""``make_reader``: the reader for a converter ``--format``."""
from __future__ import annotations

from data_pipelines.readers.common import _ValidatingReader
from data_pipelines.readers.numpy_reader import NumpyReader
from data_pipelines.readers.ptbxl_reader import PtbxlReader
from data_pipelines.readers.wfdb_reader import WfdbReader


_FORMATS = {"wfdb": WfdbReader, "mitbih": WfdbReader, "cinc": WfdbReader,
            "cinc2017": WfdbReader, "cinc2020": WfdbReader, "cinc2021": WfdbReader,
            "ptbxl": PtbxlReader, "numpy": NumpyReader, "npy": NumpyReader,
            "npz": NumpyReader, "hdf5": NumpyReader, "h5": NumpyReader}


def make_reader(format: str, input: str,  # pylint: disable=redefined-builtin
                labels: str | None = None, sampling_rate: float | None = None,
                **kw) -> _ValidatingReader:
  """Builds the reader for ``--format``; ``kw`` goes to its constructor.

  Useful ``kw``: min_duration_s / required_leads / allowed_leads / max_flat_leads (all
  readers, passed to validate), lead_map (wfdb, e.g. 'ECG=I' for CinC-2017), leads / gain
  / units / signal_key (numpy).
  """
  cls = _FORMATS.get(format.lower())
  if cls is None:
    raise ValueError(f"unknown format {format!r}; expected one of {sorted(_FORMATS)}")
  if cls is PtbxlReader:
    return PtbxlReader(input, labels, sampling_rate, **kw)
  return cls(input, labels, sampling_rate, **kw) if cls is WfdbReader else cls(
      input, sampling_rate, kw.pop("leads", None), labels, **kw)
