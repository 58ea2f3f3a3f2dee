r"""Two-view input throughput: grain pipeline vs tf.data on the same shards (host only).

  python benchmarks/input_pipeline.py                       # synthetic 12-lead 10 s 500 Hz
  python benchmarks/input_pipeline.py --data=SHARDS --workers=0,2 --batch=256
  python benchmarks/input_pipeline.py --tf_python=/path/to/venv-with-tf/bin/python
  python benchmarks/input_pipeline.py --mixture=PTBXL_SHARDS:0.8,MITBIH_DS1_SHARDS:0.2 \
      --workers=0 --out=benchmarks/results/input_pipeline_mixture.json
  python benchmarks/input_pipeline.py --data=gs://BUCKET/shards --local_data=SAME_SHARDS_ON_DISK
  python benchmarks/input_pipeline.py --data=gs://ecgjax-bench/shards --gcs_emulator \
      --workers=0 --seconds=4 --out=benchmarks/results/input_pipeline_gcs.json

Prints samples/s (one sample = the two views of one record that a training step
consumes) and writes benchmarks/results/input_pipeline.json:

  grain workers=N   the host pipeline as training runs it: read, parse, pick two R-peak
                    starts and time stretches, slice two raw int16 segments, batch;
  device finish     ``windows.views`` (resample + normalise both views), jitted, timed on
                    this machine's default device (on a CPU-only box: the same 2 cores);
  tf.data           AUTOTUNE, in a separate interpreter so TensorFlow never enters
                    ecgjax's environment, on the same shards: 'segments' does the same host
                    work as grain; 'windows' also resamples and z-scores on the host (the
                    split ecgjax used before the finish moved into the jitted step).
  --mixture         the same grain pipeline over a weighted mixture of shard directories
                    (ecgjax.data.mixture), beside each of its sources read alone.
  --data=gs://...   the same grain pipeline reading from the bucket, beside the same shards
                    on the local disk (``--local_data``), plus the raw source: records/s of
                    one ranged GET at a time and of ``read_many`` (a batch's GETs at once).
                    ``--gcs_emulator`` starts gcp-storage-emulator in this process and uploads
                    the local shards into it: a local HTTP server, so the figure is the
                    per-request overhead of the client and server, not GCS latency/bandwidth.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# gcsfs probes a bucket's type over gRPC first (a 60 s timeout against an emulator).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_TF_BASELINE = r'''
import glob, json, sys, time
import tensorflow as tf
data, batch, seconds, window, threads, mode, seg_len = (sys.argv[1], int(sys.argv[2]),
    float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7]))
if threads:
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  tf.config.threading.set_intra_op_parallelism_threads(threads)
files = sorted(glob.glob(data + "/train.tfrecord-*"))
files = [f for f in files if not f.endswith(".index")]  # directories of the old layout
spec = {"signal": tf.io.FixedLenFeature([], tf.string), "shape": tf.io.FixedLenFeature([2], tf.int64),
        "sampling_rate": tf.io.FixedLenFeature([], tf.float32), "r_peaks": tf.io.VarLenFeature(tf.int64)}
def start_at_beat(peaks, n, src, pre_r):
  s = peaks - pre_r
  s = tf.boolean_mask(s, (s >= 0) & (s <= tf.cast(n - src, tf.int64)))
  uniform = tf.random.uniform([], 0, tf.maximum(n - src, 1), tf.int32)
  pick = tf.random.uniform([], 0, tf.maximum(tf.size(s), 1), tf.int32)
  return tf.cond(tf.size(s) > 0, lambda: tf.cast(tf.gather(s, pick), tf.int32), lambda: uniform)
def segment(sig, fs, peaks):  # the same host work as ecgjax: R-peak start, raw int16 slice
  ratio = fs / 250.0 * tf.random.uniform([], 0.9, 1.1)
  n = tf.shape(sig)[1]
  src = tf.cast(tf.math.ceil(window * ratio), tf.int32)
  start = start_at_beat(peaks, n, src, tf.cast(tf.round(0.25 * fs), tf.int64))
  seg = sig[:, start:start + seg_len]
  seg = tf.pad(seg, [[0, 0], [0, seg_len - tf.shape(seg)[1]]])
  return seg, ratio, tf.minimum(n - start, seg_len)
def view(sig, fs, peaks):  # everything on the host: crop, 2x boxcar, stretch, z-score
  ratio = fs / 250.0 * tf.random.uniform([], 0.9, 1.1)
  src = tf.cast(tf.math.ceil(window * ratio), tf.int32) + 4
  n = tf.shape(sig)[1]
  start = start_at_beat(peaks, n, src, tf.cast(tf.round(0.25 * fs), tf.int64))
  seg = tf.cast(sig[:, start:start + src], tf.float32) / 1000.0
  seg = (seg[:, 0:-1:2] + seg[:, 1::2]) * 0.5
  pos = tf.range(window, dtype=tf.float32) * ratio / 2.0
  i0 = tf.minimum(tf.cast(pos, tf.int32), tf.shape(seg)[1] - 2)
  frac = pos - tf.cast(i0, tf.float32)
  y = tf.gather(seg, i0, axis=1) * (1 - frac) + tf.gather(seg, i0 + 1, axis=1) * frac
  m, v = tf.nn.moments(y, axes=[1], keepdims=True)
  return (y - m) / (tf.sqrt(v) + 1e-3)
def parse(raw):
  ex = tf.io.parse_single_example(raw, spec)
  sig = tf.reshape(tf.io.decode_raw(ex["signal"], tf.int16), ex["shape"])
  fs, peaks = ex["sampling_rate"], ex["r_peaks"].values
  if mode == "windows":
    return {"view1": view(sig, fs, peaks), "view2": view(sig, fs, peaks)}
  (s1, r1, v1), (s2, r2, v2) = segment(sig, fs, peaks), segment(sig, fs, peaks)
  return {"seg1": s1, "ratio1": r1, "valid1": v1, "seg2": s2, "ratio2": r2, "valid2": v2}
ds = (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files)).interleave(
    tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
      .shuffle(1024).repeat().map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
      .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
it = iter(ds)
for _ in range(3): next(it)
n, t0 = 0, time.time()
while time.time() - t0 < seconds:
  b = next(it); n += batch
print(json.dumps({"tf_version": tf.__version__, "samples_per_s": n / (time.time() - t0)}))
'''


def ensure_shards(path: str, num_records: int) -> str:
  if os.path.exists(os.path.join(path, "spec.json")):
    return path
  from data_pipelines import convert  # pylint: disable=g-import-not-at-top
  args = convert.build_parser().parse_args([
      "--format=synthetic", f"--output={path}", f"--num_records={num_records}",
      "--sampling_rate=500", "--duration_s=10", "--num_shards=8", "--workers=2", "--quiet"])
  convert.convert(args)
  return path


def grain_samples_per_s(data: str, batch: int, workers: int, threads: int, seconds: float,
                        mixture: str = "") -> float:
  import configs.hl as hl  # pylint: disable=g-import-not-at-top
  from ecgjax.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = hl.get_config()
  cfg.data.path = data
  cfg.data.mixture = tuple(m for m in mixture.split(",") if m)
  cfg.data.num_workers = workers
  cfg.data.read_threads = threads
  it = iter(pipeline.make_train_dataset(cfg.data, batch, seed=0))
  for _ in range(3 if workers == 0 else 2 * workers + 2):
    next(it)
  n, t0 = 0, time.time()
  while time.time() - t0 < seconds:
    b = next(it)
    n += b["seg1"].shape[0]
  return n / (time.time() - t0)


def device_finish_samples_per_s(data: str, batch: int, seconds: float) -> float:
  """Two-view samples/s of the jitted resample + normalise on the default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import configs.hl as hl  # pylint: disable=g-import-not-at-top
  from ecgjax.data import pipeline, windows  # pylint: disable=g-import-not-at-top
  from ecgjax.data import spec as spec_lib  # pylint: disable=g-import-not-at-top
  cfg = hl.get_config()
  window = pipeline.WindowConfig.from_config(cfg.data, spec_lib.load(data))
  segments = jax.device_put(pipeline.random_batch(window, batch))
  fn = jax.jit(lambda b: windows.views(b, window))
  jax.block_until_ready(fn(segments))
  n, t0 = 0, time.time()
  while time.time() - t0 < seconds:
    jax.block_until_ready(fn(segments))
    n += batch
  return n / (time.time() - t0)


