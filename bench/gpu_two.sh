#!/usr/bin/env bash
# On a 2-GPU machine: kernel errors, then one dump sharded over both GPUs vs the same dump on one GPU.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=index,name --format=csv,noheader
python3 bench/kernel_errors.py 2>&1 | grep -v Warning
python3 - <<'PY'
import torch
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(".gpu/tok")
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, max_position_embeddings=131072, rope_theta=100000.0, tie_word_embeddings=True)
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained("/tmp/smol_shape"); tok.save_pretrained("/tmp/smol_shape")
PY
ARGS="--model /tmp/smol_shape --lengths 8k,16k --depths 0.2,0.5,0.8 --samples 2 --window 16 --no-progress"
python3 -m dump $ARGS --devices cuda:0,cuda:1 --out /tmp/two.zarr 2>&1 | grep -E "^dump|rror"
python3 -m dump $ARGS --device cuda:0 --out /tmp/one.zarr 2>&1 | grep -E "^dump|rror"
python3 bench/compare_stores.py /tmp/two.zarr /tmp/one.zarr
