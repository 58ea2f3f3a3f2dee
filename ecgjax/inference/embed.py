r"""Embed ECG records with a pretrained encoder: WFDB / numpy / shards -> embeddings.npz.

  python -m ecgjax.embed --model=EXPORT_DIR --input=../shared/data/cinc2021_samples \
      --output=emb.npz
  python -m ecgjax.embed --model=EXPORT_DIR --input=x.npy --sampling_rate=500 \
      --leads=I,II,V1 --output=emb.npz --mode=mean
  python -m ecgjax.embed --model=EXPORT_DIR --input=SHARDS_DIR --splits=test --output=emb.npz

Input kind: a directory with spec.json (converted shards; stored R peaks, labels and
splits are used), a directory tree of WFDB records (.hea), or .npy / .npz / .h5 (or a
directory of per-record .npy) read with ``data_pipelines.readers`` (sidecar JSON or
--sampling_rate/--leads). Records that cannot be embedded (unreadable, unknown leads,
NaNs, shorter than the window) are skipped and listed in the output with the reason.

Output .npz: embeddings [N, D] float32, record_ids [N], splits [N], labels [N, C] and
label_names (when the input has labels), rejected_ids / rejected_reasons, mode, and
model (the export config as JSON).

--model, --input and --output may be bucket URLs (``gs://...``): shards are read in place
(ranged reads), WFDB / numpy input is copied to a temporary directory first (with its
sidecar JSON), and the .npz is uploaded whole.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from typing import Any, Iterator

import numpy as np
import tqdm

from ecgjax import storage

# pretrained.MODES, repeated so that flag errors come before JAX and Flax are imported
# (seconds on a small machine); tests/test_fail_loudly.py checks the two agree.
MODES = ("rpeak", "first", "mean")


def input_kind(path: str) -> str:
  if storage.isfile(storage.join(path, "spec.json")):
    return "shards"
  if storage.isdir(path):
    if any(f.endswith(".hea") for f in storage.walk_files(path)):
      return "wfdb"
    return "numpy"  # a directory of per-record .npy files.
  if os.path.splitext(path)[1].lower() in (".npy", ".npz", ".h5", ".hdf5", ".hdf"):
    return "numpy"
  raise ValueError(f"--input={path!r}: expected a shard directory (spec.json), a WFDB "
                   "directory, or a .npy/.npz/.h5 file")


def _shard_records(path: str, splits: list[str] | None) -> tuple[Iterator[dict[str, Any]], int,
                                                                  list[str]]:
  from ecgjax.data import example  # pylint: disable=g-import-not-at-top
  from ecgjax.data import spec as spec_lib  # pylint: disable=g-import-not-at-top
  from ecgjax.data.source import ShardedSource  # pylint: disable=g-import-not-at-top
  spec = spec_lib.load(path)
  names = splits or sorted(k for k, v in spec["splits"].items() if int(v) > 0)
  sources = [ShardedSource(path, s) for s in names]
  label_names = list(spec["label_names"])
  encoding = spec["label_encoding"]

  def gen():
    for source in sources:
      for i in range(len(source)):
        rec = example.decode(source[i])
        hot = np.zeros(len(label_names), np.float32)
        if encoding == "multi_hot":
          hot[:] = rec["label"]
        else:
          hot[rec["label"]] = 1.0
        yield {"signal": rec["signal"].astype(np.float32) / rec["gain"][:, None],
               "sampling_rate": rec["sampling_rate"], "leads": rec["leads"],
               "r_peaks": rec["r_peaks"], "record_id": rec["record_id"],
               "split": source.split, "label": hot}

  return gen(), sum(len(s) for s in sources), label_names


@contextlib.contextmanager
def local_input(path: str) -> Iterator[str]:
  """``path``, or for a URL a local copy: the whole directory, or the file with its sidecar
  JSON (``<file>.json`` / ``<stem>.json``), under the same name (the readers find sidecars
  by name)."""
  if not storage.is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="ecgjax_embed_") as tmp:
    name = storage.basename(path)
    local = os.path.join(tmp, name)
    if storage.isdir(path):
      files = [(storage.join(path, f), os.path.join(local, f)) for f in storage.walk_files(path)]
    else:
      stem = os.path.splitext(name)[0]
      files = [(path, local)] + [(storage.join(storage.dirname(path), n), os.path.join(tmp, n))
                                 for n in (name + ".json", stem + ".json")]
    for src, dst in files:
      if src == path or storage.exists(src):
        storage.makedirs(os.path.dirname(dst))
        with open(dst, "wb") as f:
          f.write(storage.read_bytes(src))
    yield local


def _reader_records(kind: str, path: str, args) -> tuple[Iterator[dict[str, Any]], int,
                                                         list[str]]:
  from data_pipelines import readers  # pylint: disable=g-import-not-at-top
  from ecgjax.data.records import EcgRecord  # pylint: disable=g-import-not-at-top
  kw: dict[str, Any] = {"min_duration_s": 0.0}
  if args.leads:
    kw["leads"] = args.leads
  if kind == "numpy":
    kw.update({k: getattr(args, k) for k in ("units", "layout") if getattr(args, k, None)})
  reader = readers.make_reader(kind, path, args.labels, args.sampling_rate, **kw)
  label_names = list(reader.label_names)
  items = reader.list_items()

  def gen():
    for item in items:
      rec = reader.read(item)
      if not isinstance(rec, EcgRecord):
        yield {"record_id": rec.record_id, "error": f"unreadable: {rec.reason}"}
        continue
      hot = np.zeros(len(label_names), np.float32)
      hot[list(rec.labels)] = 1.0
      yield {"signal": rec.physical(), "sampling_rate": rec.sampling_rate,
             "leads": rec.leads, "r_peaks": rec.r_peaks, "record_id": rec.record_id,
             "split": rec.split, "label": hot}

  return gen(), len(items), label_names


def check_args(args: argparse.Namespace) -> str:
  """Flag checks that need no model and no signal; returns the input kind."""
  from data_pipelines.readers import common  # pylint: disable=g-import-not-at-top
  from ecgjax import cli  # pylint: disable=g-import-not-at-top
  if args.sampling_rate is not None and not args.sampling_rate > 0:
    raise cli.UsageError(f"--sampling_rate={args.sampling_rate:g}: must be > 0 Hz (the rate "
                         "of the input data)")
  if args.leads is not None:
    common.check_lead_names(args.leads, flag="--leads")
  if args.batch_size < 1:
    raise cli.UsageError(f"--batch_size={args.batch_size}: must be >= 1")
  if not storage.exists(args.input):
    raise FileNotFoundError(f"--input={args.input}: does not exist")
  if not storage.exists(args.model):
    raise FileNotFoundError(f"--model={args.model}: does not exist")
  kind = input_kind(args.input)
  if kind == "shards":
    for flag in ("leads", "units", "layout", "labels"):
      if getattr(args, flag, None):
        raise cli.UsageError(f"--{flag}: converted shards already store it; the flag is for "
                             "raw (WFDB / numpy) input")
  elif args.splits:
    raise cli.UsageError("--splits: only shard input (a directory with spec.json) has splits")
  if kind != "numpy":
    for flag in ("units", "layout"):
      if getattr(args, flag, None):
        raise cli.UsageError(f"--{flag}: only for numpy input (.npy/.npz/.h5)")
  if kind == "shards" and args.sampling_rate is not None:
    from ecgjax.data import spec as spec_lib  # pylint: disable=g-import-not-at-top
    rates = sorted(float(r) for r in spec_lib.load(args.input).get("sampling_rates", {}))
    if any(abs(r - args.sampling_rate) > 1e-6 for r in rates):
      raise cli.UsageError(f"--sampling_rate={args.sampling_rate:g}: the shards hold "
                           f"{', '.join(f'{r:g}' for r in rates)} Hz; omit the flag")
  return kind


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Embeds every record of ``args.input``; raises EmptyOutputError when none could be."""
  kind = check_args(args)
  with contextlib.ExitStack() as stack:
    if kind == "shards":
      records, total, label_names = _shard_records(args.input, args.splits)
    else:
      local = stack.enter_context(local_input(args.input))
      records, total, label_names = _reader_records(kind, local, args)
    return _embed_and_write(args, records, total, label_names)


