"""Shared fixtures: the embedded SmolLM2 (converted once per cache) and tiny random models built in code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker gets its share of the cores for torch's threads (and so do the
# processes it starts): n workers x all cores each would oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded SmolLM2, converted once per cache; skipped with the reason where it is missing
    (a GPU machine that was given no weights)."""
    from core.lm import models

    try:
        directory, _, _ = models.resolve("smollm2-135m")
    except models.ModelUnavailable as err:
        pytest.skip(f"the embedded SmolLM2 (its tokenizer serves the tiny models) is unavailable: {err}")
    return directory


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _tiny(tmp_path_factory, tokenizer, name: str, seed: int, config_cls, model_cls, **config) -> str:
    """A random model saved with SmolLM2's tokenizer; the weights are fixed by `seed`."""
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp(name)
    model_cls(
        config_cls(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=None, **config)
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# the small decoder every Llama-like tiny model shares
SMALL_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    max_position_embeddings=2048,
    pad_token_id=None,
)


def dump_args(
    lengths: str, depths: str = "0.3,0.7", samples: int = 1, window: int = 8, block: int | None = None
) -> list[str]:
    """The one factory of the suite's dump option sets: the documents (lengths x depths x samples)
    and the statistics' shape (W, B), as `python -m dump` arguments."""
    argv = ["--lengths", lengths, "--depths", depths, "--samples", str(samples), "--window", str(window)]
    return argv + (["--block", str(block)] if block is not None else [])


# the shared tiny-model store: every module that only reads a small dump reads this one
TINY_DUMP = dump_args("200,256", samples=2, window=8, block=32)
# the real SmolLM2 dump the suite shares (`smol_store`), and the modules that dump it with more parts
SMOL = dump_args("512", samples=2, window=16)


