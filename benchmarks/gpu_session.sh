#!/usr/bin/env bash
# One prepared GPU session (a CUDA machine lent for a few minutes):
#   bash benchmarks/gpu_session.sh OUT_DIR INIT_RUN [TRAIN_MINUTES...]
# 1. the CUDA tests; 2. L = 16 training on the GPU warm-started from INIT_RUN (a trained L = 16 run),
# evaluated at the given marks (default 1 2 3.5 min); 3. the README entry points (train.py,
# sample.py mode=compare) on the GPU; 4. the three-sampler comparison on the GPU-trained flow, on
# the GPU. Everything goes to OUT_DIR/session.log; results and the new run directory are packed
# into OUT_DIR/results.tgz after each step, so a run cut short still returns what it finished.
# Needs the package's dependencies importable (e.g. PYTHONPATH=.:<site dir>).
# On an H200 (2026-11-26, benchmarks/results/gpu_session_H200.log) steps 1-3 took 230 s and step 4
# did not finish in SAMPLE_S = 130 s: latent HMC is launch-bound on a GPU; raise SAMPLE_S if time allows.
set -u -o pipefail
OUT=${1:?usage: gpu_session.sh OUT_DIR INIT_RUN [minutes...]}
INIT=${2:?usage: gpu_session.sh OUT_DIR INIT_RUN [minutes...]}
shift 2
MINUTES=${*:-1 2 3.5}
BATCH=${BATCH:-2048}
SAMPLE_S=${SAMPLE_S:-130}
PY=${PYTHON:-python3}
DEV=${DEV:-cuda}            # DEV=cpu for a dry run of this script without a GPU
TRAINER=$([ "$DEV" = cpu ] && echo cpu || echo gpu)
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
TMP=$(mktemp -d)
LOG=$OUT/session.log
pack() { tar czf "$OUT/results.tgz" -C "$TMP" . 2>/dev/null; }
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "=== $1 ($(( $(date +%s) - t0 )) s)"; }

stamp "device"
nvidia-smi -L || true
$PY -c "import torch, pytorch_lightning, normflows, hydra; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

stamp "CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/test_hmc.py -k cuda

stamp "L = 16 training on the GPU (batch $BATCH, marks $MINUTES min)"
mkdir -p "$TMP/bench"
timeout 420 $PY benchmarks/train_quality.py --L 16 --minutes $MINUTES --tag _gpu --eval-samples 16384 -- \
    batch_size=$BATCH init_from="$INIT" optimizer.lr=0.001
RUN=$(ls -d benchmarks/results/runs/L16_gpu_* 2>/dev/null | tail -1)
cp benchmarks/results/train_quality_L16_gpu.json "$TMP/bench/" 2>/dev/null
[ -n "$RUN" ] && cp -r "$RUN" "$TMP/"
pack

stamp "entry points on the GPU: train.py + sample.py mode=compare (L = 8, short)"
timeout 120 $PY train.py experiment=demo steps=150 eval_every=50 final_eval_samples=4096 logger=none \
    trainer=$TRAINER hydra.run.dir="$TMP/entry_train"
timeout 120 $PY sample.py run="$TMP/entry_train" mode=compare device=$DEV settings.n_chains=128 \
    settings.n_warmup=60 settings.n_samples=120 importance_samples=8192 out_dir="$TMP/entry_sample"
rm -rf "$TMP/entry_train/checkpoints" "$TMP/entry_sample/samples.npz"
pack

if [ -n "$RUN" ]; then
  stamp "three samplers on the GPU-trained flow, on the GPU (limit ${SAMPLE_S} s)"
  timeout "$SAMPLE_S" $PY benchmarks/sampling_compare.py "$RUN" --chains 256 --samples 150 --warmup 80 \
      --physical-samples 3000 --metropolis-samples 3000 --threads 8 --tag _gpu_on_gpu
  cp benchmarks/results/sampling_compare_L16_gpu_on_gpu.json "$TMP/bench/" 2>/dev/null
  pack
fi
stamp "done"
