"""The fused Triton statistics run by Triton's interpreter on the CPU (`TRITON_INTERPRET=1`), against the
float64 reference: the kernels' logic (masked and unmasked tiles, a partial last block, GQA, sliding
bands, a given log-sum-exp, blocks larger than the tile) checked on every machine that has Triton, GPU or
not. The GPU's own compilation and numerics are tests/test_kernels.py's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent

# (heads, kv heads, tokens, head dim, block, window, sliding, dtype, lse given)
CASES = [
    (4, 2, 200, 32, 16, 8, None, "float32", False),  # partial last block, GQA
    (2, 1, 256, 32, 32, 40, None, "float32", True),  # whole blocks, the lse given, window over 1 block
    (4, 2, 190, 32, 16, 8, 40, "float32", False),  # a sliding band
    (2, 2, 130, 32, 16, 8, None, "float16", True),  # half precision, the lse given
    (2, 1, 300, 16, 256, 8, None, "float16", True),  # a block of 256: sums of 128 x 128 tiles, partial
]

SCRIPT = r"""
import json, math, sys
import torch
from core.lm.kernels.triton_stats import fused_stats
from core.lm.reference import reference

out = []
for heads, kv, n, dim, block, window, sliding, dtype, given in json.loads(sys.argv[1]):
    torch.manual_seed(n)
    q = (torch.randn(heads, n, dim) * 1.5).to(getattr(torch, dtype))
    k = (torch.randn(kv, n, dim) * 1.5).to(getattr(torch, dtype))
    v = torch.randn(kv, n, dim)
    scale = dim ** -0.5
    lse = None
    if given:  # each row's natural-log log-sum-exp, as the attention kernel returns it
        s = q.double() @ k.double().repeat_interleave(heads // kv, 0).transpose(1, 2) * scale
        lse = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).logsumexp(-1).float()
    got = fused_stats(q, k, scale, window, block, sliding, lse)
    _, *want = reference(q.double(), k.double(), v.double(), scale, window, block, sliding)
    out.append([float((a.double() - b).abs().max()) for a, b in zip(got, want)]
               + [bool(all(torch.isfinite(a).all() for a in got))])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_fused_stats_interpreted_equal_float64_reference():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, (colsum, window, blocks, finite) in zip(CASES, errors):
        tol = 1e-5 if case[7] == "float32" else 2e-3  # float16 inputs: scores rounded to 11 bits
        assert finite, case
        assert colsum <= tol * case[2], (case, colsum)  # a column sums up to N probabilities
        assert window <= tol, (case, window)
        assert blocks <= tol * case[4], (case, blocks)  # a block sums up to B rows of probabilities