def _device_kind() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.devices()[0].device_kind


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="/tmp/ecgjax_bench_shards_500hz")
  p.add_argument("--num_records", type=int, default=2000)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--workers", default="0,2", help="grain worker processes to try")
  p.add_argument("--threads", type=int, default=1, help="grain read threads per process")
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--tf_python", default=None, help="a python with tensorflow installed")
  p.add_argument("--mixture", default="",
                 help="DIR:W,DIR:W: time a weighted mixture and each source alone, then exit")
  p.add_argument("--local_data", default="/tmp/ecgjax_bench_shards_500hz",
                 help="with --data=gs://...: the same shards on a local disk (made if absent)")
  p.add_argument("--gcs_emulator", action="store_true",
                 help="with --data=gs://BUCKET/...: serve BUCKET from gcp-storage-emulator in "
                      "this process and upload --local_data into it first")
  p.add_argument("--out", default=None, help="results JSON (default "
                 "benchmarks/results/input_pipeline.json, input_pipeline_gcs.json for gs://)")
  a = p.parse_args()
  if "://" in a.data:
    a.out = a.out or "benchmarks/results/input_pipeline_gcs.json"
    gcs_main(a)
    return
  a.out = a.out or "benchmarks/results/input_pipeline.json"
  if a.gcs_emulator:
    p.error("--gcs_emulator needs --data=gs://BUCKET/...")
  if a.mixture:
    mixture_main(a)
    return
  data = ensure_shards(a.data, a.num_records)
  spec = json.load(open(os.path.join(data, "spec.json")))
  results = {"date": datetime.date.today().isoformat(), "host": platform.node(),
             "cpus": os.cpu_count(), "batch": a.batch, "data": data,
             "records": spec["num_records"], "rates": spec["sampling_rates"], "grain": {}}
  for w in [int(x) for x in a.workers.split(",")]:
    sps = grain_samples_per_s(data, a.batch, w, a.threads, a.seconds)
    results["grain"][f"workers={w}"] = round(sps, 1)
    print(f"grain  workers={w} threads={a.threads}: {sps:9.0f} two-view samples/s")
  sps = device_finish_samples_per_s(data, a.batch, a.seconds)
  results["device_finish"] = {"device": _device_kind(), "samples_per_s": round(sps, 1)}
  print(f"device finish ({_device_kind()}): {sps:9.0f} two-view samples/s")
  if a.tf_python:
    import configs.hl as hl  # pylint: disable=g-import-not-at-top
    from ecgjax.data import pipeline  # pylint: disable=g-import-not-at-top
    seg_len = pipeline.WindowConfig.from_config(hl.get_config().data, spec).buffer_length()
    results["tf_data"] = {}
    for mode in ("segments", "windows"):
      out = subprocess.run([a.tf_python, "-c", _TF_BASELINE, data, str(a.batch), str(a.seconds),
                            "1250", "0", mode, str(seg_len)], capture_output=True, text=True)
      if out.returncode:
        print(f"tf.data baseline ({mode}) failed:", out.stderr[-2000:])
        continue
      tf_res = json.loads(out.stdout.strip().splitlines()[-1])
      results["tf_data"][mode] = tf_res
      results["tf_data"]["tf_version"] = tf_res["tf_version"]
      print(f"tf.data AUTOTUNE {mode:8s} (TF {tf_res['tf_version']}): "
            f"{tf_res['samples_per_s']:9.0f} two-view samples/s")
  else:
    print("tf.data baseline skipped (pass --tf_python=PYTHON_WITH_TF)")
  import grain, jax  # pylint: disable=g-import-not-at-top,multiple-imports
  results["versions"] = {"grain": grain.__version__ if hasattr(grain, "__version__") else "?",
                         "numpy": np.__version__, "python": platform.python_version()}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


