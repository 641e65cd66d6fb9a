"""Map every policy × sparsity over the document-layers of a RUN.zarr, on Dask, into RESULTS.

One task = one (length, depth, sample, layer): it reads that chunk of the store itself (so no
process ever holds a whole store), keeps masks only in memory, and returns small metric arrays.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
import zarr

from analyze import curvature, metrics
from analyze.errors import UsageError
from analyze.policies import H2O, DocLayer, Policy, budget, keep, label
from analyze.policies.base import expand_blocks, select

SUPPORTED_SCHEMA = "1."
CAB_FAMILY = ("cab", "cab_high", "cab_hybrid", "cab_3c")
RETRIEVAL_HEADS = 10


@dataclass(frozen=True)
class Spec:
    """What to compute for every document-layer."""

    methods: tuple[Policy, ...]
    sparsities: tuple[float, ...]
    gqa: str = "kv"
    seed: int = 0
    reference: bool = False  # numpy references instead of numba kernels (tests, benchmark)
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(label(m) for m in self.methods))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Agreement pairs: each cab variant against h2o and against block-mass top-k."""
        return [
            (lab, ref)
            for lab, m in zip(self.labels, self.methods)
            if m.name in CAB_FAMILY
            for ref in ("h2o", "block_mass")
        ]

    @property
    def curvature_variants(self) -> list[str]:
        return [lab for lab, m in zip(self.labels, self.methods) if hasattr(m, "scores")]


@functools.lru_cache(maxsize=8)
def _open(path: str):
    return zarr.open_group(path, mode="r")


def load_doclayer(path: str, group: str, d: int, s: int, layer: int, kv_heads: int, seed: int):
    g = _open(path)[group]
    x = DocLayer(
        colsum=g["colsum"][d, s, layer],
        window=g["window"][d, s, layer].astype(np.float32),
        blocks=g["blocks"][d, s, layer],
        qpool=g["qpool"][d, s, layer].astype(np.float32),
        kpool=g["kpool"][d, s, layer].astype(np.float32),
        block=int(g.attrs["block"]),
        kv_heads=kv_heads,
        seed=seed,
    )
    return x, np.asarray(g["needle"][d, s], dtype=bool)


def policy_view(policy: Policy, x: DocLayer) -> DocLayer:
    """A block policy asking for larger blocks sees the stored blocks coarsened."""
    b = getattr(policy, "block", 0)
    if not b or b == x.block:
        return x
    return x.coarsen(b)


def block_mass_keep(x: DocLayer, k: int) -> np.ndarray:
    """Reference set for agreement: top blocks by attention mass from the last query block."""
    return select(expand_blocks(x.blocks[:, -1, :], x.block, x.n), k, secondary=x.colsum)


def analyze_doclayer(path: str, group: str, d: int, s: int, layer: int, kv_heads: int, spec: Spec) -> dict:
    """All methods × sparsities on one document-layer -> small arrays (see `assemble`)."""
    seed = int(np.random.SeedSequence([spec.seed, d, s, layer]).generate_state(1)[0])
    x, needle = load_doclayer(path, group, d, s, layer, kv_heads, seed)
    final = x.final_row.astype(np.float64)
    nm, nsp = len(spec.methods), len(spec.sparsities)
    out = np.zeros((len(metrics.METRICS), nm, nsp, x.heads))
    pairs = spec.pairs
    jac = np.zeros((len(pairs), nsp, x.heads))
    for j, sp in enumerate(spec.sparsities):
        k = budget(sp, x.n)
        kept_by = {}
        for i, (lab, policy) in enumerate(zip(spec.labels, spec.methods)):
            kept = keep(policy, policy_view(policy, x), k, spec.gqa, spec.reference)
            out[:, i, j] = metrics.kept_metrics(kept, needle, final)
            kept_by[lab] = kept
        if pairs:
            kept_by.setdefault("h2o", keep(H2O(), x, k, spec.gqa, spec.reference))
            kept_by["block_mass"] = block_mass_keep(x, k)
            for p, (a, b) in enumerate(pairs):
                jac[p, j] = metrics.jaccard(kept_by[a], kept_by[b])
    corr = np.full((len(spec.curvature_variants), x.heads), np.nan)
    for v, lab in enumerate(spec.curvature_variants):
        policy = spec.methods[spec.labels.index(lab)]
        xv = policy_view(policy, x)
        scores = policy.scores(xv)  # (head, kblock), kept first = highest preference
        if policy.name == "cab":
            scores = -scores  # cab keeps the lowest curvature
        mass = xv.blocks[:, -1, :]
        corr[v] = [curvature.spearman(scores[h], mass[h]) for h in range(x.heads)]
    return {
        "metrics": out,
        "needle_mass": metrics.needle_mass(final, needle),
        "jaccard": jac,
        "curvature": corr,
    }


