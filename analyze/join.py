"""RESULTS of one study analyzed a length at a time, joined into the RESULTS of every length.

Each document's numbers depend on that document alone (its kept sets, metrics and answers), so they are
joined along `length` as they are. What pools documents is recomputed over the joined set, exactly as
`analyze` computes it over a whole store: the retrieval heads (mean needle mass over every document),
the head-subset means, the intervals across samples, the causes and the proxy calibration
(`analyze.assembly.summarize`). One exception: a policy calibrated on other documents of the store
(`duo`'s retrieval heads, on the other fold of documents at every length) saw only its own length's.

    python -m analyze.join runs/a/results.zarr runs/b/results.zarr --out runs/ab.results.zarr

`pipelines` joins a `by_length` study's lengths itself.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from analyze.assembly import PER_SETTING_ATTRS, summarize
from analyze.spec import RETRIEVAL_HEADS
from core import schema
from core.errors import UsageError

# what must agree between the parts for their documents to be one study's
SAME_COORDS = (
    schema.POLICY,
    "sparsity",
    "depth",
    "sample",
    "layer",
    "head",
    "pair",
    "variant",
    "answer_token",
)
SAME_ATTRS = ("model", "gqa", "seed", "settings", "policies")


def _check(parts: list[xr.Dataset], names: list[str]) -> None:
    first = parts[0]
    seen = set()
    for name, ds in zip(names, parts):
        lengths = [int(n) for n in ds.length.values]
        if seen & set(lengths):
            raise UsageError(f"{name} repeats length {sorted(seen & set(lengths))[0]}: give each length once")
        seen |= set(lengths)
        for coord in SAME_COORDS:
            if (coord in first.coords) != (coord in ds.coords) or (
                coord in first.coords and not np.array_equal(first[coord].values, ds[coord].values)
            ):
                raise UsageError(f"{name} has other {coord} values than {names[0]}: join one study's lengths")
        for attr in SAME_ATTRS:
            if first.attrs.get(attr) != ds.attrs.get(attr):
                raise UsageError(f"{name} has another {attr} than {names[0]}: join one study's lengths")


def _setting_attrs(one: xr.Dataset, parts: list[dict]) -> dict:
    """A setting's attributes: those summarize computes, over the joined documents (the best proxy
    rule, the full cache's agreement with the dump); the answer pass's peak memory (the largest) and
    time (summed), and budget warnings (every part's) from the parts."""
    out = {k: one.attrs.pop(k) for k in PER_SETTING_ATTRS if k in one.attrs}
    if "calibration" in one:
        out["calibration_attrs"] = dict(one.calibration.attrs)
    peaks = [p["answer_peak_gpu_gb"] for p in parts if "answer_peak_gpu_gb" in p]
    if peaks:
        out["answer_peak_gpu_gb"] = max(peaks)
    seconds: dict = {}
    for p in parts:
        for part, t in p.get("answer_task_seconds", {}).items():
            seconds[part] = round(seconds.get(part, 0.0) + t, 1)
    if seconds:
        out["answer_task_seconds"] = seconds
    out["budget_warnings"] = sorted({w for p in parts for w in p.get("budget_warnings", [])})
    return out


def per_document(ds: xr.Dataset) -> list[str]:
    """The variables that hold one value per document (or per length, the budget): joined as they are."""
    return [v for v in ds.data_vars if "sample" in ds[v].dims or v == "budget"]


def join_lengths(
    parts: list[xr.Dataset], names: list[str] | None = None, retrieval_heads: int = RETRIEVAL_HEADS
) -> xr.Dataset:
    """One RESULTS dataset of `parts` (RESULTS of the same study's lengths, each from its own RUN
    store), ordered by length, its pooled quantities recomputed over every document."""
    names = names or [f"part {i}" for i in range(len(parts))]
    if not parts:
        raise UsageError("no RESULTS to join")
    _check(parts, names)
    # by length, before joining: the arrays then lie as one store's analysis lays them out, so that
    # float32 means over heads add in the same order (a reordered copy rounds differently)
    order = sorted(range(len(parts)), key=lambda i: int(parts[i].length.values.min()))
    parts, names = [parts[i] for i in order], [names[i] for i in order]
    settings = [str(s) for s in parts[0][schema.SETTING].values]
    joined, by_setting = [], {}
    for setting in settings:
        docs = [ds.sel({schema.SETTING: setting}, drop=True)[per_document(ds)] for ds in parts]
        one = xr.concat(docs, dim="length", data_vars="all", coords="minimal", compat="override")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of unfinished documents
            one = summarize(one, retrieval_heads)
        by_setting[setting] = _setting_attrs(
            one, [ds.attrs.get("by_setting", {}).get(setting, {}) for ds in parts]
        )
        joined.append(one)
    varying = [v for v in joined[0].data_vars if v not in schema.SETTING_FREE]
    out = xr.concat(
        joined,
        dim=pd.Index(settings, name=schema.SETTING),
        data_vars=varying,
        coords="minimal",
        compat="override",
        combine_attrs="override",
    )
    for v in schema.SETTING_FREE:
        if v in joined[0]:
            out[v] = joined[0][v]
    for v in out.data_vars:  # the parts' descriptions (long names, rules), where summarize set none
        if v in parts[0] and not out[v].attrs:
            out[v].attrs.update(parts[0][v].attrs)
    out.attrs = dict(parts[0].attrs)
    out.attrs.update(
        {
            "by_setting": by_setting,
            "provenance": json.dumps([ds.attrs.get("provenance") for ds in parts]),
            "model_by_length": {n: m for ds in parts for n, m in ds.attrs.get("model_by_length", {}).items()},
            "joined_from": [ds.attrs.get("source_store", name) for ds, name in zip(parts, names)],
            # no one store: each length's (kept-set pictures need one of them, given with viz --store)
            "source_store": "; ".join(
                str(ds.attrs.get("source_store", name)) for ds, name in zip(parts, names)
            ),
            "unfinished_documents": int(sum(int(ds.attrs.get("unfinished_documents", 0)) for ds in parts)),
            "skipped_corrupt": [c for ds in parts for c in ds.attrs.get("skipped_corrupt", [])],
            "budget_warnings": sorted({w for ds in parts for w in ds.attrs.get("budget_warnings", [])}),
        }
    )
    return out


def retrieval_heads_of(parts: list[xr.Dataset], names: list[str]) -> int:
    """The retrieval-head count the parts were analyzed with (their provenance), which must agree."""
    counts = {}
    for ds, name in zip(parts, names):
        try:
            counts[name] = int(json.loads(ds.attrs["provenance"])["analysis"]["retrieval_heads"])
        except (KeyError, TypeError, ValueError):
            counts[name] = RETRIEVAL_HEADS
    if len(set(counts.values())) > 1:
        raise UsageError(
            f"the parts were analyzed with different --retrieval-heads ({counts}): give --retrieval-heads"
        )
    return next(iter(counts.values()))


def main(argv=None) -> int:
    from core import outputs
    from core.errors import OneLineParser, run_main

    p = OneLineParser(
        prog="python -m analyze.join",
        description="Join RESULTS of one study's lengths, each analyzed from its own RUN store, into one "
        "(the retrieval heads, intervals, causes and calibration recomputed over every length).",
    )
    p.add_argument("results", nargs="+", help="RESULTS.zarr of the lengths, one length each or more")
    p.add_argument("--out", required=True, help="the joined RESULTS.zarr")
    p.add_argument(
        "--retrieval-heads",
        type=int,
        help="how many heads count as retrieval heads (default: the parts' own, from their analysis)",
    )
    args = p.parse_args(argv)

    def body() -> int:
        outputs.check_output(args.out, schema.RESULTS_KIND, inputs=tuple(args.results))
        parts = [schema.open_results(path).load() for path in args.results]
        heads = args.retrieval_heads or retrieval_heads_of(parts, list(args.results))
        ds = join_lengths(parts, list(args.results), heads)
        outputs.write_dataset(ds, args.out)
        print(
            f"join: {len(ds.length)} lengths ({', '.join(str(int(n)) for n in ds.length.values)}) -> {args.out}"
        )
        return 0

    return run_main("python -m analyze.join", body)


if __name__ == "__main__":
    raise SystemExit(main())
