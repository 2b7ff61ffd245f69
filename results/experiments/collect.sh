#!/usr/bin/env bash
# Bring the background studies' progress (results/experiments/queue.sh) back into the
# repository, ready to commit, so that the next machine resumes where these runs are now:
#
#   results/experiments/collect.sh            # then: git add results/experiments && git commit
#
# 1. `experiment --suite=all --save_progress` in the work directory: the newest checkpoint of
#    every unfinished training run goes into <suite>/runs/<variant>/ckpt/ of its results.
# 2. Every suite of <work>/results/experiments is copied over the repository's, without
#    examples/ (attacked images, git-ignored) and lock files; partial/ (CLEVER cells in
#    progress) and ckpt/ are replaced, not merged, so finished ones disappear; a ckpt/ beside
#    final weights is dropped; of the example / feature figures only the one every report
#    shows is kept (BSD100 101085, FDA 8/255).
# 3. `experiment --suite=all --report_only` with the repository's code rewrites every suite's
#    suite.md and figures and the overview.
# The runs may go on meanwhile (a cell being written is picked up by the next collect).
# Work directory: $TFSR_STUDIES_WORK, default ../studies_work beside the repository.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${TFSR_STUDIES_WORK:-$repo/../studies_work}
python=${PYTHON:-$repo/.venv/bin/python}
keep_example=bsd100__101085__fda_relu__8.png
[ -d "$work/results/experiments" ] || {
  echo "collect.sh: no $work/results/experiments (nothing was queued there)" >&2; exit 2; }
export TF_CPP_MIN_LOG_LEVEL=2 TFSR_DATA_DIR=${TFSR_DATA_DIR:-$(cd "$repo/.." && pwd)/shared/data}

(cd "$work" && PYTHONPATH="$repo" "$python" -m tfsr_defense.experiment --suite=all \
  --save_progress --recipe="$repo/flags/experiments/edsr_x4_study.cfg")

for src in "$work"/results/experiments/*/; do
  suite=$(basename "$src")
  [ -f "$src/suite.json" ] || continue
  dst=$repo/results/experiments/$suite
  if [ -d "$dst" ]; then
    find "$dst" -depth -type d \( -name partial -o -name ckpt \) -exec rm -rf {} +
  fi
  tar -C "$work/results/experiments" -cf - --exclude=examples --exclude='*.lock' "$suite" \
    | tar -C "$repo/results/experiments" -xf -
  find "$dst" -type f \( -name 'example__*' -o -name 'features__*' \) \
    ! -name "*__$keep_example" -delete
  for weights in "$dst"/runs/*/model.weights.h5; do
    [ -f "$weights" ] && rm -rf "$(dirname "$weights")/ckpt"
  done
  echo "collected $suite"
done

(cd "$repo" && "$python" -m tfsr_defense.experiment --suite=all --report_only \
  --recipe=flags/experiments/edsr_x4_study.cfg)
git -C "$repo" status --short results/experiments | sed -n '1,40p'
