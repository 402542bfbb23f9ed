#!/usr/bin/env bash
# The GPU check, as one script for a machine with a CUDA device and no network (see BENCHMARKS.md, "GPU").
#
#   bash bench/device_check.sh            # results under $OUT (default /tmp/recfeed-device)
#   DEV=cpu JOBS=2 bash bench/device_check.sh   # the same steps on a machine without one (a dry run)
#
# Wheels of what the machine lacks may be carried in .whl/ (session 31: gymnasium, farama-notifications,
# stable-baselines3, implicit, faiss-cpu and the serving stack, 31 MB; BENCHMARKS.md, "GPU ... session 31"). The
# hashing encoder (D = 384) stands in for MiniLM, whose weights are not on such a machine: throughput does not
# depend on which encoder built the world. Steps, each under its own time limit so that one
# that fails or hangs leaves the others' figures, the most wanted first: the package's install (no index, no deps);
# the test suite but the serving layer's (which needs no GPU and more wheels) on that machine (pytest-xdist over JOBS
# workers; policies there load on "auto", i.e. on the GPU, so the training and export tests run their torch code on
# cuda); PPO training throughput on the GPU and on the CPU (same config, collect / update split) for the default
# config; the host-device copies per step (bench.host_device_copies); a short train.py on the GPU; then the
# throughput of the `adapt` protocol's learner (configs/quality-adapt.yaml) and of 4x the default batch. In
# session 31 the whole suite took 224 s of that machine and the steps after it about 300 s.
set -uo pipefail
OUT=${OUT:-/tmp/recfeed-device}
DEV=${DEV:-cuda}
JOBS=${JOBS:-12}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RECFEED_CACHE=/tmp/recfeed-cache
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
ENC=(--set encoder.kind=hashing --set encoder.hashing_dim=384)
stage() { echo "== [$(date +%T), ${SECONDS}s] $*" | tee -a "$OUT/stages.txt"; }
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
print('installed package imports from', envs.__file__)"); } 2>&1 | tee "$OUT/install.log"

stage "the test suite ($JOBS workers)"
timeout 200 python3 -m pytest -q -p no:cacheprovider -n "$JOBS" -rfEs --ignore-glob='tests/test_serving*.py' 2>&1 \
  | tail -60 | tee "$OUT/tests.log"

tp() {  # tp LABEL ARGS...: one throughput figure, appended to throughput.jsonl with its label
  local label=$1; shift
  stage "train throughput: $label"
  timeout 150 python3 -m bench.train_throughput --threads 1 --rollouts 3 --repeats 3 "${ENC[@]}" "$@" 2>&1 \
    | tail -1 | sed "s/^{/{\"label\": \"$label\", /" | tee -a "$OUT/throughput.jsonl"
}
tp "default, $DEV" --set "train.device=$DEV"
tp "default, cpu" --set train.device=cpu
stage "host-device copies per collection step and update minibatch (default config, then the adapt learner)"
for cfg in "" configs/quality-adapt.yaml; do
  timeout 120 python3 -m bench.host_device_copies ${cfg:+--config "$cfg"} --set "train.device=$DEV" "${ENC[@]}" 2>&1 \
    | tail -1 | tee -a "$OUT/copies.jsonl"
done
stage "train.py on $DEV"
timeout 150 python3 train.py --quiet --set "train.device=$DEV" --set train.total_timesteps=500000 "${ENC[@]}" \
  --out /tmp/recfeed-runs 2>&1 | tail -40 | tee "$OUT/train.log"
tp "adapt learner, $DEV" --config configs/quality-adapt.yaml --set "train.device=$DEV"
tp "adapt learner, cpu" --config configs/quality-adapt.yaml --set train.device=cpu
tp "default 4x batch, $DEV" --set "train.device=$DEV" --set train.ppo.n_envs=1024 --set train.ppo.batch_size=8192
stage "done"
