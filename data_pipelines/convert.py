r"""Raw ECG archive -> validated, sharded TFRecords + spec.json.

  python -m data_pipelines.convert --format=ptbxl --input=../shared/data/ptbxl \
      --labels=../shared/data/ptbxl/ptbxl_labels.csv --output=/data/ptbxl_shards \
      --num_shards=16 --workers=8

Work is split into ``num_shards`` groups by item index (item i -> group i % num_shards), so
the record -> shard assignment is deterministic. Each group writes one file per split it
holds (``<split>.tfrecord-GGGGG-of-NNNNN``, its offset index in ``index/``, so the
``<split>.tfrecord-*`` glob matches shards only) through temp-then-rename, then a done marker
(``.groups/GGGGG.json``) with its counts, statistics and rejects. A re-run skips finished
groups, so a killed 1M-record conversion resumes where it stopped. Bad records never stop
the run: each becomes a line in ``rejects.jsonl`` with its id, source and reason.

Records whose source gives no split get a seeded, patient-wise one (``--split_seed``,
``--split_fractions``; :mod:`data_pipelines.splits`); ``spec.json:split_origin`` says which
happened. ``--records`` converts only the listed record ids (e.g. MIT-BIH DS1).

``--output`` may be a bucket (``gs://bucket/shards``, any fsspec URL; :mod:`ecgjax.storage`).
Every file is then written straight to it, one whole object at a time: a shard is spooled to
a local temporary file and uploaded on close (its index first), the done markers and the
small JSON files are single uploads, and spec.json is the last object written, so a
directory without one is unfinished. This route, rather than a staging directory uploaded at
the end, keeps the per-group resume (the markers live in the bucket), needs local disk for
only the shards being written, and lets Beam workers on other machines write their groups.
``--input`` (one .npy/.npz/.h5 file, ``--format=numpy``) and ``--labels`` may be in a bucket
too: they are copied to a temporary directory for the run (with the input's sidecar JSON).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import posixpath
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tqdm

from data_pipelines import splits as splits_lib
from data_pipelines import validate as validate_lib
from ecgjax import cli
from ecgjax import storage
from ecgjax.data import spec as spec_lib
from ecgjax.data.records import EcgRecord, Reject

FORMATS = ("wfdb", "ptbxl", "numpy", "synthetic")
_GROUPS_DIR = ".groups"
_SEGMENT_KEYS = ("segment", "window_s", "annotations", "split_scheme", "beat_offset_s",
                 "max_per_record", "val_records")


def make_reader(args: argparse.Namespace):
  if args.format == "synthetic":
    from data_pipelines.synthetic_reader import SyntheticReader  # pylint: disable=g-import-not-at-top
    return SyntheticReader(num_records=args.num_records, seed=args.seed,
                           sampling_rate=args.sampling_rate or 500.0,
                           duration_s=args.duration_s)
  from data_pipelines import readers  # pylint: disable=g-import-not-at-top
  extra = {"min_duration_s": args.min_duration_s}
  if args.leads:
    extra["leads"] = args.leads
  if args.format == "numpy":
    extra.update({k: getattr(args, k) for k in ("units", "layout") if getattr(args, k, None)})
  if args.format == "wfdb" and args.lead_map:
    extra["lead_map"] = args.lead_map
  reader = readers.make_reader(args.format, _local(args, "input"), _local(args, "labels"),
                               args.sampling_rate, **extra)
  if getattr(args, "segment", None):
    from data_pipelines import segment  # pylint: disable=g-import-not-at-top
    if args.format != "wfdb":
      raise ValueError(f"--segment needs --format=wfdb (annotated records), got {args.format!r}")
    reader = segment.SegmentingReader(
        reader, args.segment, args.window_s, args.annotations, args.split_scheme,
        args.beat_offset_s, args.max_per_record, args.val_records, args.seed)
  return reader


def _local(args: argparse.Namespace, flag: str) -> str | None:
  """The local copy of a bucket's --input / --labels (:func:`local_inputs`), else the flag."""
  return getattr(args, f"{flag}_local", None) or getattr(args, flag)


