"""Raw-archive readers: WFDB trees, PTB-XL and NumPy/HDF5 arrays -> validated EcgRecords.

Every reader has the same small interface so the converter can treat formats alike:

  * ``label_names`` / ``label_type`` ('multi_hot' or 'class_index'): known right after
    construction, so the dataset spec can be written before any signal is read.
  * ``list_items()``: sorted work items (strings). Sorted and derived only from the file
    system and label tables, so the item -> shard assignment is reproducible.
  * ``read(item)``: an ``EcgRecord`` that passed ``validate.validate``, or a ``Reject``
    with the reason. It never raises: one broken file must not stop a 1M-record run.
  * ``summary()``: counts found while indexing (e.g. labelled records without a signal).
    Only construction-time counts: reads happen in worker processes, whose state is lost.

Readers hold plain attributes only (tables are built in ``__init__``; open file handles
are dropped on pickling), so they can be shipped to ``spawn`` worker processes.

Signals stay in the archive's digital units when it has them (lossless: int16 when the
baseline-subtracted values fit, else int32, with ``gain`` in adu/mV); float archives
become float32 mV with gain 1. No resampling, filtering or lead reordering happens here;
a flat lead is dropped (absent, so masked downstream) and named in
``metadata['flat_leads']``. ``leads=`` renames the channels by position (any format), and
``sampling_rate`` is always the rate of the input data, never a filter.
"""
# pylint: disable=unused-import
from data_pipelines.readers.common import (_CSV_HEADER_IDS, _MAX_REASON, _SPLIT_ALIASES,
                                           _UNITS_TO_MV, _ValidatingReader, _digital_dtype,
                                           _exception_reason, _fold_to_split, _lead_names,
                                           _normalise_split, _parse_lead_map, _parse_leads,
                                           _short, encode_labels, read_label_csv)
from data_pipelines.readers.factory import _FORMATS, make_reader
from data_pipelines.readers.numpy_reader import NumpyReader, _h5_datasets
from data_pipelines.readers.ptbxl_reader import PTBXL_SUPERCLASSES, PtbxlReader
from data_pipelines.readers.wfdb_reader import (_COMMENT_KV_RE, _DX_RE, WfdbReader, _read_wfdb,
                                                _scan_header)

__all__ = ["PTBXL_SUPERCLASSES", "NumpyReader", "PtbxlReader", "WfdbReader", "encode_labels",
           "make_reader", "read_label_csv"]
