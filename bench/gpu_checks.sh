#!/usr/bin/env bash
# One call on a GPU machine: kernel correctness tests, whole dumps at 32k and 128k, the GPU benchmark.
# Expects wheels of zarr/numcodecs/donfig/google-crc32c in .whl and SmolLM2's tokenizer files in .gpu/tok.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers, zarr; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'zarr', zarr.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_stats.py 2>&1 | tail -3
python3 - <<'PY'
import torch
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(".gpu/tok")
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, max_position_embeddings=131072, rope_theta=100000.0, tie_word_embeddings=True)
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained("/tmp/smol_shape")
tok.save_pretrained("/tmp/smol_shape")
PY
# whole dumps: 3 documents each, so the steady state per document shows (model load excluded from tokens/s)
for args in "32k 64" "128k 64" "128k 8"; do
  set -- $args
  python3 -m dump --model /tmp/smol_shape --lengths $1 --depths 0.2,0.5,0.8 --block auto --window $2 \
     --device cuda --out /tmp/gpu_$1_$2.zarr --no-progress 2>&1 | grep -E "^dump:|error"
  echo "store per document at $1, window $2: $(( $(du -sm /tmp/gpu_$1_$2.zarr | cut -f1) / 3 )) MiB"
done
python3 bench/dump_bench_cuda.py --json "$OUT/dump_bench_cuda.json" 2>&1 | grep -v Warning | tail -12