# -- the whole store ---------------------------------------------------------------------------
@dataclass
class StorePlan:
    path: str
    kv_heads: int
    lengths: list[int]
    depths: np.ndarray
    samples: int
    layers: int
    heads: int
    done: dict  # length -> (depth, sample) bool
    retrieved: dict
    blocks: dict  # length -> stored block size B
    attrs: dict


def plan_store(path: str) -> StorePlan:
    try:
        root = zarr.open_group(path, mode="r")
    except Exception:
        raise UsageError(
            f"store {path!r} does not exist or is not a Zarr store: give a RUN.zarr made by `python -m dump`"
        ) from None
    version = str(root.attrs.get("schema_version", ""))
    if not version.startswith(SUPPORTED_SCHEMA):
        raise UsageError(
            f"store {path!r} has schema version {version or 'none'!r}; this analyze reads {SUPPORTED_SCHEMA}x"
        )
    groups = sorted(int(name[4:]) for name in root.group_keys() if name.startswith("len_"))
    if not groups:
        raise UsageError(
            f"store {path!r} holds no length groups (len_N): was the dump interrupted before its first document?"
        )
    cfg = root.attrs["model_config"]
    done, retrieved, blocks = {}, {}, {}
    for n in groups:
        g = root[f"len_{n}"]
        blocks[n] = int(g.attrs["block"])
        done[n] = np.asarray(g["done"][:], dtype=bool)
        retrieved[n] = (
            np.asarray(g["retrieved"][:], dtype=bool) if "retrieved" in g else np.zeros_like(done[n])
        )
    depths = np.asarray(root[f"len_{groups[0]}"]["depth"][:])
    return StorePlan(
        path,
        int(cfg["kv_heads"]),
        groups,
        depths,
        done[groups[0]].shape[1],
        int(cfg["layers"]),
        int(cfg["heads"]),
        done,
        retrieved,
        blocks,
        dict(root.attrs),
    )


def tasks_of(plan: StorePlan) -> list[tuple[int, int, int, int]]:
    return [
        (n, d, s, layer)
        for n in plan.lengths
        for d, s in zip(*np.nonzero(plan.done[n]))
        for layer in range(plan.layers)
    ]


def assemble(
    plan: StorePlan, spec: Spec, results: dict, retrieval_heads: int = RETRIEVAL_HEADS
) -> xr.Dataset:
    """Per-task arrays -> the RESULTS Dataset with its summaries."""
    L, H, S, D = plan.layers, plan.heads, plan.samples, len(plan.depths)
    nm, nsp, nl = len(spec.methods), len(spec.sparsities), len(plan.lengths)
    m = np.full((len(metrics.METRICS), nm, nsp, nl, D, S, L, H), np.nan, dtype=np.float32)
    mass = np.full((nl, D, S, L, H), np.nan, dtype=np.float32)
    jac = np.full((len(spec.pairs), nsp, nl, D, S, L, H), np.nan, dtype=np.float32)
    corr = np.full((len(spec.curvature_variants), nl, D, S, L, H), np.nan, dtype=np.float32)
    for (n, d, s, layer), r in results.items():
        li = plan.lengths.index(n)
        m[:, :, :, li, d, s, layer] = r["metrics"]
        mass[li, d, s, layer] = r["needle_mass"]
        jac[:, :, li, d, s, layer] = r["jaccard"]
        corr[:, li, d, s, layer] = r["curvature"]
    coords = {
        "method": list(spec.labels),
        "sparsity": list(spec.sparsities),
        "length": plan.lengths,
        "depth": plan.depths,
        "sample": np.arange(S),
        "layer": np.arange(L),
        "head": np.arange(H),
    }
    dims = ("method", "sparsity", "length", "depth", "sample", "layer", "head")
    data = {name: (dims, m[i]) for i, name in enumerate(metrics.METRICS)}
    data["needle_mass"] = (dims[2:], mass)
    data["jaccard"] = (("pair",) + dims[1:], jac)
    data["curvature_mass_spearman"] = (("variant",) + dims[2:], corr)
    data["budget"] = (
        ("sparsity", "length"),
        np.array([[budget(sp, n) for n in plan.lengths] for sp in spec.sparsities], dtype=np.int64),
    )
    data["done"] = (("length", "depth", "sample"), np.stack([plan.done[n] for n in plan.lengths]))
    data["retrieved"] = (("length", "depth", "sample"), np.stack([plan.retrieved[n] for n in plan.lengths]))
    coords["pair"] = [f"{a}|{b}" for a, b in spec.pairs]
    coords["variant"] = list(spec.curvature_variants)
    ds = xr.Dataset(data, coords=coords)
    ds["needle_hit"].attrs["long_name"] = "1 if every passkey token is kept"
    ds["needle_recall"].attrs["long_name"] = "fraction of passkey tokens kept"
    ds["mass_kept"].attrs["long_name"] = "final query row attention mass on the kept keys"
    ds["kept"].attrs["long_name"] = "keys kept (equals the budget; N for full)"
    ds["needle_mass"].attrs["long_name"] = "final query row attention on the passkey under full attention"
    ds["jaccard"].attrs["long_name"] = "Jaccard overlap of kept sets (cab variant | reference)"
    ds["curvature_mass_spearman"].attrs["long_name"] = (
        "Spearman rank correlation of a curvature score with block attention mass (last query block); "
        "near 1 = curvature is magnitude in disguise"
    )
    return summarize(ds, retrieval_heads)


