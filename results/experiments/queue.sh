#!/usr/bin/env bash
# Run study variants one after another on one core, in the background-friendly layout the
# studies use (README "Reproducing the paper's studies"): the code of HEAD frozen in a
# snapshot (so the repository stays editable while the runs go on), runs and results in a
# work directory outside the repository, one process per core.
#
#   results/experiments/queue.sh CORE JOB [JOB ...]
#   JOB = SUITE/VARIANT (train if needed, then evaluate) or SUITE/VARIANT/train (train only)
#
# e.g. (both cores, detached; each core works through its list in order):
#   nohup results/experiments/queue.sh 0 "adversarial/Adv" "delta/delta=0.01/train" \
#       > /dev/null 2>&1 &
#   nohup results/experiments/queue.sh 1 "adversarial/ER+Adv" "delta/delta=0.1/train" \
#       > /dev/null 2>&1 &
#
# Work directory: $TFSR_STUDIES_WORK, default ../studies_work beside the repository. On its
# first use it receives a copy of results/experiments (runs are restored from the committed
# weights and checkpoints there) and a snapshot of tfsr_defense/ and flags/ at HEAD; later
# calls reuse both (delete <work>/code to take a newer HEAD when no run is going). Logs:
# <work>/logs/queue_core<CORE>.log (one line per job start / end) and
# <work>/logs/<suite>_core<CORE>.log (the runs' output). Bring the progress back into the
# repository with results/experiments/collect.sh.
set -uo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
core=$1
shift
case "$core" in
  ''|*[!0-9]*) echo "queue.sh: CORE must be a core number (0, 1, ...), got '$core'" >&2; exit 2;;
esac
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${TFSR_STUDIES_WORK:-$repo/../studies_work}
python=${PYTHON:-$repo/.venv/bin/python}
data=${TFSR_DATA_DIR:-$(cd "$repo/.." && pwd)/shared/data}
[ -x "$python" ] || { echo "queue.sh: no Python at $python (set up the venv, README 'Set up')" >&2; exit 2; }
[ -d "$data" ] || { echo "queue.sh: no data directory $data (set TFSR_DATA_DIR)" >&2; exit 2; }
for job in "$@"; do  # check every job before starting any
  IFS=/ read -r suite variant mode <<< "$job"
  if [ -z "$suite" ] || [ -z "$variant" ] || { [ -n "$mode" ] && [ "$mode" != train ]; }; then
    echo "queue.sh: job '$job' is not SUITE/VARIANT or SUITE/VARIANT/train" >&2
    exit 2
  fi
done

mkdir -p "$work/logs" "$work/results"
if [ ! -d "$work/code/tfsr_defense" ]; then
  mkdir -p "$work/code"
  git -C "$repo" archive HEAD tfsr_defense flags | tar -x -C "$work/code"
  git -C "$repo" rev-parse HEAD > "$work/code/COMMIT"
fi
[ -d "$work/results/experiments" ] || cp -r "$repo/results/experiments" "$work/results/"
ln -sfn "$work/code/flags" "$work/flags"

cd "$work"
for job in "$@"; do
  IFS=/ read -r suite variant mode <<< "$job"
  evaluate=true
  [ "$mode" = train ] && evaluate=false
  echo "$(date -u +%FT%TZ) start $suite / $variant (evaluate=$evaluate, code $(cat code/COMMIT))" \
    >> "logs/queue_core$core.log"
  PYTHONPATH="$work/code" TFSR_DATA_DIR="$data" TF_CPP_MIN_LOG_LEVEL=2 \
    taskset -c "$core" "$python" -m tfsr_defense.experiment --suite="$suite" \
    --recipe=flags/experiments/edsr_x4_study.cfg --variant="$variant" --evaluate="$evaluate" \
    >> "logs/${suite}_core$core.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $suite / $variant: exit $rc" >> "logs/queue_core$core.log"
done
