"""Ground truth: the model's own answer with every policy's pruned KV cache.

For one document of a RUN.zarr (one Dask task):

1. load the model the dump used (RUN.zarr provenance; offline) and check that its tokenizer rebuilds
   the stored `input_ids` exactly, by rebuilding the document with the dump's task rule
   (`core.tasks.document`);
2. prefill the prompt up to where the setting prunes (`core.settings`: all but the last token in
   the query-aware setting), with full attention, as the statistics were taken;
3. for every (policy, sparsity), take the kept sets of every layer from `analyze.keptsets` (the code
   the proxy metrics are scored with: same budgets, seed, GQA rule and setting), then decode greedily
   (`core.lm.decode.greedy`) for as many tokens as the dump's own answer, each layer and query head
   attending only to its kept prompt keys plus the tokens decoded so far (`core.lm.pruned`);
4. score `answer` and `answer_digits` with the task's rules (`score`, `partial`; for the passkey:
   the text contains its digits in order, and the fraction of its digits reproduced in place; for
   RULER's tasks: the fraction of expected values the text contains).

In the agnostic setting (`core.settings.Agnostic`) step 2 prefills the context alone, and the question's
tokens are fed through the pruned cache (attending to the kept context and to themselves) before the
answer is decoded: a cache compressed before the question was known.

Models with attention features the pruned attention does not implement (logit softcapping, sinks,
chunked attention) are refused, never approximated. A sliding-window layer whose window is shorter
than the prompt is not pruned: it keeps the model's own attention.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analyze import keptsets
from core import schema, settings, tasks
from core.cluster import CORES_ENV
from core.errors import UsageError
from core.lm import decode, models, pruned
from core.runstore import CorruptChunk, _open, read_checked, read_floats

BATCH_BYTES = 1 << 30  # the kept-set biases of the pairs decoded together (one forward step serves them all)


def check_supported(config, name: str) -> None:
    """Sliding-window layers keep the model's own attention (they are not pruned); softcapping, sinks
    and chunked attention are refused, as in the capture."""
    problem = models.unsupported_attention(config)
    if problem:
        raise UsageError(
            f"model {name!r} uses {problem}, which the answer pass does not implement: it refuses rather than approximate"
        )


def load_model(name: str, rope_scaling: str | None = None, device: str = "cpu", dtype: str = "float32"):
    """The dump's model with the pruned attention, in the dump's dtype on `device` (the one loader,
    `models.load`, keeps it for every document of a worker); the kept-set attention is float32 math."""
    if "distributed" in sys.modules:  # maybe a Dask worker (not imported here just to ask: 1.4 s)
        from distributed import get_worker

        try:  # a worker process: its share of the host's cores (a local cluster says it), else one
            get_worker()
            torch.set_num_threads(int(os.environ.get(CORES_ENV, "1")))
        except ValueError:
            pass
    lm = models.load(name, models.DTYPES[dtype], device, pruned.NAME, rope_scaling)
    check_supported(lm.model.config, name)
    return lm


def dumped_model(attrs: dict, path: str) -> tuple[str, str | None, str]:
    """The model the dump ran, from RUN.zarr provenance: (name, RoPE scaling, dtype). The answers load
    it the same way, so that the full cache reproduces the dump's own answer."""
    model = attrs.get("model")
    model = model if isinstance(model, dict) else {}
    if not model.get("name"):
        raise UsageError(f"store {path!r} does not name the model it was dumped with: --answers cannot run")
    dtype = model.get("dtype", "float32")
    return str(model["name"]), model.get("rope_scaling"), dtype if dtype in models.DTYPES else "float32"