@pytest.fixture(scope="session")
def tiny_store(tiny_llama_dir, tmp_path_factory) -> str:
    """A finished dump of the tiny Llama (2 lengths x 2 depths x 2 samples); read it, never change it
    (copy it first)."""
    out = tmp_path_factory.mktemp("tiny_store") / "run.zarr"
    r = run_cli("dump", "--model", tiny_llama_dir, *TINY_DUMP, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.fixture(scope="session")
def smol_store(tmp_path_factory) -> str:
    """The one real-weight dump the suite shares: the embedded SmolLM2 at 512 tokens, 2 depths x 2
    samples, W = 16. Read it, never change it."""
    out = tmp_path_factory.mktemp("smol_store") / "run.zarr"
    r = run_cli("dump", *SMOL, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.fixture(scope="session")
def thread_client():
    """A Dask client of this process (threads): what a test registers is seen by its tasks."""
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> str:
    """A random Llama with GQA (4 query heads, 2 kv heads) and SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(
        tmp_path_factory,
        tokenizer,
        "tiny_llama",
        0,
        LlamaConfig,
        LlamaForCausalLM,
        **SMALL_DECODER,
        num_hidden_layers=3,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tokenizer) -> str:
    """A random GPT-2 (1024 positions) with SmolLM2's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _tiny(
        tmp_path_factory,
        tokenizer,
        "tiny_gpt2",
        1,
        GPT2Config,
        GPT2LMHeadModel,
        n_positions=1024,
        n_embd=32,
        n_layer=2,
        n_head=4,
    )


def run_cli(*args, timeout=600, env=None, subprocess_=False):
    """`python -m <stage> ...` -> CompletedProcess with text stdout/stderr and the exit status.

    In this process by default: the stage's `main(argv)` with stdout and stderr captured, the cwd and
    environment as a subprocess would have them, an uncaught exception written to stderr as a
    traceback (as the interpreter would) and the signal handlers restored after. `subprocess_=True`
    runs a real `python -m` child, for what only a process shows (signals, kills, a fresh interpreter)."""
    if subprocess_ or args[0] not in _STAGES:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    return _in_process(args[0], [str(a) for a in args[1:]], env or {})


_STAGES = ("dump", "analyze", "viz", "pipelines")


def _in_process(stage: str, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    import contextlib
    import importlib
    import io
    import signal
    import traceback

    from core import errors

    main = importlib.import_module(f"{stage}.cli").main
    out, err = io.StringIO(), io.StringIO()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    saved_env, cwd = dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as e:  # argparse's errors and --help
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        errors._received.clear()
    return subprocess.CompletedProcess([stage, *argv], status, out.getvalue(), err.getvalue())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """A real `dask scheduler` and `workers` separate `dask worker` processes on 127.0.0.1."""

    def __init__(self, workers: int = 2, resources: str | None = None):
        import time

        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        quiet = {"cwd": ROOT, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        cli = [sys.executable, "-m"]
        self.procs = [
            subprocess.Popen(
                [
                    *cli,
                    "distributed.cli.dask_scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-dashboard",
                ],
                **quiet,
            )
        ]
        time.sleep(2)
        extra = ["--resources", resources] if resources else []
        for _ in range(workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        *cli,
                        "distributed.cli.dask_worker",
                        self.address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        *extra,
                    ],
                    **quiet,
                )
            )
        from distributed import Client

        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(workers, timeout=90)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


@pytest.fixture
def dask_cluster():
    cluster = DaskCluster(2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory, tokenizer) -> str:
    """A random Gemma-3-shaped text model: sliding-window and full layers, GQA (4 heads / 1 kv head),
    head dim 16 with query_pre_attn_scalar, SmolLM2's tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return _tiny(
        tmp_path_factory,
        tokenizer,
        "tiny_gemma3",
        2,
        Gemma3TextConfig,
        Gemma3ForCausalLM,
        **SMALL_DECODER,
        num_hidden_layers=3,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=24,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )


def _tiny_qwen2(tmp_path_factory, tokenizer, name, seed, heads, kv_heads, head_dim) -> str:
    """A random Qwen2: q/k/v biases (drawn, not Qwen2's zero init) and a grouped-query ratio."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = _tiny(
        tmp_path_factory, tokenizer, name, seed, Qwen2Config, Qwen2ForCausalLM,
        hidden_size=heads * head_dim, intermediate_size=64, num_attention_heads=heads,
        num_key_value_heads=kv_heads, num_hidden_layers=2, max_position_embeddings=2048,
        pad_token_id=None, rope_theta=1e6, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                assert proj.bias is not None  # Qwen2's attention has biases
                proj.bias.normal_(0.0, 0.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tokenizer) -> str:
    """A random Qwen2 shaped as the 0.5B's attention: 7 query heads per kv head, head dim 64."""
    return _tiny_qwen2(tmp_path_factory, tokenizer, "tiny_qwen2", 4, 7, 1, 64)


@pytest.fixture(scope="session")
def tiny_qwen2_wide_dir(tmp_path_factory, tokenizer) -> str:
    """A random Qwen2 shaped as the 1.5B's attention: 6 query heads per kv head, head dim 128."""
    return _tiny_qwen2(tmp_path_factory, tokenizer, "tiny_qwen2_wide", 5, 6, 1, 128)


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory, tokenizer) -> str:
    """A random Gemma-2-shaped model: attention logit softcapping (which the capture refuses)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return _tiny(
        tmp_path_factory,
        tokenizer,
        "tiny_gemma2",
        3,
        Gemma2Config,
        Gemma2ForCausalLM,
        **SMALL_DECODER,
        num_hidden_layers=2,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=16,
        attn_logit_softcapping=50.0,
    )


# -- the answer pass's pieces, as the tests drive them ------------------------------------------
def decode_with(model, prompt, first: int, count: int, masks):
    """Each step's logits (batch, vocab) of a greedy decode from `first` at position prompt.end,
    the prompt's keys read from `prompt` under the kept-set biases `masks` (layer -> (batch, head, N))."""
    from core.lm import decode, pruned

    batch = next(iter(masks.values())).shape[0] if masks else 1
    with pruned.keeping(masks, prompt):
        yield from decode.steps(model, decode.empty_cache(model), first, prompt.end, count, batch)


def greedy_with(model, prompt, first: int, count: int, masks):
    """The (batch, count) greedy token ids of `decode_with`."""
    import numpy as np

    return np.stack(
        [lg.argmax(-1).cpu().numpy() for lg in decode_with(model, prompt, first, count, masks)], axis=1
    )


def answer_document(
    store: str, n: int, d: int, s: int, methods, sparsities, gqa: str = "kv", setting: str = "aware"
):
    """The answer pass on one document of `store`, for policies by label."""
    from analyze import answers, engine, policies
    from core.runstore import plan_store

    spec = engine.Spec(
        tuple(policies.parse_policy(m) for m in methods), tuple(sparsities), gqa=gqa, setting=setting
    )
    return answers.answer_document(store, plan_store(store), (n, d, s), spec)


def one_setting(ds, setting: str | None = None):
    """RESULTS of one setting (the only one, or `setting`), without the `setting` dimension."""
    from core.schema import in_setting

    if "setting" not in ds.dims:
        return ds
    return in_setting(ds, setting or str(ds.setting.values[0]))
