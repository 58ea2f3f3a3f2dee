#!/usr/bin/env bash
# Issue 14 item 5 on one GPU, as one command (prepared on CPU; no GPU was lent when written):
#   bash benchmarks/gpu_session.sh OUT_DIR [BATCH]
# 1. The base HL step at 10 s / 500 Hz, bf16, at BATCH (default 128): step time, samples/s,
#    counted-FLOP MFU, peak memory, then a jax.profiler trace of 3 steps and its top ops by
#    device time (OUT_DIR/trace, table printed; benchmarks/profile_table.py).
# 2. In a second process (JAX keeps its GPU memory), the torch.compile twin and the real
#    ST-MEM code (../shared/peers/st_mem) at the same batch.
# Needs: pip install -e '.[bench]' and a CUDA jax (jax[cuda12]) on the machine.
# The JSONs go to OUT_DIR; copy them to benchmarks/results/ with the device in the name.
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR [BATCH]}"
batch="${2:-128}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$py" "$root/benchmarks/train_step.py" --model=base --seconds=10 --batch="$batch" \
    --profile="$out/trace" --out="$out/train_step_gpu_base.json"
"$py" "$root/benchmarks/train_step.py" --model=base --seconds=10 --batch="$batch" --no-jax \
    --torch --stmem --out="$out/train_step_gpu_base_torch.json"
"$py" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
j = json.load(open(f"{out}/train_step_gpu_base.json"))["results"][0]["jax"]
t = json.load(open(f"{out}/train_step_gpu_base_torch.json"))["results"][0]
torch_best = (t.get("torch") or {}).get("best_samples_per_s")
stmem = (t.get("stmem") or {}).get("best_samples_per_s")
mfu = j["mfu"] and 100 * j["mfu"]
print(f"jax {j['samples_per_s']:.1f} samples/s, MFU {mfu and round(mfu, 1)}% (target >= 45%)")
if torch_best:
  print(f"torch.compile twin {torch_best:.1f} samples/s -> jax/torch "
        f"{j['samples_per_s'] / torch_best:.2f} (target >= 1.3)")
print(f"ST-MEM {stmem} samples/s")
PY