def check_model(path: str) -> str:
    """The model of a RUN.zarr, loadable here, with a tokenizer that rebuilds the stored prompts."""
    root = _open(path)
    name, rope_scaling, _ = dumped_model(dict(root.attrs), path)
    try:
        models.resolve(name)
    except UsageError as err:
        raise UsageError(
            f"--answers needs the model the dump used, {name!r}, which cannot be loaded here ({err})"
        ) from None
    if schema.lengths_in(root) and "answer_ids" not in root[schema.group_name(schema.lengths_in(root)[0])]:
        raise UsageError(
            f"store {path!r} was dumped before answers were recorded (schema 1): re-run `python -m dump` into a new --out to use --answers"
        )
    task = dict(root.attrs.get("settings", {})).get("task", "passkey")
    try:
        tasks.get(task)
    except UsageError:
        raise UsageError(
            f"store {path!r} was dumped with the task {task!r}, which is not registered here"
        ) from None
    check_supported(models.load_config(name, rope_scaling), name)
    return name


def check_filler(st: dict, path: str) -> None:
    """The dump's filler file as it was (its recorded sha256), or one sentence saying it is not."""
    from core.tasks import haystack

    want = st.get("filler_sha256")
    if not want:
        return
    filler = st["filler"]
    if not Path(filler).is_file():
        raise UsageError(
            f"the filler file {filler!r} the dump of {path!r} read is gone: restore it to decode answers"
        )
    if haystack.filler_digest(filler) != want:
        raise UsageError(
            f"the filler file {filler!r} changed since the dump of {path!r} read it (sha256 differs): "
            f"restore it, or re-dump into a new --out"
        )


def rebuild(tokenizer, attrs: dict, path: str, n: int, d: int, s: int, ids: np.ndarray) -> tasks.Document:
    """The stored document rebuilt by the dump's task rule; the tokenizer must reproduce the stored
    prompt token for token."""
    st = attrs["settings"]
    check_filler(st, path)
    by_index = schema.seeds_by_depth_index(attrs.get("schema_version", ""))
    doc = tasks.document(
        tokenizer,
        st.get("task", "passkey"),
        int(st["seed"]),
        st["filler"],
        n,
        float(st["depths"][d]),
        d,
        s,
        by_index,
    )
    if not np.array_equal(doc.input_ids, ids):
        raise UsageError(
            f"the tokenizer of {dumped_model(attrs, path)[0]!r} does not reproduce the stored input_ids of {path!r} "
            f"(length {n}, depth {d}, sample {s}): the model there is not the one the dump used"
        )
    return doc


def stored_prompt(g, doc: tuple, path: str, n: int, cut: int, windows, dtype, device) -> pruned.Prompt:
    """The prompt's cache up to `cut` as a prefill of `cut` tokens would leave it, read from a store
    dumped with `--store stats,kv` (the dump's own forward: float32 on disk, exact in the model's
    dtype): every position on a full layer, the last W - 1 on a sliding-window layer."""
    keys = read_floats(g, "key_cache", doc, path, n)  # (layer, kv_head, N, dim)
    values = read_floats(g, "value_cache", doc, path, n)
    k_of, v_of, start = {}, {}, {}
    for layer, w in enumerate(windows):
        a = max(0, cut - (w - 1)) if w else 0
        k_of[layer] = torch.from_numpy(keys[layer, :, a:cut]).to(device=device, dtype=dtype)
        v_of[layer] = torch.from_numpy(values[layer, :, a:cut]).to(device=device, dtype=dtype)
        start[layer] = a
    return pruned.Prompt(k_of, v_of, start, cut, {i: w for i, w in enumerate(windows) if w})


def answer_document(path: str, plan, job, spec) -> dict:
    """Every (policy, sparsity) answer of one document (n, d, s) -> {"answer", "digits", "ids"}."""
    return answer_documents(path, plan, [tuple(job)], spec)[tuple(job)]


