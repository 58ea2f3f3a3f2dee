r"""Conversion throughput (records/s): read + validate + R-peaks + serialise + write.

  python benchmarks/convert.py                      # PTB-XL subset if present, and synthetic
  python benchmarks/convert.py --workers=1,2 --synthetic_records=1000

Writes benchmarks/results/convert.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import convert  # pylint: disable=wrong-import-position

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def _run(argv: list[str]) -> dict:
  out = tempfile.mkdtemp(prefix="ecgjax_convert_bench_")
  try:
    t0 = time.time()
    spec = convert.convert(convert.build_parser().parse_args([*argv, f"--output={out}", "--quiet"]))
    dt = time.time() - t0
    n = spec["num_records"] + spec["rejects"]["count"]
    return {"records": n, "seconds": round(dt, 2), "records_per_s": round(n / dt, 1)}
  finally:
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workers", default="1,2")
  p.add_argument("--synthetic_records", type=int, default=1000)
  p.add_argument("--out", default="benchmarks/results/convert.json")
  a = p.parse_args()
  jobs = {"synthetic_500hz_10s": ["--format=synthetic", f"--num_records={a.synthetic_records}",
                                  "--sampling_rate=500", "--num_shards=8"]}
  ptbxl = os.path.join(SHARED, "ptbxl")
  if os.path.isdir(ptbxl):
    jobs["ptbxl_100hz"] = ["--format=ptbxl", f"--input={ptbxl}",
                           f"--labels={ptbxl}/ptbxl_labels.csv", "--num_shards=8"]
  cinc = os.path.join(SHARED, "cinc2021_samples")
  if os.path.isdir(cinc):
    jobs["cinc2021_500hz"] = ["--format=wfdb", f"--input={cinc}", "--num_shards=2"]
  results = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "runs": {}}
  for name, argv in jobs.items():
    for w in [int(x) for x in a.workers.split(",")]:
      r = _run([*argv, f"--workers={w}"])
      results["runs"][f"{name}/workers={w}"] = r
      print(f"{name:22s} workers={w}: {r['records']:5d} records in {r['seconds']:6.1f}s = "
            f"{r['records_per_s']:7.1f} records/s")
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