def start_gcs_emulator(bucket: str):
  """gcp-storage-emulator in this process (as tests/conftest.py's fixture); returns it."""
  import http.server  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server as server_mod  # pylint: disable=g-import-not-at-top
  # A batch's concurrent GETs overflow the default listen backlog of 5 (1 s connect retries).
  http.server.HTTPServer.request_queue_size = 1024
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  server = server_mod.create_server("localhost", port, in_memory=True, default_bucket=bucket)
  server.start()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  url = f"http://localhost:{port}"
  os.environ.update({"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                     "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"})  # grain workers inherit it.
  return server


def source_records_per_s(data: str, batch: int, seconds: float) -> dict[str, float]:
  """Raw ShardedSource reads in a seeded random order: one at a time, and a batch at once."""
  from ecgjax.data.source import ShardedSource  # pylint: disable=g-import-not-at-top
  src = ShardedSource(data, "train")
  order = np.random.default_rng(0).integers(0, len(src), 1 << 20)
  out = {}
  for name, step in (("one_at_a_time", 1), ("read_many", batch)):
    n, t0 = 0, time.time()
    while time.time() - t0 < seconds:
      idx = order[n:n + step]
      got = src.read_many(idx) if step > 1 else [src[int(idx[0])]]
      n += len(got)
    out[name] = round(n / (time.time() - t0), 1)
  return out


def gcs_main(a: argparse.Namespace) -> None:
  """Two-view samples/s from a bucket beside the same shards on the local disk."""
  from ecgjax import storage  # pylint: disable=g-import-not-at-top
  from ecgjax.data import spec as spec_lib  # pylint: disable=g-import-not-at-top
  local = ensure_shards(a.local_data, a.num_records)
  server = None
  if a.gcs_emulator:
    server = start_gcs_emulator(a.data[len("gs://"):].split("/")[0])
    t0 = time.time()
    for f in storage.walk_files(local):
      storage.upload(os.path.join(local, f), storage.join(a.data, f))
    print(f"uploaded {local} to the emulator in {time.time() - t0:.1f}s")
  spec = spec_lib.load(a.data)
  if spec["shards"] != spec_lib.load(local)["shards"]:
    raise ValueError(f"--data={a.data} and --local_data={local} hold different shards")
  results = {"command": "python " + " ".join(sys.argv),
             "date": datetime.date.today().isoformat(), "host": platform.node(),
             "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 1),
             "batch": a.batch, "seconds": a.seconds, "threads": a.threads,
             "data": a.data, "local_data": local, "records": spec["num_records"],
             "rates": spec["sampling_rates"],
             "store": ("gcp-storage-emulator, in this process (a local HTTP server: per-request "
                       "overhead, not GCS latency or bandwidth)" if a.gcs_emulator else a.data),
             "grain": {}, "source_records_per_s": {}}
  try:
    for where, path in (("local", local), ("gcs", a.data)):
      results["source_records_per_s"][where] = r = source_records_per_s(path, a.batch,
                                                                        a.seconds / 2)
      print(f"source {where:5s}: {r} records/s")
    for w in [int(x) for x in a.workers.split(",")]:
      row = results["grain"][f"workers={w}"] = {}
      for where, path in (("local", local), ("gcs", a.data)):
        row[where] = round(grain_samples_per_s(path, a.batch, w, a.threads, a.seconds), 1)
        print(f"grain {where:5s} workers={w}: {row[where]:9.0f} two-view samples/s")
      row["gcs_over_local"] = round(row["gcs"] / row["local"], 3)
  finally:
    if server is not None:
      server.stop()
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


def mixture_main(a: argparse.Namespace) -> None:
  """Two-view samples/s of a mixture beside each source alone (host pipeline only)."""
  import configs.hl as hl  # pylint: disable=g-import-not-at-top
  from ecgjax.data import mixture  # pylint: disable=g-import-not-at-top
  cfg = hl.get_config()
  cfg.data.mixture = tuple(a.mixture.split(","))
  sources = mixture.parse_sources(cfg.data)
  results = {"date": datetime.date.today().isoformat(), "host": platform.node(),
             "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 1),
             "batch": a.batch, "seconds": a.seconds,
             "window": {"sampling_rate": cfg.data.sampling_rate, "window_s": cfg.data.window_s},
             "sources": [], "mixture": {}}
  for s in sources:
    spec = json.load(open(os.path.join(s.path, "spec.json")))
    entry = {"path": s.path, "weight": round(s.weight, 4), "records": spec["splits"].get("train"),
             "rates": spec["sampling_rates"], "leads": spec["lead_order"], "grain": {}}
    for w in [int(x) for x in a.workers.split(",")]:
      sps = grain_samples_per_s(s.path, a.batch, w, a.threads, a.seconds)
      entry["grain"][f"workers={w}"] = round(sps, 1)
      print(f"{s.path} alone, workers={w}: {sps:9.0f} two-view samples/s")
    results["sources"].append(entry)
  for w in [int(x) for x in a.workers.split(",")]:
    sps = grain_samples_per_s("", a.batch, w, a.threads, a.seconds, a.mixture)
    results["mixture"][f"workers={w}"] = round(sps, 1)
    print(f"mixture {a.mixture}, workers={w}: {sps:9.0f} two-view samples/s")
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