def _embed_and_write(args, records, total: int, label_names: list[str]) -> dict[str, Any]:
  from ecgjax import cli  # pylint: disable=g-import-not-at-top
  from ecgjax.inference import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  model = pretrained_lib.load_pretrained(args.model, batch_size=args.batch_size)
  if args.leads:
    try:
      pretrained_lib.check_leads(args.leads, model.leads)
    except ValueError as e:
      raise cli.UsageError(f"--leads: {e}") from e
  kept: list[dict[str, Any]] = []
  rejected: list[tuple[str, str]] = []

  def readable():
    for rec in records:
      if "error" in rec:
        rejected.append((rec["record_id"], rec["error"]))
        continue
      if not kept:
        _warn_amplitude(rec)
      kept.append(rec)
      yield rec

  embeddings, ids, splits, labels = [], [], [], []
  bar = tqdm.tqdm(total=total, unit="rec", desc="embed", file=sys.stderr,
                  disable=args.quiet)
  done = 0
  for emb, err in model.embed_records(readable(), args.mode, on_error="skip"):
    rec = kept[done]
    kept[done] = None  # free the signal.
    done += 1
    bar.update(1)
    if emb is None:
      rejected.append((rec["record_id"], err))
      continue
    embeddings.append(emb)
    ids.append(rec["record_id"])
    splits.append(rec.get("split", ""))
    labels.append(rec["label"])
  bar.update(total - bar.n)
  bar.close()
  if not ids:
    example = f"; e.g. {rejected[0][0]}: {rejected[0][1]}" if rejected else ""
    raise cli.EmptyOutputError(f"0 of {total} records embedded{example}; nothing written "
                               f"to {args.output}")
  out = {
      "embeddings": (np.stack(embeddings).astype(np.float32) if embeddings
                     else np.zeros((0, model.embedding_dim), np.float32)),
      "record_ids": np.asarray(ids, dtype=str),
      "splits": np.asarray(splits, dtype=str),
      "rejected_ids": np.asarray([r[0] for r in rejected], dtype=str),
      "rejected_reasons": np.asarray([r[1] for r in rejected], dtype=str),
      "mode": np.asarray(args.mode),
      "model": np.asarray(json.dumps(model.config)),
  }
  if label_names:
    out["labels"] = (np.stack(labels) if labels
                     else np.zeros((0, len(label_names)), np.float32))
    out["label_names"] = np.asarray(label_names, dtype=str)
  buf = io.BytesIO()
  np.savez(buf, **out)
  path = args.output if args.output.endswith(".npz") else args.output + ".npz"  # as np.savez
  storage.write_bytes(storage.abspath(path), buf.getvalue())
  logging.info("embedded %d records (%d skipped) -> %s", len(ids), len(rejected), args.output)
  for rid, reason in rejected[:10]:
    logging.warning("skipped %s: %s", rid, reason)
  return out