@contextlib.contextmanager
def local_inputs(args: argparse.Namespace) -> Iterator[argparse.Namespace]:
  """``args`` whose --input / --labels in a bucket are copied to a temporary directory.

  The readers open local files (np.load's memory map, h5py), so only a single numpy/HDF5
  file (and its sidecar ``<input>.json`` / ``<stem>.json``) is read from a bucket; the flags
  keep their URLs, so the resume fingerprint and spec.json name the bucket.
  """
  remote = [k for k in ("input", "labels") if storage.is_remote(getattr(args, k) or "")]
  if not remote:
    yield args
    return
  if "input" in remote and (args.format != "numpy" or storage.isdir(args.input)):
    raise ValueError(f"--input={args.input}: from a bucket only one .npy/.npz/.h5 file "
                     f"(--format=numpy) is read; copy {args.format} archives to a local disk")
  tmp = tempfile.mkdtemp(prefix="ecgjax_convert_input_")
  try:
    out = argparse.Namespace(**vars(args))
    for flag in remote:
      url = getattr(args, flag)
      if not storage.isfile(url):
        raise FileNotFoundError(f"--{flag}={url} does not exist")
      sidecars = (url + ".json", posixpath.splitext(url)[0] + ".json") if flag == "input" else ()
      for src in (url, *(s for s in sidecars if storage.isfile(s))):
        storage.download(src, os.path.join(tmp, storage.basename(src)))
      setattr(out, f"{flag}_local", os.path.join(tmp, storage.basename(url)))
    yield out
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _fingerprint(args: argparse.Namespace) -> dict[str, Any]:
  keys = ("format", "input", "labels", "sampling_rate", "num_shards", "min_duration_s", "lead_map",
          "num_records", "seed", "duration_s", "records", "split_seed", "split_fractions")
  out = {k: getattr(args, k, None) for k in keys}
  # Later flags enter the fingerprint only when set, so older outputs still resume.
  for k in ("leads", "units", "layout"):
    if getattr(args, k, None):
      out[k] = list(getattr(args, k)) if k == "leads" else getattr(args, k)
  if getattr(args, "segment", None):  # segmentation flags (data_pipelines/segment.py).
    out.update({k: getattr(args, k) for k in _SEGMENT_KEYS})
  return out


class _Stats:
  """Streaming per-lead sums (float64) for mean/std in mV."""

  def __init__(self):
    self.sums = collections.defaultdict(lambda: np.zeros(3))

  def add(self, record: EcgRecord) -> None:
    x = record.physical().astype(np.float64)
    for lead, row in zip(record.leads, x):
      self.sums[lead] += (row.size, row.sum(), np.square(row).sum())

  def to_json(self) -> dict[str, list[float]]:
    return {k: v.tolist() for k, v in self.sums.items()}


def _prepare(record: EcgRecord, args: argparse.Namespace) -> EcgRecord | Reject:
  reason = validate_lib.validate(record, min_duration_s=args.min_duration_s,
                                 expected_rate=args.sampling_rate)
  if reason:
    return Reject(record.record_id, record.metadata.get("source", ""), reason)
  if record.r_peaks is None:
    from ecgjax.data import rpeaks  # pylint: disable=g-import-not-at-top  (scipy: seconds)
    record.r_peaks = rpeaks.detect_r_peaks(record.physical(), record.sampling_rate, record.leads)
  return record


def _read_records(reader, items: list[str], args: argparse.Namespace,
                  progress: Callable[[int], None]) -> Iterable[EcgRecord | Reject]:
  """Prepared records (or Rejects) of ``items``; a segmenting reader yields several per item.

  ``progress(1)`` runs once per item read.
  """
  for item in items:
    try:
      out = reader.read(item)
      out = out if isinstance(out, list) else [out]
      out = [_prepare(r, args) if isinstance(r, EcgRecord) else r for r in out]
    except Exception as e:  # pylint: disable=broad-except
      out = [Reject(str(item), str(item), f"{type(e).__name__}: {e}")]
    progress(1)
    yield from out


