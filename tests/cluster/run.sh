#!/usr/bin/env bash
# CI check: the SLURM profile (profiles/slurm) on a real one-node SLURM cluster.
#
#   . .venv/bin/activate       # dmflow, snakemake and snakemake-executor-plugin-slurm
#   bash tests/cluster/run.sh  # as root on Debian 12 (installs slurm-wlm and munge)
#
# 1. starts the cluster (tests/cluster/slurm-up.sh),
# 2. runs the real Snakefile (a copy, with rules/, profiles/, report/, ...) with a
#    tiny config (the values of tiny_config() in tests/helpers.py) twice, side by
#    side in two scratch folders:
#      slurm/: snakemake --workflow-profile profiles/slurm   (every job but the localrules an sbatch job)
#      local/: snakemake --cores 2                           (profiles/default)
#    The config asks for a GPU per training job (train.request_gpu, device auto; the
#    cluster has two stand-in GPUs, /dev/null and /dev/zero) and gives a time limit from
#    train.seconds_per_model; a chunk trains in 4 stacks, and the first fit chunk's job
#    is cancelled (scancel, as a preemption) once its first stack is saved,
# 3. checks that SLURM really ran the jobs (slurmctld's job completion log), the sbatch
#    lines (--gpus=1 and -t from seconds per model for training jobs only, none for
#    the local rules), that the cancelled chunk's retry resumed after the saved
#    stack, and that every trained chunk and results/datamodels/0.5.npz of both runs
#    are bit-identical,
# 4. always stops the daemons (tests/cluster/slurm-down.sh).
#
# Exits non-zero on any failure. The scratch folder is removed on success and kept
# (path printed) on failure or with KEEP_WORK=1. About 4-5 minutes on 2 cores.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
UP=0
LOCAL_PID=
SLURM_PID=
KILL_PID=
WORK=