def _warn_amplitude(rec: dict[str, Any]) -> None:
  """Warns (called on the first record) when the amplitudes are not plausibly mV."""
  from data_pipelines import validate as validate_lib  # pylint: disable=g-import-not-at-top
  leads = list(rec["leads"])
  row = leads.index("II") if "II" in leads else 0
  std = float(np.std(np.asarray(rec["signal"])[row]))
  hint = validate_lib.amplitude_hint(std)
  if hint:
    logging.warning("record %s lead %s std is %.4g \"mV\", implausible for an ECG: %s "
                    "(--units)", rec["record_id"], leads[row], std, hint)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True, help="export directory (or training workdir)")
  p.add_argument("--input", required=True, help="shards dir, WFDB dir, or .npy/.npz/.h5")
  p.add_argument("--output", required=True, help="output .npz")
  p.add_argument("--mode", default="rpeak", choices=MODES,
                 help="window policy (see ecgjax.inference.pretrained)")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--splits", type=lambda s: [x for x in s.split(",") if x], default=None,
                 help="shards: comma-separated splits (default: all)")
  p.add_argument("--sampling_rate", type=float, default=None,
                 help="the rate of the input data in Hz (numpy input without a sidecar); "
                      "for WFDB / shards it must match what the files declare")
  p.add_argument("--leads", type=lambda s: tuple(x for x in s.split(",") if x.strip()),
                 default=None,
                 help="lead names of the channels by position (numpy / WFDB), replacing the "
                      "file's names, e.g. --leads=II,V1")
  p.add_argument("--layout", default=None, choices=("NCT", "NTC"),
                 help="numpy: [records, leads, samples] (NCT) or [records, samples, leads] "
                      "(NTC), when the lead count does not tell")
  p.add_argument("--units", default=None, help="numpy: unit of the values (mV, uV or V)")
  p.add_argument("--labels", default=None, help="optional labels CSV (WFDB / numpy)")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--verbose", action="store_true",
                 help="full tracebacks for usage errors (default: one line)")
  return p


def main(argv: list[str] | None = None) -> None:
  from ecgjax import cli  # pylint: disable=g-import-not-at-top
  args = build_parser().parse_args(argv)
  cli.setup_logging()
  cli.run("embed", lambda: run(args), args.verbose)


if __name__ == "__main__":
  main()
