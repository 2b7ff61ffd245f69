#!/usr/bin/env bash
# Are TensorFlow's oneDNN CPU kernels worth turning on? TF 2.14 enables them by default only on
# x86 CPUs with AVX512_VNNI, AVX512_BF16 or AMX; tfsr_defense sets TF_ENABLE_ONEDNN_OPTS=1
# unless it is already set (tfsr_defense/__init__.py). Times a float32 I-FGSM step of
# EDSR-baseline x4 on a 120x80 LR image (the evaluation's unit of work,
# benchmarks/attack_step.py) and a float32 training step of the studies' size (batch 16, LR
# patch 32, with and without the regularizer, benchmarks/train_step.py) with
# TF_ENABLE_ONEDNN_OPTS=0 and =1, alternating, ROUNDS times each, on one core (CORE, default 0:
# the layout the studies run in). From the repository root:
#
#     CORE=1 bash benchmarks/onednn.sh | tee results/benchmarks/onednn_avx2.txt
#
# Compare the two settings as ratios within one run (shared machines vary by up to 40 %).
set -euo pipefail
cd "$(dirname "$0")/.."
core=${CORE:-0}
rounds=${ROUNDS:-2}
attack=(python benchmarks/attack_step.py --precisions=float32 --xla=false --clever=false
        --steps=4 --repeats=1)
train=(python benchmarks/train_step.py --precisions=float32 --patch_size=32 --steps=4)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for job in attack train; do
  declare -n cmd=$job
  for round in $(seq "$rounds"); do
    for onednn in 0 1; do
      echo "## $job, round $round: TF_ENABLE_ONEDNN_OPTS=$onednn, core $core"
      TF_ENABLE_ONEDNN_OPTS=$onednn TF_CPP_MIN_LOG_LEVEL=2 taskset -c "$core" "${cmd[@]}" \
        > "$tmp/out" 2>&1
      grep -E "^(command|machine):|s/step" "$tmp/out" || { cat "$tmp/out" >&2; exit 1; }
    done
  done
done