@dataclass
class _AnswerRows:
    """One document's share of an answer task: its kept sets, prompt cache and pairs to decode."""

    key: tuple  # (n, d, s)
    doc: tasks.Document
    cut: int  # prompt tokens in the cache; the rest are fed first
    rest: np.ndarray  # the prompt tokens after `cut`
    steps: int  # answer tokens to decode (the dump's own answer's length)
    masks: np.ndarray  # (policy, sparsity, layer, head, N) kept sets
    prunable: list  # the layers whose cache is pruned
    prompt: pruned.Prompt
    same: dict  # kept sets' digest -> the (policy, sparsity) pairs that share them (decoded once)
    width: int  # answer_token slots in RESULTS

    @property
    def pairs(self) -> list:
        return [group[0] for group in self.same.values()]


def answer_documents(path: str, plan, docs: list[tuple], spec, kept: dict | None = None) -> dict:
    """Every (policy, sparsity) answer of each document (n, d, s) -> {doc: {"answer", "digits",
    "ids"}}, decoded on `spec.answer_device` in the dump's dtype. `kept`: {doc: kept sets (policy,
    sparsity, layer, head, key)} already chosen (`scoring.analyze_document`); else chosen here. Documents whose prompts end at the
    same position are decoded in step as one batch (`pruned.keeping_documents`): each row attends to
    its own document's cache exactly as it would alone, and one read of the weights per step serves
    every row (on the CPU the decode reads the weights far more than it computes)."""
    root = _open(path)
    attrs = dict(root.attrs)
    name, rope_scaling, dtype = dumped_model(attrs, path)
    device = spec.answer_device
    lm = load_model(name, rope_scaling, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    task = tasks.get(attrs["settings"].get("task", "passkey"))
    out = {}
    with torch.no_grad():
        prepared = [
            _prepare(root, attrs, path, plan, key, spec, lm, task, device, (kept or {}).get(key))
            for key in docs
        ]
        by_end: dict[tuple, list[_AnswerRows]] = {}
        for x in prepared:  # in step: the same prompt end, the same prompt tokens left, the same steps
            by_end.setdefault((x.cut, len(x.rest), x.steps), []).append(x)
        for group in by_end.values():
            rows = [(x, i, j) for x in group for i, j in x.pairs]
            batch = max(1, BATCH_BYTES // max(1, 4 * max(x.masks[0, 0].size for x in group)))
            toks = {}
            for c0 in range(0, len(rows), batch):  # the rows of a chunk decoded as one batch
                chunk = rows[c0 : c0 + batch]
                parts = []  # (rows, masks, prompt) per document, in row order
                for x in group:
                    mine = [(i, j) for y, i, j in chunk if y is x]
                    if mine:
                        masks = {
                            layer: torch.stack([pruned.bias_of(x.masks[i, j, layer]) for i, j in mine]).to(
                                device
                            )
                            for layer in x.prunable
                        }
                        parts.append((len(mine), masks, x.prompt, x, mine))
                first = np.concatenate([np.repeat(x.rest[None], r, axis=0) for r, _, _, x, _ in parts])
                cache = decode.empty_cache(lm.model)
                with pruned.keeping_documents([(r, m, pr) for r, m, pr, _, _ in parts]):
                    got = decode.greedy(
                        lm.model, cache, first, group[0].cut, group[0].steps, batch=len(first)
                    )
                r0 = 0
                for r, _, _, x, mine in parts:
                    for row, pair in enumerate(mine):
                        toks[(x.key, pair)] = got[r0 + row]
                    r0 += r
            for x in group:
                out[x.key] = _scored(x, task, lm.tokenizer, {p: toks[(x.key, p)] for p in x.pairs})
    if device.startswith("cuda"):  # this worker's peak, model included (RESULTS attr answer_peak_gpu_gb)
        peak = torch.cuda.max_memory_allocated(device)
        for r in out.values():
            r["peak_gpu_bytes"] = peak
        torch.cuda.empty_cache()  # the worker's model stays; its batch's memory goes back to the GPU
    return out


def _prepare(root, attrs, path, plan, key, spec, lm, task, device, masks=None) -> _AnswerRows:
    """A document's kept sets for every (policy, sparsity) (`masks`, when given) and its prompt's
    cache up to the cut."""
    n, d, s = key
    pols, sparsities = spec.policies, spec.sparsities
    g = root[schema.group_name(n)]
    ids = read_checked(g, "input_ids", (d, s), path, n)
    if not ids.any():  # 0 is the fill value: the chunk is missing on disk, the model is not to blame
        raise CorruptChunk(
            f"store {path!r}: variable input_ids of length {n}, depth {d}, sample {s} is missing on disk"
        )
    doc = rebuild(lm.tokenizer, attrs, path, n, d, s, ids)
    steps = int((np.asarray(g["answer_ids"][d, s]) >= 0).sum()) or task.answer_tokens
    cut = settings.get(spec.setting).prune_after(n, doc.question)  # prompt tokens prefilled whole
    if not 0 < cut < n:
        raise ValueError(
            f"the {spec.setting} setting prunes after {cut} of {n} prompt tokens: not in 1..{n - 1}"
        )
    windows = plan.windows
    if masks is None:
        masks = kept_masks(path, plan, key, spec)
    prunable = list(keptsets.document_of(plan, n).prunable)
    if "value_cache" in g:  # the dump's own forward stored the prompt's cache: no prefill here
        prompt = stored_prompt(g, (d, s), path, n, cut, windows, lm.model.dtype, device)
    else:
        head = torch.as_tensor(ids[:cut], dtype=torch.long, device=device)[None]
        prompt = pruned.prompt_store(decode.prefill(lm.model, head)[1], cut, windows)
    # pairs with the same kept sets on every layer (e.g. `full` at every sparsity) decode once
    same: dict[bytes, list] = {}
    for i in range(len(pols)):
        for j in range(len(sparsities)):
            digest = hashlib.sha1(np.packbits(masks[i, j, prunable]).tobytes()).digest()
            same.setdefault(digest, []).append((i, j))
    return _AnswerRows(
        key, doc, cut, ids[cut:], steps, masks, prunable, prompt, same, g["answer_ids"].shape[-1]
    )


def kept_masks(path: str, plan, key: tuple, spec) -> np.ndarray:
    """The kept sets (policy, sparsity, layer, head, key) of one document (n, d, s) that its answers
    decode under, from `analyze.keptsets`: set on its prunable layers (the others keep the model's own
    attention and read no mask)."""
    n, d, s = key
    pols, sparsities = spec.policies, spec.sparsities
    load = keptsets.loader(path, n, d, s, plan.kv_heads, spec.seed, keptsets.reads_of(pols), spec.setting)
    whole = keptsets.document_of(plan, n, load, (d, s))
    masks = np.zeros((len(pols), len(sparsities), plan.layers, plan.heads, n), dtype=bool)
    for layer in whole.prunable:
        for j, i, kept in keptsets.iter_kept(
            load(layer), pols, sparsities, spec.gqa, False, whole, layer, spec.setting
        ):
            masks[i, j, layer] = kept
    return masks


def _scored(x: _AnswerRows, task, tokenizer, toks: dict) -> dict:
    """The answer arrays of one document from its decoded pairs' token ids."""
    shape = x.masks.shape[:2]
    answer = np.zeros(shape, dtype=np.float32)
    digits = np.zeros(shape, dtype=np.float32)
    distracted = np.zeros(shape, dtype=bool)
    out_ids = np.full((*shape, x.width), -1, dtype=np.int32)
    for group in x.same.values():
        got = toks[group[0]]
        text = tokenizer.decode(got.tolist())
        for i, j in group:
            answer[i, j] = task.score(text, x.doc)  # a fraction: RULER's string_match_all
            digits[i, j] = task.partial(text, x.doc)
            distracted[i, j] = task.distracted(text, x.doc)
            out_ids[i, j, : x.steps] = got
    return {"answer": answer, "digits": digits, "ids": out_ids, "distracted": distracted}
