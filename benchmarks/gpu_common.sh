# Sourced by the GPU session scripts (benchmarks/gpu_*.sh) after they set OUT: the interpreter (PYTHON,
# default python3), the device (DEV, default cuda; DEV=cpu for a dry run), logging of everything to
# $OUT/session.log, stamp() for timed section headers, a scratch dir $TMP, and an import check.
PY=${PYTHON:-python3}
DEV=${DEV:-cuda}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if [ "$DEV" = cpu ]; then export NEURALRG_TEST_DEVICE=cpu; fi  # tests/test_cuda.py then checks CPU against CPU
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
t0=$(date +%s)
stamp() { echo "=== $1 ($(( $(date +%s) - t0 )) s)"; }
TMP=$(mktemp -d)
stamp "device"
nvidia-smi -L 2>/dev/null || true
$PY -c "import torch, pytorch_lightning, normflows, hydra, scipy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1
