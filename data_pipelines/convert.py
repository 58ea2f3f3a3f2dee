r"""Raw ECG archive -> validated, sharded TFRecords + spec.json.

  python -m data_pipelines.convert --format=ptbxl --input=../shared/data/ptbxl \
      --labels=../shared/data/ptbxl/ptbxl_labels.csv --output=/data/ptbxl_shards \
      --num_shards=16 --workers=8

Work is split into ``num_shards`` groups by item index (item i -> group i % num_shards), so
the record -> shard assignment is deterministic. Each group writes one file per split it
holds (``<split>.tfrecord-GGGGG-of-NNNNN``) through temp-then-rename, then a done marker
(``.groups/GGGGG.json``) with its counts, statistics and rejects. A re-run skips finished
groups, so a killed 1M-record conversion resumes where it stopped. Bad records never stop
the run: each becomes a line in ``rejects.jsonl`` with its id, source and reason.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import multiprocessing
import os
import sys
import time
from typing import Any, Iterable

import numpy as np
import tqdm

from data_pipelines import validate as validate_lib
from ecgjax.data import example, rpeaks, spec as spec_lib, tfrecord
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
  if args.format == "numpy" and args.leads:
    extra["leads"] = args.leads
  if args.format == "wfdb" and args.lead_map:
    extra["lead_map"] = args.lead_map
  reader = readers.make_reader(args.format, args.input, args.labels, args.sampling_rate, **extra)
  if getattr(args, "segment", None):
    from data_pipelines import segment  # pylint: disable=g-import-not-at-top
    if args.format != "wfdb":
      raise ValueError(f"--segment needs --format=wfdb (annotated records), got {args.format!r}")
    reader = segment.SegmentingReader(
        reader, args.segment, args.window_s, args.annotations, args.split_scheme,
        args.beat_offset_s, args.max_per_record, args.val_records, args.seed)
  return reader


def _fingerprint(args: argparse.Namespace) -> dict[str, Any]:
  keys = ("format", "input", "labels", "sampling_rate", "num_shards", "min_duration_s", "lead_map",
          "num_records", "seed", "duration_s")
  out = {k: getattr(args, k) for k in keys}
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
    record.r_peaks = rpeaks.detect_r_peaks(record.physical(), record.sampling_rate, record.leads)
  return record


def _read_records(reader, items: list[str], args: argparse.Namespace
                  ) -> Iterable[EcgRecord | Reject]:
  """Prepared records (or Rejects) of ``items``; a segmenting reader yields several per item."""
  for item in items:
    try:
      out = reader.read(item)
      out = out if isinstance(out, list) else [out]
      out = [_prepare(r, args) if isinstance(r, EcgRecord) else r for r in out]
    except Exception as e:  # pylint: disable=broad-except
      out = [Reject(str(item), str(item), f"{type(e).__name__}: {e}")]
    yield from out


def convert_group(reader, items: list[str], group: int, args: argparse.Namespace,
                  label_encoding: str, num_classes: int) -> dict[str, Any]:
  """Converts one group of items; returns (and persists) its done-marker summary."""
  marker = os.path.join(args.output, _GROUPS_DIR, f"{group:05d}.json")
  if os.path.exists(marker):
    with open(marker) as f:
      return json.load(f)
  writers: dict[str, tfrecord.TFRecordWriter] = {}
  counts, rates, rejects = collections.Counter(), collections.Counter(), []
  dtypes = collections.Counter()
  label_counts: dict[str, np.ndarray] = {}
  stats = _Stats()
  try:
    for rec in _read_records(reader, items, args):
      if isinstance(rec, Reject):
        rejects.append({"record_id": rec.record_id, "source": rec.source, "reason": rec.reason})
        continue
      split = rec.split or "train"
      if split not in writers:
        name = f"{split}.tfrecord-{group:05d}-of-{args.num_shards:05d}"
        writers[split] = tfrecord.TFRecordWriter(os.path.join(args.output, name))
      writers[split].write(example.encode(rec, label_encoding, num_classes))
      counts[split] += 1
      rates[str(float(rec.sampling_rate))] += 1
      dtypes[np.asarray(rec.signal).dtype.name] += 1
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
      "shards": [{"file": os.path.basename(w.path), "split": s, "records": counts[s]}
                 for s, w in sorted(writers.items())],
      "counts": dict(counts), "rates": dict(rates), "dtypes": dict(dtypes), "rejects": rejects,
      "label_counts": {k: v.tolist() for k, v in label_counts.items()},
      "lead_sums": stats.to_json(),
  }
  tmp = marker + f".tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(summary, f)
  os.replace(tmp, marker)
  return summary


def _run_group(job):
  return convert_group(*job)


def merge(summaries: Iterable[dict[str, Any]], reader, args, label_encoding) -> dict[str, Any]:
  splits, rates, label_counts = collections.Counter(), collections.Counter(), {}
  lead_sums = collections.defaultdict(lambda: np.zeros(3))
  shards, rejects, dtypes = [], [], set()
  for s in sorted(summaries, key=lambda s: s["group"]):
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
  with open(os.path.join(args.output, "rejects.jsonl"), "w") as f:
    for r in rejects:
      f.write(json.dumps(r) + "\n")
  by_reason = collections.Counter(r["reason"].split(":")[0].split(" in ")[0] for r in rejects)
  lead_order = _lead_order(lead_stats)
  return {
      "converter_version": spec_lib.CONVERTER_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "format": args.format, "source": os.path.abspath(args.input) if args.input else None,
      "args": _fingerprint(args),
      "units": "mV",
      "dtype_note": "signal feature = raw little-endian array of the per-record 'dtype' "
                    "feature, layout [leads, samples]; physical mV = signal / gain[lead]",
      "signal_dtypes": sorted(dtypes),
      "lead_order": lead_order,
      "sampling_rates": dict(rates),
      "splits": dict(splits),
      "num_records": int(sum(splits.values())),
      "label_names": list(reader.label_names),
      "label_encoding": label_encoding,
      "label_counts": {k: v.tolist() for k, v in label_counts.items()},
      "lead_stats": lead_stats,
      "shards": shards,
      "rejects": {"count": len(rejects), "by_reason": dict(by_reason), "file": "rejects.jsonl"},
      "reader_summary": reader.summary(),
  }


def _lead_order(lead_stats: dict[str, Any]) -> list[str]:
  from ecgjax.data.records import STANDARD_LEADS  # pylint: disable=g-import-not-at-top
  std = [l for l in STANDARD_LEADS if l in lead_stats]
  return std + sorted(l for l in lead_stats if l not in STANDARD_LEADS)


def _remove_stale_temps(output: str) -> None:
  """Deletes the ``*.tmp-PID`` files a killed run left (never renamed, so never valid)."""
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
  if args.format != "synthetic" and not (args.input and os.path.exists(args.input)):
    raise FileNotFoundError(f"--input={args.input!r} does not exist")
  if args.num_shards < 1:
    raise ValueError(f"--num_shards must be >= 1, got {args.num_shards}")
  os.makedirs(os.path.join(args.output, _GROUPS_DIR), exist_ok=True)
  fp_path = os.path.join(args.output, _GROUPS_DIR, "args.json")
  fingerprint = _fingerprint(args)
  if os.path.exists(fp_path):
    with open(fp_path) as f:
      previous = json.load(f)
    if previous != fingerprint:
      raise ValueError(f"{args.output} holds a conversion with other settings {previous}; "
                       "use a new --output directory")
  else:
    tmp = fp_path + f".tmp-{os.getpid()}"  # a kill mid-write must not block the re-run.
    with open(tmp, "w") as f:
      json.dump(fingerprint, f)
    os.replace(tmp, fp_path)
  _remove_stale_temps(args.output)
  reader = make_reader(args)
  items = reader.list_items()
  label_encoding = "multi_hot" if reader.label_type == "multi_hot" else "class_index"
  groups = [items[g::args.num_shards] for g in range(args.num_shards)]
  return reader, groups, label_encoding, len(reader.label_names)


def convert(args: argparse.Namespace) -> dict[str, Any]:
  """Runs a (resumable) conversion and returns the written spec."""
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
    with ctx.Pool(args.workers) as pool:
      for s in pool.imap_unordered(_run_group, jobs):
        summaries.append(s)
        bar.update(sum(s["counts"].values()) + len(s["rejects"]))
  else:
    for job in jobs:
      summaries.append(_run_group(job))
      bar.update(sum(summaries[-1]["counts"].values()) + len(summaries[-1]["rejects"]))
  bar.close()
  spec = merge(summaries, reader, args, label_encoding)
  elapsed = time.time() - start
  spec["conversion"] = {"seconds": round(elapsed, 2),
                        "records_per_s": round(len(items) / max(elapsed, 1e-9), 1),
                        "workers": args.workers}
  spec_lib.write(args.output, spec)
  logging.info("wrote %d records (%s), %d rejects in %.1fs (%.0f rec/s) -> %s",
               spec["num_records"], spec["splits"], spec["rejects"]["count"], elapsed,
               len(items) / max(elapsed, 1e-9), args.output)
  return spec


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--input", default=None, help="archive path (not needed for synthetic)")
  p.add_argument("--output", required=True, help="directory for shards + spec.json")
  p.add_argument("--labels", default=None, help="labels CSV (ptbxl / wfdb REFERENCE.csv)")
  p.add_argument("--sampling_rate", type=float, default=None,
                 help="expected rate in Hz: records at another rate are rejected")
  p.add_argument("--num_shards", type=int, default=16)
  p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
  p.add_argument("--min_duration_s", type=float, default=2.0)
  p.add_argument("--leads", type=lambda s: tuple(s.split(",")), default=None,
                 help="numpy format: comma-separated lead names")
  p.add_argument("--lead_map", default=None,
                 help="wfdb: rename source leads, e.g. 'ECG=I' for single-lead CinC-2017")
  p.add_argument("--num_records", type=int, default=2000, help="synthetic: records")
  p.add_argument("--duration_s", type=float, default=10.0, help="synthetic: seconds each")
  p.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
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
  return p


def main(argv: list[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  args = build_parser().parse_args(argv)
  spec = convert(args)
  print(json.dumps({"records": spec["num_records"], "splits": spec["splits"],
                    "rejects": spec["rejects"], "records_per_s":
                        spec["conversion"]["records_per_s"]}, indent=1))


if __name__ == "__main__":
  main()
