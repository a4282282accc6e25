#!/usr/bin/env bash
# GPU check: a few GRPO steps of the tiny model on CUDA in bf16 through the revex runtime;
# prints steps/s and the reward. Skips (exit 0) with a clear message when no GPU is present.
# Run from the repository root: bash benchmarks/gpu_check.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${1:-10}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: SKIPPED: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch missing'))"
  exit 0
fi
OUT=$(mktemp -d)
"$PY" - "$STEPS" "$OUT" <<'PYEOF'
import json, sys, time
import torch
from revex.trainer.train import TrainConfig, train

steps, out = int(sys.argv[1]), sys.argv[2]
config = TrainConfig(output_dir=out, device="cuda", max_steps=steps, progress=False,
                     rewards="test_pass:1.0,exec_feedback:0.2,safety:0.5")
start = time.perf_counter()
result = train(config)
wall = time.perf_counter() - start
rewards = [r["reward"] for r in result.records if "reward" in r]
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported(),
                  "steps": steps, "wall_s": round(wall, 2),
                  "steps_per_s": round(steps / wall, 3),
                  "reward_first": rewards[0] if rewards else None,
                  "reward_last": rewards[-1] if rewards else None}, indent=1))
PYEOF