say() { echo "[cluster-ci $(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "[cluster-ci $(( $(date +%s) - T0 ))s] FAIL: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Interrupted: stop the snakemake runs (timeout passes SIGTERM on to snakemake and
    # kills it 10 s later), then the cluster (slurm-down.sh cancels leftover jobs).
    if [ -n "$KILL_PID" ]; then kill "$KILL_PID" 2>/dev/null || true; fi
    for pid in $SLURM_PID $LOCAL_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "cluster-ci: stopping snakemake (pid $pid)" >&2
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ "$UP" = 1 ]; then
        bash "$HERE/slurm-down.sh" || { echo "cluster-ci: slurm-down.sh failed" >&2; rc=1; }
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$rc" -eq 0 ] && [ -z "${KEEP_WORK:-}" ]; then
            rm -rf "$WORK"
        else
            echo "cluster-ci: scratch folder kept: $WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preconditions: the caller's venv -----------------------------------------------
command -v dmflow >/dev/null || fail "dmflow is not on PATH: activate the venv first (. .venv/bin/activate)"
command -v snakemake >/dev/null || fail "snakemake is not on PATH: activate the venv first"
# importlib.metadata, not an import: importing the plugin (or `snakemake --version`)
# runs sacct/scontrol, which hang ~10 s while no slurmctld is up.
version() { python -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null; }
SMK=$(version snakemake) || fail "snakemake is not installed in the active python"
PLUGIN=$(version snakemake-executor-plugin-slurm) \
    || fail "snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm)"
say "snakemake $SMK, snakemake-executor-plugin-slurm $PLUGIN, dmflow at $(command -v dmflow)"
unset SNAKEMAKE_PROFILE   # only the profiles of this repository

# --- 1. the cluster -------------------------------------------------------------------
up_rc=0
bash "$HERE/slurm-up.sh" || up_rc=$?
[ "$up_rc" -eq 3 ] && fail "SLURM daemons already running (not started here, left alone); stop them with tests/cluster/slurm-down.sh"
UP=1   # from here on, stop whatever did start, even after a failed start
[ "$up_rc" -eq 0 ] || fail "slurm-up.sh failed (exit $up_rc)"
say "cluster up"

# --- 2. two scratch copies of the workflow with the tiny config ------------------------
WORK=$(mktemp -d /tmp/dmflow-cluster-ci.XXXXXX)
for run in slurm local; do
    mkdir "$WORK/$run"
    # What tests/helpers.py's Workflow copies, and the other workflow folders there are.
    cp -r "$REPO/Snakefile" "$REPO/rules" "$REPO/profiles" "$WORK/$run/"
    for extra in report envs schemas scripts; do
        if [ -e "$REPO/$extra" ]; then cp -r "$REPO/$extra" "$WORK/$run/"; fi
    done
    # The values of tiny_config() in tests/helpers.py (keep them in sync), but train: 10
    # epochs in stacks of 10 (a chunk of 40 models is 4 stacks, seconds apart), one GPU
    # asked per training job, 2 s a model for the time limits (x-result: false keys).
    cat > "$WORK/$run/config.yaml" <<'YAML'
results: results
seed: 3
dataset: {name: digits, num_train: 100, num_targets: 30}
masks: {alphas: [0.5], chunk_size: 40, fit_models: 80, eval_chunk_size: 10, eval_models: 10, eval_replicates: 2}
model: {arch: mlp, hidden: [16]}
train: {epochs: 10, batch_size: 25, stack_size: 10, lr: 0.01, request_gpu: true, seconds_per_model: 2}
fit: {targets_per_job: 16, num_lambdas: 8, lambda_min_ratio: 0.01}
evaluate: {learning_curve: [0.5, 1.0]}
counterfactual: {num_targets: 4, ks: [2, 5], replicates: 2}
YAML
done
say "scratch folder $WORK"

# The local run goes in the background at the lowest CPU priority: the SLURM run
# mostly waits between status checks, and the local jobs fill those gaps without
# slowing the SLURM jobs down (threads are fixed by the config, so priority and
# load cannot change the results).
(cd "$WORK/local" && exec nice -n 19 timeout -k 10 600 snakemake --cores 2) > "$WORK/local/snakemake.log" 2>&1 &
LOCAL_PID=$!
say "local run started (pid $LOCAL_PID): nice -n 19 snakemake --cores 2"

# A preemption: once the first fit chunk's job has saved its first stack, cancel it (SIGTERM,
# then SIGKILL). Snakemake retries it (retries: 2); the retry must resume after that stack.
KILL_CHUNK=results/train/0.5/fit/00000
kill_mid_chunk() {
    local stack="$WORK/slurm/$KILL_CHUNK.stacks/00000.npz" id=
    for _ in $(seq 1 3000); do [ -e "$stack" ] && break; sleep 0.1; done
    [ -e "$stack" ] || { echo "no stack file $stack appeared"; return 1; }
    id=$(squeue -h -t RUNNING -o '%i %k' | awk '$2 ~ /^rule_train_chunk_wildcards_.*fit_00000$/ {print $1}')
    [ -n "$id" ] || { echo "no running job for $KILL_CHUNK"; return 1; }
    scancel "$id"
    if [ -e "$WORK/slurm/$KILL_CHUNK.npz" ]; then echo "job $id had finished the chunk before scancel"; return 1; fi
    echo "cancelled job $id after $(ls "$WORK/slurm/$KILL_CHUNK.stacks" | grep -c '\.npz$') saved stack(s)"
}
kill_mid_chunk > "$WORK/kill.log" 2>&1 &
KILL_PID=$!

say "SLURM run: snakemake --workflow-profile profiles/slurm --verbose"
T_SLURM=$(date +%s)
# In the background too, so that a signal to this script is handled at once. --verbose logs
# each sbatch call.
(cd "$WORK/slurm" && exec timeout -k 10 600 snakemake --workflow-profile profiles/slurm --verbose) \
    > "$WORK/slurm/snakemake.log" 2>&1 &
SLURM_PID=$!
slurm_rc=0
wait "$SLURM_PID" || slurm_rc=$?
SLURM_PID=
kill_rc=0
wait "$KILL_PID" || kill_rc=$?
KILL_PID=
T_SLURM=$(( $(date +%s) - T_SLURM ))
if [ "$slurm_rc" -ne 0 ]; then
    tail -n 80 "$WORK/slurm/snakemake.log" >&2
    echo "--- squeue:" >&2; squeue >&2 || true
    echo "--- slurmctld.log (tail):" >&2; tail -n 20 /tmp/slurm/log/slurmctld.log >&2 || true
    fail "the SLURM run failed (exit $slurm_rc$([ "$slurm_rc" -ge 124 ] && echo ', timed out'), ${T_SLURM}s); log: $WORK/slurm/snakemake.log"
fi
grep -q "Using workflow specific profile profiles/slurm" "$WORK/slurm/snakemake.log" \
    || fail "the SLURM run did not use profiles/slurm"
RUN_ID=$(sed -n 's/^SLURM run ID: //p' "$WORK/slurm/snakemake.log" | head -n 1)
[ -n "$RUN_ID" ] || fail "no 'SLURM run ID' in the log: did the slurm executor run?"
SUBMITTED=$(grep -c "has been submitted with SLURM jobid" "$WORK/slurm/snakemake.log" || true)
RECORDS=$(grep -F "Name=$RUN_ID " /tmp/slurm/jobcomp.txt 2>/dev/null || true)
COMPLETED=$(grep -c "JobState=COMPLETED " <<<"$RECORDS" || true)
ENDED=$(grep -c "JobState=" <<<"$RECORDS" || true)
[ "$SUBMITTED" -gt 0 ] || fail "snakemake submitted no SLURM jobs"
[ "$COMPLETED" -gt 0 ] && [ "$ENDED" -eq "$SUBMITTED" ] \
    || fail "snakemake submitted $SUBMITTED SLURM jobs; slurmctld's job log has $ENDED ended, $COMPLETED COMPLETED, for $RUN_ID"
RETRIED=""
[ "$COMPLETED" -eq "$ENDED" ] || RETRIED=", $(( ENDED - COMPLETED )) failed and retried"
say "SLURM run done in ${T_SLURM}s: $SUBMITTED sbatch jobs, $COMPLETED COMPLETED according to slurmctld$RETRIED (run $RUN_ID)"

# --- the sbatch lines: a GPU and a time limit for training jobs, nothing for the local rules -----
SBATCH=$(grep -o 'sbatch call: .*' "$WORK/slurm/snakemake.log" | sed 's/ --wrap=.*//' || true)
TRAIN_LINES=$(grep -- '--comment rule_train_chunk_' <<<"$SBATCH" || true)
echo "$TRAIN_LINES" | sed 's/^/    /'
[ -n "$TRAIN_LINES" ] || fail "no sbatch call of a train_chunk job in the log (--verbose)"
if grep -v -- '--gpus=1' <<<"$TRAIN_LINES" | grep -q .; then fail "a train_chunk job was submitted without --gpus=1"; fi
if grep -v -- '--comment rule_train_chunk_' <<<"$SBATCH" | grep -q -- '--gpus'; then fail "a job other than train_chunk asked for a GPU"; fi
if grep -Eq -- '--comment rule_(make_masks|merge_fit|summary|counterfactual_analyse)' <<<"$SBATCH"; then
    fail "a local rule (make_masks, merge_fit, summary, counterfactual_analyse) was submitted to SLURM"
fi
# ceil((120 + models x 2 s) x 1.5 / 60) minutes, x attempt: fit chunks 40 models, eval 10 x 2
check_limit() {  # check_limit CHUNK MINUTES WHAT
    grep -Eq -- "--comment rule_train_chunk_wildcards_0\.5_$1 .*-t $2( |\$)" <<<"$TRAIN_LINES" \
        || fail "no sbatch line for $3 ($1) with -t $2"
}
check_limit fit_00000 5 "the first try of the cancelled fit chunk"
check_limit fit_00000 10 "its retry (attempt 2: twice the time)"
check_limit eval_00000 4 "the eval chunk"
say "sbatch lines: --gpus=1 and -t from 2 s a model for $(wc -l <<<"$TRAIN_LINES") train_chunk submissions; local rules not submitted"

# --- the cancelled chunk resumed ------------------------------------------------------------
[ "$kill_rc" -eq 0 ] || fail "could not cancel $KILL_CHUNK mid-chunk: $(cat "$WORK/kill.log")"
grep -q "JobState=CANCELLED" <<<"$RECORDS" || fail "slurmctld recorded no CANCELLED job: $(cat "$WORK/kill.log")"
grep -q "stacks (.* models) were trained before" "$WORK/slurm/results/logs/train_chunk/0.5/fit/00000.log" \
    || fail "the retry of $KILL_CHUNK did not resume (results/logs/train_chunk/0.5/fit/00000.log)"
if find "$WORK/slurm/results" -name '*.stacks' | grep -q .; then fail "saved stacks left behind after the run"; fi
say "$(cat "$WORK/kill.log"); the retry resumed: $(grep -o 'resuming .*' "$WORK/slurm/results/logs/train_chunk/0.5/fit/00000.log")"

local_rc=0
wait "$LOCAL_PID" || local_rc=$?
LOCAL_PID=
if [ "$local_rc" -ne 0 ]; then
    tail -n 80 "$WORK/local/snakemake.log" >&2
    fail "the local run failed (exit $local_rc); log: $WORK/local/snakemake.log"
fi
say "local run done: $(grep -o 'Elapsed time: [0-9:.]*' "$WORK/local/snakemake.log" | tail -n 1 || true)"

# --- 3. bit-identical chunks and datamodels ----------------------------------------------
(cd "$WORK/slurm" && find results/train -name '*.npz' | sort) > "$WORK/chunks.txt"
[ "$(wc -l < "$WORK/chunks.txt")" -ge 4 ] || fail "too few trained chunks: $(cat "$WORK/chunks.txt")"
while read -r chunk; do
    cmp -s "$WORK/slurm/$chunk" "$WORK/local/$chunk" || fail "$chunk differs between the SLURM and the local run"
done < "$WORK/chunks.txt"
say "$(wc -l < "$WORK/chunks.txt") trained chunks byte-identical to the local run's (the cancelled one included)"
python - "$WORK/slurm/results/datamodels/0.5.npz" "$WORK/local/results/datamodels/0.5.npz" <<'PY'
import sys

import numpy as np

slurm_path, local_path = sys.argv[1:3]
with np.load(slurm_path, allow_pickle=False) as s, np.load(local_path, allow_pickle=False) as l:
    # the provenance member records where and with what each ran, not a result: not compared
    a = {k: s[k] for k in s.files if k != "provenance"}
    b = {k: l[k] for k in l.files if k != "provenance"}
problems = []
if set(a) != set(b):
    problems.append(f"keys differ: only SLURM {sorted(set(a) - set(b))}, only local {sorted(set(b) - set(a))}")
same = 0
for key in sorted(set(a) & set(b)):
    x, y = a[key], b[key]
    if x.dtype != y.dtype or x.shape != y.shape:
        problems.append(f"{key}: SLURM {x.dtype}{list(x.shape)} vs local {y.dtype}{list(y.shape)}")
        continue
    nan_ok = x.dtype.kind in "fc"
    if np.array_equal(x, y, equal_nan=nan_ok) and x.tobytes() == y.tobytes():
        same += 1
        continue
    differ = ~((x == y) | (np.isnan(x) & np.isnan(y))) if nan_ok else (x != y)
    count = int(np.count_nonzero(differ))
    if count == 0:  # equal values, different bits
        problems.append(f"{key}: equal values but different bytes (-0.0 vs 0.0 or NaN payloads)")
        continue
    text = f"{key}: {count} of {x.size} elements differ"
    if x.dtype.kind in "iufc":
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        text += f", max |SLURM - local| = {np.nanmax(d) if np.isfinite(d).any() else d.max():.3g}"
        first = tuple(int(i) for i in np.argwhere(differ)[0]) if x.ndim else ()
        text += f", first at {first}: SLURM {x[first]!r} local {y[first]!r}"
    problems.append(text)
if problems or same == 0:
    print("SLURM run DIFFERS from local run (results/datamodels/0.5.npz):", file=sys.stderr)
    for p in problems or ["no arrays"]:
        print("  " + p, file=sys.stderr)
    sys.exit(1)
print(f"SLURM run matches local run: {same} arrays identical (results/datamodels/0.5.npz)")
PY
say "OK: the SLURM profile ran the workflow on a real SLURM cluster; total $(( $(date +%s) - T0 ))s"
