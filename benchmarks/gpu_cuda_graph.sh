#!/usr/bin/env bash
# Latent HMC on a GPU with the potential replayed from a CUDA graph (hmc.cuda_graphed), one short call:
#   bash benchmarks/gpu_cuda_graph.sh OUT_DIR L16_RUN
# 1. tests/test_cuda.py (graphed potential = eager one; same chains with and without the graph);
# 2. benchmarks/scaling.py --device cuda: latent-HMC trajectory eager and graphed, L = 16, 64, 128;
# 3. sample.py mode=compare (latent vs physical HMC) on the GPU for L16_RUN, with settings.cuda_graph=true.
# Output in OUT_DIR (session.log, JSON). DEV=cpu for a dry run without a GPU.
set -u -o pipefail
OUT=${1:?usage: gpu_cuda_graph.sh OUT_DIR L16_RUN}
RUN=${2:?usage: gpu_cuda_graph.sh OUT_DIR L16_RUN}
SCALING_L=${SCALING_L:-16 64 128}
CHAINS=${CHAINS:-256}
source "$(dirname "$0")/gpu_common.sh"

stamp "CUDA tests"
timeout 60 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tail -8

stamp "latent-HMC trajectory eager vs CUDA graph (context MERA, batch 64)"
timeout 75 $PY benchmarks/scaling.py --device "$DEV" --model context --L $SCALING_L --batch 64 --repeats 3 \
    --tag "_${DEV}_graph"
cp benchmarks/results/scaling_"${DEV}"_graph.json "$OUT/" 2>/dev/null

stamp "latent vs physical HMC on $DEV, $CHAINS chains ($RUN)"
timeout 75 $PY sample.py run="$RUN" mode=compare 'compare=[latent_hmc,physical_hmc]' device=$DEV \
    settings.n_chains=$CHAINS settings.cuda_graph=true settings.n_warmup=20 settings.n_samples=400 settings.max_time=20s \
    +per_sampler.physical_hmc.n_samples=4000 importance_samples=0 log_to=none figures=false out_dir="$TMP/sample"
cp "$TMP"/sample/summary.json "$OUT/sample_summary.json" 2>/dev/null
stamp "done"
