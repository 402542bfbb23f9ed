#!/usr/bin/env bash
# The GPU check, as one script for a machine with a CUDA device and no network (see BENCHMARKS.md, "GPU").
#
#   bash bench/device_check.sh            # results under $OUT (default /tmp/recfeed-device)
#   DEV=cpu JOBS=2 bash bench/device_check.sh   # the same steps on a machine without one (a dry run)
#   BUDGET=520 bash bench/device_check.sh # stop starting steps once 520 s have passed (default 540)
#   WHEELS=none DEV=cpu JOBS=2 bash bench/device_check.sh  # a dry run with the venv's packages (PATH=.venv/bin:...)
#
# Wheels of what the machine lacks may be carried in .whl/ (session 32: gymnasium, farama-notifications,
# stable-baselines3, implicit, faiss-cpu and the serving stack with opentelemetry-api, 31 MB). The hashing encoder
# (D = 384) stands in for MiniLM, whose weights are not on such a machine: throughput does not depend on which encoder
# built the world. Steps, each under its own time limit and all under BUDGET seconds, so that one that fails or hangs
# leaves the others' figures, the most wanted first (the order of session 43): the package's install (no index, no
# deps); the tests that run torch code on the device (pytest-xdist over JOBS workers; policies there load on "auto",
# i.e. on the GPU), the update's sync-debug test of session 34 among them; PPO training throughput (collect / update
# split) of the default config with the rollouts collected on a CPU copy of the policy (train.collect_device=cpu, the
# default since session 32); the update alone against SB3's own (bench.update_speed, session 34); the host-device
# copies per step (bench.host_device_copies) both ways; the same throughput on the CPU alone; a 300k-step train.py on
# the GPU with short references (session 32's comparison command); then the throughput collecting on the GPU
# (=train), of the `adapt` protocol's learner (configs/quality-adapt.yaml), of 4x the default batch and with 4 torch
# threads. Session 31 ran the whole suite there (224 s); sessions 32 and 43 only the tests with device code.
#
# Everything lands in 7 files under $OUT (device.txt, stages.txt, tests.log, throughput.jsonl, update.jsonl,
# copies.jsonl, train.log; the device tool returns at most 8), each written as its step ends: run it with the tool's
# own OUT (`bash bench/device_check.sh`, no redirection) so that a call cut at its time limit still returns the steps
# that finished (session 43's call kept its files in /tmp until the end; the machine was lost, so nothing came back).
set -uo pipefail
OUT=${OUT:-/tmp/recfeed-device}
DEV=${DEV:-cuda}
JOBS=${JOBS:-12}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RECFEED_CACHE=/tmp/recfeed-cache
WHEELS=${WHEELS:-.whl}  # WHEELS=none: use what the Python on PATH has (a dry run)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
ENC=(--set encoder.kind=hashing --set encoder.hashing_dim=384)
BUDGET=${BUDGET:-540}
stage() { echo "== [$(date +%T), ${SECONDS}s] $*" | tee -a "$OUT/stages.txt"; }
run() {  # run LIMIT CMD...: CMD under min(LIMIT, what is left of BUDGET) seconds; skipped when under 20 s are left
  local limit=$1 left=$((BUDGET - SECONDS)); shift
  if ((left < 20)); then echo "skipped: ${left}s of the budget left" | tee -a "$OUT/stages.txt"; return 0; fi
  timeout $((limit < left ? limit : left)) "$@"
}
{
  nvidia-smi -L
  nproc
  python3 -c "import torch, numpy, numba, gymnasium, stable_baselines3 as sb3; print('torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'numba', numba.__version__, 'gymnasium',
gymnasium.__version__, 'sb3', sb3.__version__)"
} 2>&1 | tee "$OUT/device.txt"

stage "install (no index, no deps: the package itself, built and installed into a folder of its own)"
{ python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/rf-pkg . 2>&1 | tail -3 \
  && (cd /tmp && PYTHONPATH=/tmp/rf-pkg:${PYTHONPATH:-} python3 -c "import envs, agents.training, train, evaluate;
print('installed package imports from', envs.__file__)"); } 2>&1 | tee -a "$OUT/device.txt"

stage "the tests that run torch code on the device ($JOBS workers)"
run 150 python3 -m pytest -q -p no:cacheprovider -n "$JOBS" -rfEs tests/test_gpu.py tests/test_rollouts.py \
  tests/test_distributions.py tests/test_policies.py tests/test_critic_state.py tests/test_host_device_copies.py \
  tests/test_ppo_update.py 2>&1 | tail -40 | tee "$OUT/tests.log"

tp() {  # tp LABEL ARGS...: one throughput figure, appended to throughput.jsonl with its label
  local label=$1; shift
  stage "train throughput: $label"
  run 90 python3 -m bench.train_throughput --rollouts 3 --repeats 3 "${ENC[@]}" "$@" 2>&1 \
    | tail -1 | sed "s/^{/{\"label\": \"$label\", /" | tee -a "$OUT/throughput.jsonl"
}
copies() {  # copies ARGS...: host-device copies per step, appended to copies.jsonl
  stage "host-device copies: $*"
  run 60 python3 -m bench.host_device_copies --set "train.device=$DEV" "${ENC[@]}" "$@" 2>&1 | tail -1 \
    | tee -a "$OUT/copies.jsonl"
}
ADAPT=(--config configs/quality-adapt.yaml)
X4=(--set train.ppo.n_envs=1024 --set train.ppo.batch_size=8192)
tp "default, $DEV, collect cpu" --threads 1 --set "train.device=$DEV" --set train.collect_device=cpu
stage "the update alone: recfeed's (one host read) against SB3's, alternately (session 34)"
run 90 python3 -m bench.update_speed --repeats 5 "${ENC[@]}" --set "train.device=$DEV" 2>&1 | tail -1 \
  | tee -a "$OUT/update.jsonl"
copies --set train.collect_device=cpu
copies --set train.collect_device=train
tp "default, cpu" --threads 1 --set train.device=cpu
stage "train.py on $DEV (300k steps, short references: the command of session 32's CPU comparison)"
RUNS=$(mktemp -d /tmp/recfeed-runs.XXXXXX)  # a folder of this run's own: its summary.json is the only one there
run 120 python3 train.py --quiet --set "train.device=$DEV" --set train.total_timesteps=300000 "${ENC[@]}" \
  --set eval.tune_episodes=100 --set eval.episodes=100 --set train.eval_every=0 --set train.checkpoint_every=0 \
  --out "$RUNS" 2>&1 | tail -40 | tee "$OUT/train.log"
{ echo "summary.json:"; cat "$RUNS"/*/summary.json; } >>"$OUT/train.log" 2>/dev/null
tp "default, $DEV, collect $DEV" --threads 1 --set "train.device=$DEV" --set train.collect_device=train
tp "adapt learner, $DEV, collect cpu" --threads 1 "${ADAPT[@]}" --set "train.device=$DEV" --set train.collect_device=cpu
tp "default 4x batch, $DEV, collect cpu" --threads 1 "${X4[@]}" --set "train.device=$DEV" --set train.collect_device=cpu
tp "default, $DEV, collect cpu, 4 torch threads" --threads 4 --set "train.device=$DEV" --set train.collect_device=cpu
tp "adapt learner, $DEV, collect $DEV" --threads 1 "${ADAPT[@]}" --set "train.device=$DEV" \
  --set train.collect_device=train
tp "default 4x batch, $DEV, collect $DEV" --threads 1 "${X4[@]}" --set "train.device=$DEV" \
  --set train.collect_device=train
stage "done"
