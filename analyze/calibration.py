"""How far the offline proxy can be trusted: each proxy rule against the model's real answer.

Cells are (policy, sparsity, document) among documents the full cache answers (`retrieved`), where
the policy actually prunes (kept < N). Documents are split in a fixed alternating order over
(length, depth, sample): thresholds of the score rules are chosen on the first half, and every rule
is judged on the second half, so all rules are compared on the same held-out cells.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

STATS = ("agreement", "precision", "recall", "auroc", "cells", "positives")


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN without both classes."""
    from scipy.stats import rankdata

    pos, neg = score[label], score[~label]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]), method="average")  # ties share their mean rank
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _stats(pred: np.ndarray, score: np.ndarray, label: np.ndarray) -> list[float]:
    tp = float((pred & label).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / pred.sum() if pred.sum() else float("nan")
        recall = tp / label.sum() if label.sum() else float("nan")
    agreement = float((pred == label).mean()) if label.size else float("nan")
    return [
        agreement,
        precision,
        recall,
        auroc(score.astype(np.float64), label),
        float(label.size),
        float(label.sum()),
    ]


def best_threshold(score: np.ndarray, label: np.ndarray) -> float:
    """The threshold t of `score >= t` with the highest agreement (the smallest such t)."""
    candidates = np.unique(np.concatenate([score, [np.inf]]))
    agree = [((score >= t) == label).mean() for t in candidates]
    return float(candidates[int(np.argmax(agree))]) if label.size else float("nan")


def rules(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Every proxy rule as a (policy, sparsity, length, depth, sample) score; binary rules are 0/1."""
    r = ds.retrieval_head
    hits = ds.needle_hit.where(r)
    n_ret = r.sum()
    kept_heads = hits.sum(["layer", "head"])
    ret_layers = r.any("head")
    per_layer = hits.max("head").where(ret_layers)  # 1 where some retrieval head of the layer keeps it
    return {
        "needle in >= 1 retrieval head": (kept_heads >= 1).astype(float),
        "needle in >= half the retrieval heads": (kept_heads >= n_ret / 2).astype(float),
        "needle in every retrieval head": (kept_heads >= n_ret).astype(float),
        "needle in every retrieval layer": (per_layer.min("layer") >= 1).astype(float),
        "needle_recall >= t (retrieval heads)": ds.needle_recall_heads.sel(subset="retrieval"),
        "mass_kept >= t (retrieval heads)": ds.mass_kept_heads.sel(subset="retrieval"),
    }


THRESHOLD_RULES = ("needle_recall >= t (retrieval heads)", "mass_kept >= t (retrieval heads)")


def calibrate(ds: xr.Dataset) -> tuple[xr.DataArray, dict]:
    """(calibration[rule, stat], attrs: best rule and fitted thresholds)."""
    answered = ds.retrieved.astype(bool) & ds.done.astype(bool)
    # a pruned cell: some prunable layer keeps fewer than N keys (unprunable sliding layers are NaN)
    pruned = ds.kept.max(["layer", "head"], skipna=True) < ds.length
    cell = answered & pruned & ds.answer.notnull()
    docs = [
        (n, d, s)
        for n in range(ds.sizes["length"])
        for d in range(ds.sizes["depth"])
        for s in range(ds.sizes["sample"])
    ]
    half = xr.zeros_like(ds.done, dtype=bool)
    for k, (n, d, s) in enumerate(docs):
        half[n, d, s] = k % 2 == 1  # test half
    label = ds.answer == 1.0  # every expected value given (the rule of `retrieved`)
    out, attrs = [], {}
    scores = rules(ds)
    for name, score in scores.items():
        sc, lab = xr.broadcast(score, label)
        m = (cell & xr.broadcast(half, cell)[0]).transpose(*sc.dims).values
        train = (cell & ~xr.broadcast(half, cell)[0]).transpose(*sc.dims).values
        s_all, l_all = sc.values, lab.values
        if name in THRESHOLD_RULES:
            t = best_threshold(s_all[train], l_all[train])
            attrs[f"threshold: {name}"] = t
        else:
            t = 0.5
        out.append(_stats(s_all[m] >= t, s_all[m], l_all[m]))
    table = xr.DataArray(
        np.array(out, dtype=np.float64),
        dims=("rule", "stat"),
        coords={"rule": list(scores), "stat": list(STATS)},
    )
    agree = table.sel(stat="agreement").values
    attrs["best_rule"] = str(table.rule.values[int(np.nanargmax(agree))]) if np.isfinite(agree).any() else ""
    attrs["rule_split"] = (
        "thresholds fitted on alternate documents (even positions), all rules judged on the others"
    )
    return table, attrs


def lines(table: xr.DataArray, attrs: dict) -> list[str]:
    """The calibration table as printed by the CLI."""
    out = [f"{'proxy rule':<40} {'agree':>6} {'prec':>6} {'recall':>6} {'AUROC':>6} {'cells':>6}"]
    for rule in table.rule.values:
        v = table.sel(rule=rule)
        out.append(
            f"{rule:<40} {float(v.sel(stat='agreement')):6.3f} {float(v.sel(stat='precision')):6.3f} "
            f"{float(v.sel(stat='recall')):6.3f} {float(v.sel(stat='auroc')):6.3f} {int(v.sel(stat='cells')):6d}"
        )
    out.append(f"best rule (agreement on held-out documents): {attrs.get('best_rule', '')}")
    return out
