#!/usr/bin/env bash
# The GPU check: one prepared run that measures what a CPU cannot, in under 8 minutes on one
# H100 / H200 (random weights, so nothing is downloaded):
#   1. real-size hypir teacher steps: SD 2.1-base UNet + LoRA r256, bf16 base, gradient
#      checkpointing, HYPIR's loss (decoded MSE + 5 LPIPS(vgg) + 0.5 GAN on an OpenCLIP
#      ConvNeXt-XXL) at 512 px: peak memory and s/step;
#   2. flow teacher steps on SDXL-VAE latents at 1024 px (UNet widths 128-256-512-512);
#   3. distillation steps from the hypir teacher, and an eval of one photo;
#   4. python -m eval.bench on CUDA for both teachers' rows and the student's fast paths (fp16,
#      bf16, torch.compile, CUDA graphs, ONNX Runtime's CUDA / TensorRT provider where installed);
#      and python -m eval.bench_enhance where it exists.
# Writes OUT/gpu_check.json and OUT/gpu_check.md (a section for docs/benchmarks.md).
#
#   bash scripts/gpu_check.sh                    # OUT=runs/gpu_check, on CUDA
#   bash scripts/gpu_check.sh --dry              # the same steps on the CPU at tiny size, 1 step each,
#                                                # eval.bench without the fast paths (tests)
#   bash scripts/gpu_check.sh --out DIR --steps 10
set -euo pipefail

OUT=runs/gpu_check
DRY=0
STEPS=10
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry] [--out DIR] [--steps N]" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  TINY=(--tiny --size 64 --flow-size 64)
  STEPS=1
  SIZES=(64)
  BENCH=(--repeats 1 --no-fast-paths)  # the fast paths have their own tests (tests/test_fast.py)
  MODE="dry run: CPU, tiny architectures"
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to torch; run with --dry for the CPU rehearsal" >&2
    exit 1
  fi
  TINY=()
  SIZES=(512 1024)
  BENCH=(--repeats 5)
  MODE="CUDA, true-size architectures"
fi
START=$(date +%s)
echo "[gpu_check] $MODE; steps $STEPS; out $OUT"

# 1-3: training steps (both teachers, distillation, eval of one photo), through the entry points
"$PY" -m scripts.real_size --out "$OUT" "${TINY[@]}" --steps "$STEPS" --parts hypir flow distill eval

# 4: inference speed on this device, for each trained run folder
EVAL_ROWS=(eval.students=[student] eval.baselines=[] "eval.teacher_steps=[1]")
"$PY" -m eval.bench --config configs/hypir_sd21.yaml --sizes "${SIZES[@]}" "${BENCH[@]}" \
  --json "$OUT/bench_hypir.json" "experiment.output_root=$OUT" "${EVAL_ROWS[@]}"
"$PY" -m eval.bench --config configs/flow_sdxl_vae.yaml --sizes "${SIZES[@]}" --repeats "${BENCH[1]}" --no-fast-paths \
  --json "$OUT/bench_flow.json" "experiment.output_root=$OUT" eval.students=[student] eval.baselines=[] \
  "eval.teacher_steps=[1,4]"
if "$PY" -c "import eval.bench_enhance" 2>/dev/null; then
  "$PY" -m eval.bench_enhance --help >/dev/null && \
    "$PY" -m eval.bench_enhance --model "$OUT/hypir_sd21/student" --json "$OUT/bench_enhance.json" || \
    echo "[gpu_check] eval.bench_enhance failed; see above"
fi

# the report: one JSON, one markdown section
"$PY" - "$OUT" "$MODE" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
from pathlib import Path

out, mode, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
report = {"mode": mode, "wall_seconds": seconds, "training": json.loads((out / "real_size.json").read_text())}
for name in ("bench_hypir", "bench_flow", "bench_enhance"):
    if (out / f"{name}.json").is_file():
        report[name] = json.loads((out / f"{name}.json").read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
lines = [f"### GPU check ({mode}; {report['training']['device']}; {seconds} s in all)", "",
         (out / "real_size.md").read_text()]
for name in ("bench_hypir", "bench_flow"):
    bench = report.get(name)
    if not bench:
        continue
    sizes = sorted({s for row in bench["rows"].values() for s in row}, key=lambda s: int(s.split("x")[0]))
    lines += ["", f"`python -m eval.bench` ({name.split('_')[1]} config, {bench['device']}):", "",
              "| row | " + " | ".join(f"{s} p50 ms | peak MiB" for s in sizes) + " |",
              "| --- |" + " ---: | ---: |" * len(sizes)]
    for row, by_size in bench["rows"].items():
        cells = [f"{by_size[s]['p50_ms']:.1f} | {by_size[s]['peak_mem_mib']:.0f}" if s in by_size else " | "
                 for s in sizes]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
EOF
