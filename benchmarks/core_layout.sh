#!/usr/bin/env bash
# Does one process per core (how the studies run: `taskset -c 0` / `taskset -c 1`) lose
# throughput against one process using both cores? Times an EDSR-baseline x4 float32 I-FGSM
# step (the evaluation's unit of work, benchmarks/attack_step.py) and a mixed_bfloat16 training
# step of the study recipe's size (batch 16, LR patch 32, benchmarks/train_step.py) three ways:
# one process on cores 0 and 1, one process on core 0 with core 1 idle, and two processes at
# once, one on each core. Run it on an otherwise idle machine with 2 cores, from the
# repository root:
#
#     bash benchmarks/core_layout.sh | tee results/benchmarks/core_layout_avx512bf16.txt
#
# Per-step times; the throughput of a layout is its processes' steps per second added up.
set -euo pipefail
cd "$(dirname "$0")/.."
attack=(python benchmarks/attack_step.py --precisions=float32 --xla=false --clever=false
        --steps=5)
train=(python benchmarks/train_step.py --precisions=mixed_bfloat16 --patch_size=32 --steps=5)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
keep() {  # the header and result lines of a benchmark's output
  grep -E "^(command|machine):|s/step" "$1" || true
}
for job in attack train; do
  declare -n cmd=$job
  echo "## $job: one process on cores 0,1"
  taskset -c 0,1 "${cmd[@]}" > "$tmp/both" 2>&1
  keep "$tmp/both"
  echo "## $job: one process on core 0, core 1 idle"
  taskset -c 0 "${cmd[@]}" > "$tmp/one" 2>&1
  keep "$tmp/one"
  echo "## $job: two processes at once, on core 0 and on core 1"
  taskset -c 0 "${cmd[@]}" > "$tmp/c0" 2>&1 &
  first=$!
  taskset -c 1 "${cmd[@]}" > "$tmp/c1" 2>&1
  wait "$first"
  keep "$tmp/c0"
  keep "$tmp/c1"
done