def convert_group(reader, items: list[str], group: int, args: argparse.Namespace,
                  label_encoding: str, num_classes: int,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Converts one group of items; returns (and persists) its done-marker summary.

  ``progress(n)`` is called after every record (n=1), or once with the group's size
  when a finished group is skipped, so a progress bar moves per record.
  """
  progress = progress or _worker_progress
  marker = storage.join(args.output, _GROUPS_DIR, f"{group:05d}.json")
  if storage.exists(marker):
    summary = json.loads(storage.read_text(marker))
    progress(len(items))
    return summary
  # Imported here, not at the top: a flag error is reported before TF protos and scipy load.
  from ecgjax.data import example, tfrecord  # pylint: disable=g-import-not-at-top
  writers: dict[str, tfrecord.TFRecordWriter] = {}
  counts, rates, rejects = collections.Counter(), collections.Counter(), []
  split_sources = collections.Counter()
  fractions = splits_lib.parse_fractions(args.split_fractions)
  dtypes, flat, flat_records = collections.Counter(), collections.Counter(), 0
  label_counts: dict[str, np.ndarray] = {}
  stats = _Stats()
  try:
    for rec in _read_records(reader, items, args, progress):
      if isinstance(rec, Reject):
        rejects.append({"record_id": rec.record_id, "source": rec.source, "reason": rec.reason})
        continue
      split = rec.split
      split_sources["source" if split else "assigned"] += 1
      if not split:
        split = rec.split = splits_lib.hashed_split(
            splits_lib.patient_key(rec.patient_id, rec.record_id), args.split_seed, fractions)
      if split not in writers:
        name = f"{split}.tfrecord-{group:05d}-of-{args.num_shards:05d}"
        writers[split] = tfrecord.TFRecordWriter(storage.join(args.output, name))
      writers[split].write(example.encode(rec, label_encoding, num_classes))
      counts[split] += 1
      rates[str(float(rec.sampling_rate))] += 1
      dtypes[np.asarray(rec.signal).dtype.name] += 1
      if rec.metadata.get("flat_leads"):
        flat_records += 1
        flat.update(rec.metadata["flat_leads"].split(","))
      hot = np.zeros(num_classes, np.int64)
      hot[list(rec.labels)] = 1
      label_counts[split] = label_counts.get(split, 0) + hot
      stats.add(rec)
    for w in writers.values():
      w.close()
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  summary = {
      "group": group,
      "shards": [{"file": storage.basename(w.path), "split": s, "records": counts[s]}
                 for s, w in sorted(writers.items())],
      "counts": dict(counts), "rates": dict(rates), "dtypes": dict(dtypes), "rejects": rejects,
      "split_sources": dict(split_sources),
      "flat_leads": {"records": flat_records, "by_lead": dict(flat)},
      "label_counts": {k: v.tolist() for k, v in label_counts.items()},
      "lead_sums": stats.to_json(),
  }
  storage.write_text(marker, json.dumps(summary))  # atomic: temp + rename, or one upload.
  return summary


# Per-record progress from spawn workers: a shared counter the parent polls.
_COUNTER = None


def _init_worker(counter) -> None:
  global _COUNTER
  _COUNTER = counter


def _worker_progress(n: int) -> None:
  if _COUNTER is not None:
    with _COUNTER.get_lock():
      _COUNTER.value += n


def _run_group(job):
  return convert_group(*job)


def merge(summaries: Iterable[dict[str, Any]], reader, args, label_encoding) -> dict[str, Any]:
  splits, rates, label_counts = collections.Counter(), collections.Counter(), {}
  lead_sums = collections.defaultdict(lambda: np.zeros(3))
  shards, rejects, dtypes, flat, flat_records = [], [], set(), collections.Counter(), 0
  split_sources = collections.Counter()
  for s in sorted(summaries, key=lambda s: s["group"]):
    split_sources.update(s.get("split_sources", {}))
    flat_records += s.get("flat_leads", {}).get("records", 0)
    flat.update(s.get("flat_leads", {}).get("by_lead", {}))
    shards += s["shards"]
    # Group markers from before dtypes were recorded: assume any stored dtype.
    dtypes |= set(s.get("dtypes", ("int16", "int32", "float32")))
    rejects += s["rejects"]
    splits.update(s["counts"])
    rates.update(s["rates"])
    for k, v in s["label_counts"].items():
      label_counts[k] = label_counts.get(k, 0) + np.asarray(v)
    for k, v in s["lead_sums"].items():
      lead_sums[k] += np.asarray(v)
  lead_stats = {}
  for lead, (n, s1, s2) in lead_sums.items():
    mean = s1 / max(n, 1)
    lead_stats[lead] = {"mean": mean, "std": float(np.sqrt(max(s2 / max(n, 1) - mean**2, 0.0))),
                        "count": int(n)}
  storage.write_text(storage.join(args.output, "rejects.jsonl"),
                     "".join(json.dumps(r) + "\n" for r in rejects))
  by_reason = collections.Counter(r["reason"].split(":")[0].split(" in ")[0] for r in rejects)
  lead_order = _lead_order(lead_stats)
  return {
      "converter_version": spec_lib.CONVERTER_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "format": args.format, "source": storage.abspath(args.input) if args.input else None,
      "args": _fingerprint(args),
      "units": "mV",
      "dtype_note": "signal feature = raw little-endian array of the per-record 'dtype' "
                    "feature, layout [leads, samples]; physical mV = signal / gain[lead]",
      "signal_dtypes": sorted(dtypes),
      "lead_order": lead_order,
      "sampling_rates": dict(rates),
      "splits": dict(splits),
      **_split_origin(split_sources, args),
      "num_records": int(sum(splits.values())),
      "label_names": list(reader.label_names),
      "label_encoding": label_encoding,
      "label_counts": {k: v.tolist() for k, v in label_counts.items()},
      "lead_stats": lead_stats,
      "shards": shards,
      "rejects": {"count": len(rejects), "by_reason": dict(by_reason), "file": "rejects.jsonl"},
      # Flat leads were dropped (absent, masked downstream), not stored as zeros.
      "flat_leads": {"records": int(flat_records),
                     "by_lead": {l: int(flat[l]) for l in _lead_order(flat)}},
      "reader_summary": reader.summary(),
  }


def _split_origin(split_sources: collections.Counter, args) -> dict[str, Any]:
  """spec.json's account of where each record's split came from."""
  assigned, given = split_sources["assigned"], split_sources["source"]
  origin = "source" if not assigned else ("assigned" if not given else "mixed")
  out: dict[str, Any] = {"split_origin": origin,
                         "split_counts_by_origin": {"source": given, "assigned": assigned}}
  if assigned:
    fractions = splits_lib.parse_fractions(args.split_fractions)
    out["split_assignment"] = {"method": splits_lib.describe(args.split_seed, fractions),
                               "seed": int(args.split_seed), "fractions": list(fractions)}
  return out


def _lead_order(lead_stats: dict[str, Any]) -> list[str]:
  from ecgjax.data.records import STANDARD_LEADS  # pylint: disable=g-import-not-at-top
  std = [l for l in STANDARD_LEADS if l in lead_stats]
  return std + sorted(l for l in lead_stats if l not in STANDARD_LEADS)


def _remove_stale_temps(output: str) -> None:
  """Deletes the ``*.tmp-PID`` files a killed run left (never renamed, so never valid).

  A bucket never holds any: its objects are uploaded whole.
  """
  if storage.is_remote(output):
    return
  for d in (output, os.path.join(output, _GROUPS_DIR)):
    for name in os.listdir(d):
      if ".tmp-" in name:
        logging.info("removing %s left by an interrupted conversion", name)
        os.remove(os.path.join(d, name))


def plan(args: argparse.Namespace):
  """Checks arguments, records them in the output dir, and splits the work into groups.

  Returns (reader, groups of items, label_encoding, num_classes). Shared by the local
  runner below and the Beam runner (data_pipelines.beam_convert).
  """
  if args.format not in FORMATS:
    raise ValueError(f"--format={args.format!r}; expected one of {FORMATS}")
  for flag in ("input", "labels"):
    if storage.is_remote(getattr(args, flag) or "") and not getattr(args, f"{flag}_local", None):
      raise ValueError(f"--{flag}={getattr(args, flag)}: read from a bucket by convert.convert "
                       "only (one numpy/HDF5 file); this runner needs a local or mounted path")
  if args.format != "synthetic" and not (args.input and os.path.exists(_local(args, "input"))):
    raise FileNotFoundError(f"--input={args.input!r} does not exist")
  if args.num_shards < 1:
    raise ValueError(f"--num_shards={args.num_shards}: must be >= 1")
  if args.workers < 1:
    raise ValueError(f"--workers={args.workers}: must be >= 1")
  if args.sampling_rate is not None and not args.sampling_rate > 0:
    raise ValueError(f"--sampling_rate={args.sampling_rate:g}: must be > 0 Hz (the rate of "
                     "the input data)")
  if args.leads and args.format == "synthetic":
    raise ValueError("--leads: the synthetic generator names its own leads")
  # The reader checks its flags and indexes the input before anything is written, so a
  # typo leaves no half-made output directory behind.
  splits_lib.parse_fractions(args.split_fractions)
  reader = make_reader(args)
  items = select_records(reader, reader.list_items(), args.records)
  if not items:
    raise ValueError(f"--input={args.input}: no {args.format} records found")
  storage.makedirs(storage.join(args.output, _GROUPS_DIR))
  fp_path = storage.join(args.output, _GROUPS_DIR, "args.json")
  fingerprint = _fingerprint(args)
  if storage.exists(fp_path):
    previous = json.loads(storage.read_text(fp_path))
    if previous != fingerprint:
      raise ValueError(f"--output={args.output} holds a conversion with other settings "
                       f"{previous}; use a new --output directory")
  else:  # atomic: a kill mid-write must not block the re-run.
    storage.write_text(fp_path, json.dumps(fingerprint))
  _remove_stale_temps(args.output)
  label_encoding = "multi_hot" if reader.label_type == "multi_hot" else "class_index"
  groups = [items[g::args.num_shards] for g in range(args.num_shards)]
  return reader, groups, label_encoding, len(reader.label_names)


def select_records(reader, items: list[str], records: str | None) -> list[str]:
  """The items whose record id (or item path) is in the comma-separated ``--records``."""
  if not records:
    return items
  wanted = [r.strip() for r in records.split(",") if r.strip()]
  if not wanted:
    raise ValueError(f"--records={records!r} names no record")
  record_id = getattr(reader, "_record_id", lambda item: item)
  chosen = [i for i in items if i in wanted or record_id(i) in wanted]
  found = set(chosen) | {record_id(i) for i in chosen}
  missing = [r for r in wanted if r not in found]
  if missing:
    raise ValueError(f"--records: {missing} not found in {_input_name(reader)}")
  return chosen


def _input_name(reader) -> str:
  return str(getattr(reader, "input_dir", None) or getattr(reader, "input_path", "the input"))


def convert(args: argparse.Namespace) -> dict[str, Any]:
  """Runs a (resumable) conversion and returns the written spec."""
  with local_inputs(args) as local_args:
    return _convert(local_args)


def _convert(args: argparse.Namespace) -> dict[str, Any]:
  reader, groups, label_encoding, num_classes = plan(args)
  items = [i for g in groups for i in g]
  jobs = [(reader, g_items, g, args, label_encoding, num_classes)
          for g, g_items in enumerate(groups)]
  start = time.time()
  summaries = []
  bar = tqdm.tqdm(total=len(items), unit="rec", desc=f"convert {args.format}",
                  disable=args.quiet, file=sys.stderr)
  if args.workers > 1:
    # spawn: safe even when the caller (main.py's demo) already initialised JAX.
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(counter,)) as pool:
      results = pool.imap_unordered(_run_group, jobs)
      while len(summaries) < len(jobs):
        try:
          summaries.append(results.next(timeout=0.25))
        except multiprocessing.TimeoutError:
          pass
        bar.update(counter.value - bar.n)
  else:
    for job in jobs:
      summaries.append(convert_group(*job, progress=bar.update))
  bar.update(len(items) - bar.n)
  bar.close()
  spec = merge(summaries, reader, args, label_encoding)
  elapsed = time.time() - start
  if spec["num_records"] == 0:
    reasons = ", ".join(f"{k}: {v}" for k, v in spec["rejects"]["by_reason"].items())
    example = ""
    if spec["rejects"]["count"]:
      first = next(r for s in summaries for r in s["rejects"])
      example = f"; e.g. {first['record_id']}: {first['reason']}"
    raise cli.EmptyOutputError(
        f"0 of {len(items)} records converted ({reasons}{example}); no spec.json written, "
        f"see {storage.join(args.output, 'rejects.jsonl')}")
  spec["conversion"] = {"seconds": round(elapsed, 2),
                        "records_per_s": round(len(items) / max(elapsed, 1e-9), 1),
                        "workers": args.workers}
  spec["warnings"] = amplitude_warnings(spec)
  for w in spec["warnings"]:
    logging.warning("%s", w)
  spec_lib.write(args.output, spec)
  logging.info("wrote %d records (%s), %d rejects in %.1fs (%.0f rec/s) -> %s",
               spec["num_records"], spec["splits"], spec["rejects"]["count"], elapsed,
               len(items) / max(elapsed, 1e-9), args.output)
  if spec["flat_leads"]["records"]:
    logging.info("%d records had flat leads, stored as absent: %s",
                 spec["flat_leads"]["records"], spec["flat_leads"]["by_lead"])
  return spec


def amplitude_warnings(spec: dict[str, Any]) -> list[str]:
  """A warning when the reference lead's std (mV) is implausible, naming the likely unit.

  The reference is lead II when present (the usual rhythm lead), else the first stored
  lead; one lead is enough, since a unit mistake affects every lead alike.
  """
  stats = spec["lead_stats"]
  if not stats:
    return []
  lead = "II" if "II" in stats else spec["lead_order"][0]
  std = float(stats[lead]["std"])
  hint = validate_lib.amplitude_hint(std)
  if not hint:
    return []
  return [f"lead {lead} std is {std:.4g} \"mV\" over {spec['num_records']} records, "
          f"implausible for an ECG: {hint} (--units for --format=numpy, or the archive's "
          "gain/units)"]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--input", default=None, help="archive path (not needed for synthetic)")
  p.add_argument("--output", required=True, help="directory for shards + spec.json")
  p.add_argument("--labels", default=None, help="labels CSV (ptbxl / wfdb REFERENCE.csv)")
  p.add_argument("--sampling_rate", type=float, default=None,
                 help="the rate of the input data in Hz. Needed for numpy input without a "
                      "sidecar; for WFDB it must match the headers (a mismatch is an error, "
                      "never a filter); for PTB-XL it picks records100/records500; for "
                      "synthetic it is the generated rate. Resampling to the model's rate "
                      "happens in the input pipeline, not here")
  p.add_argument("--num_shards", type=int, default=16)
  p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
  p.add_argument("--min_duration_s", type=float, default=2.0)
  p.add_argument("--leads", type=lambda s: tuple(x for x in s.split(",") if x.strip()),
                 default=None,
                 help="lead names of the channels by position (any format), replacing the "
                      "file's names, e.g. --leads=II,V1 for a Holter record whose channels "
                      "are both called 'ECG'")
  p.add_argument("--lead_map", default=None,
                 help="wfdb: rename source leads by name, e.g. 'ECG=I' for single-lead "
                      "CinC-2017")
  p.add_argument("--units", default=None, help="numpy: unit of the values (mV, uV or V; "
                 "default mV or the sidecar's)")
  p.add_argument("--layout", default=None, choices=("NCT", "NTC"),
                 help="numpy: array layout [records, leads, samples] (NCT) or "
                      "[records, samples, leads] (NTC), when the lead count does not tell")
  p.add_argument("--num_records", type=int, default=2000, help="synthetic: records")
  p.add_argument("--duration_s", type=float, default=10.0, help="synthetic: seconds each")
  p.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
  p.add_argument("--records", default=None,
                 help="comma-separated record ids to convert (others are left out), e.g. "
                      "MIT-BIH DS1: 101,106,108,...")
  p.add_argument("--split_seed", type=int, default=0,
                 help="seed of the patient-wise split given to records with no source split")
  p.add_argument("--split_fractions", default="0.8,0.1,0.1",
                 help="train,val,test fractions of that split ('1,0,0': all train)")
  p.add_argument("--segment", default=None, choices=("beats", "windows"),
                 help="wfdb + annotations: cut records into beat or rhythm-window examples "
                      "(data_pipelines/segment.py)")
  p.add_argument("--window_s", type=float, default=None,
                 help="--segment: example length in s (default 5 for beats, 10 for windows)")
  p.add_argument("--annotations", default="atr", help="--segment: annotation file extension")
  p.add_argument("--beat_offset_s", type=float, default=1.0,
                 help="--segment=beats: the beat sits this long after the example start")
  p.add_argument("--split_scheme", default="none", choices=("none", "mitbih_inter_patient"),
                 help="--segment: mitbih_inter_patient = de Chazal DS1 train/val, DS2 test")
  p.add_argument("--val_records", type=int, default=4,
                 help="--split_scheme=mitbih_inter_patient: DS1 records (seeded) held out as val")
  p.add_argument("--max_per_record", type=int, default=0,
                 help="--segment: keep at most this many examples per record (seeded; 0 = all)")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--verbose", action="store_true",
                 help="full tracebacks for usage errors (default: one line)")
  return p


def main(argv: list[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  cli.setup_logging()
  spec = cli.run("convert", lambda: convert(args), args.verbose)
  print(json.dumps({"records": spec["num_records"], "splits": spec["splits"],
                    "rejects": spec["rejects"], "records_per_s":
                        spec["conversion"]["records_per_s"]}, indent=1))


if __name__ == "__main__":
  main()
