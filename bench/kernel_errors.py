"""Relative errors of the fused statistics against float64, on random inputs and on a model's own
post-RoPE Q/K (CUDA). Prints one line per case: ‖fused − ref‖ / ‖ref‖ for colsum, window, blocks."""

import sys

import torch

sys.path.insert(0, ".")
from core.lm import capture  # noqa: E402
from core.lm.kernels.triton_stats import fused_stats  # noqa: E402
from core.lm.reference import reference  # noqa: E402


def errors(q, k, scale, window, block):
    colsum, rows, blocks = fused_stats(q, k, scale, window, block)
    v = torch.zeros(k.shape[0], k.shape[1], 1, dtype=torch.float64)
    _, rc, rw, rb = reference(q.cpu().double(), k.cpu().double(), v, scale, window, block)

    def rel(a, b):
        return float(torch.linalg.norm(a.cpu().double() - b) / torch.linalg.norm(b))

    return rel(colsum, rc), rel(rows, rw), rel(blocks, rb)


torch.manual_seed(0)
for n, block in ((2048, 64), (4000, 64), (8192, 128)):
    q = (torch.randn(9, n, 64) * 2).to(torch.bfloat16).cuda()
    k = (torch.randn(3, n, 64) * 2).to(torch.bfloat16).cuda()
    print(
        f"random bf16 N={n} B={block}: colsum %.2e window %.2e blocks %.2e" % errors(q, k, 0.125, 32, block)
    )

# a model's own Q/K: capture them from the attention function of a SmolLM2-shaped model
from stamp import stamp  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

stamp()

cfg = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
)
model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
seen = {}
orig = capture.attention_stats_fused


def grab(query, key, value, scaling, window, block):
    seen.setdefault(len(seen), (query.clone(), key.clone(), scaling))
    return orig(query, key, value, scaling, window, block)


capture.attention_stats_fused = grab
model.set_attn_implementation(capture.NAME)
with torch.no_grad(), capture.recording(capture.Recorder(window=32, block=64, on_layer=lambda *a: None)):
    model(torch.randint(0, 49152, (1, 4096), device="cuda"))
for layer, (q, k, scale) in seen.items():
    print(
        f"model Q/K layer {layer} N=4096: colsum %.2e window %.2e blocks %.2e" % errors(q, k, scale, 32, 64)
    )