def summarize(ds: xr.Dataset, retrieval_heads: int = RETRIEVAL_HEADS) -> xr.Dataset:
    """Retrieval heads, means over heads, and mean ± 95% CI across samples."""
    score = ds.needle_mass.mean(["length", "depth", "sample"], skipna=True)
    flat = score.stack(lh=("layer", "head"))
    r = min(retrieval_heads, flat.size)
    top = np.argsort(-np.nan_to_num(flat.values, nan=-1.0), kind="stable")[:r]
    mask = np.zeros(flat.size, dtype=bool)
    mask[top] = True
    ds["retrieval_head"] = (("layer", "head"), mask.reshape(score.shape))
    ds["retrieval_head"].attrs["rule"] = (
        f"the {r} (layer, head) pairs with the highest mean final-row attention on the passkey tokens "
        f"under full attention, averaged over all documents"
    )
    subsets = {"all": xr.ones_like(ds.retrieval_head), "retrieval": ds.retrieval_head}
    for name in ("needle_hit", "needle_recall", "mass_kept"):
        per_doc = xr.concat(
            [ds[name].where(sel).mean(["layer", "head"]) for sel in subsets.values()],
            dim=xr.DataArray(list(subsets), dims="subset", name="subset"),
        )
        ds[f"{name}_heads"] = per_doc
        mean, lo, hi = metrics.mean_ci(per_doc.values, axis=per_doc.dims.index("sample"))
        sdims = tuple(dim for dim in per_doc.dims if dim != "sample")
        ds[f"{name}_mean"] = (sdims, mean.astype(np.float32))
        ds[f"{name}_lo"] = (sdims, lo.astype(np.float32))
        ds[f"{name}_hi"] = (sdims, hi.astype(np.float32))
        ds[f"{name}_mean"].attrs["long_name"] = f"{name} averaged over heads of the subset, then samples"
        ds[f"{name}_lo"].attrs["long_name"] = "95% interval across samples (normal), lower"
        ds[f"{name}_hi"].attrs["long_name"] = "95% interval across samples (normal), upper"
    return ds


def run(path: str, spec: Spec, client, progress: bool = True, retrieval_heads: int = RETRIEVAL_HEADS):
    """Analyze a store with a Dask client; returns (Dataset, number of unfinished documents)."""
    from tqdm.auto import tqdm

    plan = plan_store(path)
    unfinished = sum(int((~plan.done[n]).sum()) for n in plan.lengths)
    tasks = tasks_of(plan)
    if not tasks:
        raise UsageError(f"store {path!r} has no finished documents to analyze")
    futures = client.map(
        lambda t: analyze_doclayer(path, f"len_{t[0]}", int(t[1]), int(t[2]), int(t[3]), plan.kv_heads, spec),
        tasks,
        pure=False,
    )
    index = {f.key: t for f, t in zip(futures, tasks)}
    results = {}
    from distributed import as_completed

    with tqdm(total=len(tasks), desc="analyze", unit="doc-layer", disable=not progress) as bar:
        for fut in as_completed(futures):
            t = index[fut.key]
            results[(t[0], int(t[1]), int(t[2]), int(t[3]))] = fut.result()
            bar.update(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices for unfinished documents
        ds = assemble(plan, spec, results, retrieval_heads)
    ds.attrs.update(
        {
            "source_store": path,
            "model": str(plan.attrs.get("model", {}).get("name", "")),
            "gqa": spec.gqa,
            "budget_rule": "k = round((1 - sparsity) * N) keys per head",
            "methods": ", ".join(spec.labels),
            "unfinished_documents": unfinished,
        }
    )
    return ds, unfinished
