#!/usr/bin/env bash
# The GPU checks of issue 18 in one prepared call (a CUDA machine lent for a few minutes):
#   bash benchmarks/gpu_ladder.sh OUT_DIR INIT_RUN
# 1. the CUDA tests (tests/test_cuda.py: every block, target and sampler on the device against the CPU);
# 2. the scaling table on the device (benchmarks/scaling.py --device cuda, context MERA, L = 8 … 128);
# 3. the ladder L = 32 -> 64 -> 128 at K_c on the GPU (experiment=ising64_ladder, wall-clock budget per
#    rung), warm-started from INIT_RUN (a trained L = 16 context run of the same width, HIDDEN);
# 4. if time is left, sample.py mode=compare on the L = 128 rung.
# Everything goes to OUT_DIR/session.log; tables and JSON are copied to OUT_DIR as each step ends,
# so a call cut short still returns what it finished. Env: RUNGS, BUDGET, BATCH, EVAL, FINAL (hydra
# lists, one entry per rung), HIDDEN, SCALING_L, SCALING_BATCH; DEV=cpu for a dry run without a GPU.
# Needs the package's dependencies importable (e.g. PYTHONPATH=.:<site dir>); shared set-up in gpu_common.sh.
set -u -o pipefail
OUT=${1:?usage: gpu_ladder.sh OUT_DIR INIT_RUN}
INIT=${2:?usage: gpu_ladder.sh OUT_DIR INIT_RUN}
RUNGS=${RUNGS:-[32,64,128]}
BUDGET=${BUDGET:-[60s,90s,120s]}
BATCH=${BATCH:-[512,256,128]}
EVAL=${EVAL:-[1024,512,256]}
FINAL=${FINAL:-[8192,4096,2048]}
HIDDEN=${HIDDEN:-[48,48]}
SCALING_L=${SCALING_L:-8 16 32 64 128}
SCALING_BATCH=${SCALING_BATCH:-256}
SAMPLE_IF_BEFORE_S=${SAMPLE_IF_BEFORE_S:-440}
source "$(dirname "$0")/gpu_common.sh"
TRAINER=$([ "$DEV" = cpu ] && echo cpu || echo gpu)

stamp "CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_hmc.py -k "cuda" 2>&1 | tail -15

stamp "scaling on $DEV (context MERA, batch $SCALING_BATCH)"
timeout 150 $PY benchmarks/scaling.py --device "$DEV" --model context --L $SCALING_L --batch "$SCALING_BATCH" \
    --repeats 3 --tag "_${DEV}_context"
cp benchmarks/results/scaling_"${DEV}"_context.json "$OUT/" 2>/dev/null

stamp "ladder $RUNGS on $DEV, budgets $BUDGET, from $INIT"
timeout 420 $PY train.py experiment=ising64_ladder trainer=$TRAINER logger=none init_from="$INIT" \
    "model.block.hidden=$HIDDEN" "ladder.rungs=$RUNGS" ladder.steps=null "ladder.budget=$BUDGET" \
    "ladder.per_rung.batch_size=$BATCH" "ladder.per_rung.eval_samples=$EVAL" \
    "ladder.per_rung.final_eval_samples=$FINAL" hydra.run.dir="$TMP/ladder"
cp "$TMP/ladder/ladder.json" "$OUT/" 2>/dev/null
TOP=$(ls -d "$TMP"/ladder/L* 2>/dev/null | sort -V | tail -1)

if [ -n "$TOP" ] && [ $(( $(date +%s) - t0 )) -lt "$SAMPLE_IF_BEFORE_S" ]; then
  stamp "sample.py mode=compare on $TOP"
  timeout 110 $PY sample.py run="$TOP" mode=compare device=$DEV settings.n_chains=64 settings.n_warmup=20 \
      settings.n_samples=40 settings.max_time=45s importance_samples=2048 log_to=none figures=false \
      out_dir="$TMP/sample"
  cp "$TMP"/sample/*.json "$OUT/" 2>/dev/null
fi
stamp "done"
