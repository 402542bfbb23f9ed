#!/usr/bin/env bash
# The GPU check, as one script for a machine with a CUDA device and no network (see BENCHMARKS.md, "GPU").
#
#   bash bench/device_check.sh            # results under $OUT (default /tmp/recfeed-device)
#
# Wheels of what the machine lacks (gymnasium, stable-baselines3, implicit, ...) may be carried in .whl/.
# The hashing encoder (D = 384) stands in for MiniLM, whose weights are not on such a machine: throughput does
# not depend on which encoder built the world. Steps: the package's install (no index, no deps), the GPU tests
# and the distribution / policy tests on that machine, PPO training throughput on cuda and on cpu (same config,
# collect / update split), and a short train.py run on cuda.
set -uo pipefail
OUT=${OUT:-/tmp/recfeed-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RECFEED_CACHE=/tmp/recfeed-cache
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
ENC=(--set encoder.kind=hashing --set encoder.hashing_dim=384)
{
  nvidia-smi -L
  nproc
  python3 -c "import torch, numpy, numba, gymnasium, stable_baselines3 as sb3; print('torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'numba', numba.__version__, 'gymnasium',
gymnasium.__version__, 'sb3', sb3.__version__)"
} 2>&1 | tee "$OUT/device.txt"

echo "== install (no index, no deps: the package itself, built and installed into a folder of its own)"
{ python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/rf-pkg . 2>&1 | tail -3 \
  && (cd /tmp && PYTHONPATH=/tmp/rf-pkg:${PYTHONPATH:-} python3 -c "import envs, agents.training, train, evaluate;
print('installed package imports from', envs.__file__)"); } 2>&1 | tee "$OUT/install.log"

echo "== tests"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_distributions.py \
  tests/test_policies.py 2>&1 | tail -15 | tee "$OUT/tests.log"

for dev in cuda cpu; do
  echo "== train throughput on $dev (the default config)"
  timeout 240 python3 -m bench.train_throughput --threads 1 --rollouts 3 --repeats 3 --set "train.device=$dev" \
    "${ENC[@]}" 2>&1 | tail -1 | tee "$OUT/throughput_$dev.json"
done
echo "== train throughput on cuda, 4x the batch (n_envs 1024, minibatch 8192)"
timeout 240 python3 -m bench.train_throughput --threads 1 --rollouts 3 --repeats 3 --set train.device=cuda \
  --set train.ppo.n_envs=1024 --set train.ppo.batch_size=8192 "${ENC[@]}" 2>&1 | tail -1 \
  | tee "$OUT/throughput_cuda_big.json"

echo "== train.py on cuda"
timeout 300 python3 train.py --quiet --set train.device=cuda --set train.total_timesteps=1000000 "${ENC[@]}" \
  --out /tmp/recfeed-runs 2>&1 | tail -40 | tee "$OUT/train.log"
