"""The leaderboard's order against kvpress's published one: Spearman's rho over shared policies."""

from __future__ import annotations

import pandas as pd

from viz import leaderboard


def board(scores: dict) -> pd.DataFrame:
    return pd.DataFrame({"policy": list(scores), "0.5": list(scores.values())})


def test_rho_is_one_for_kvpress_own_order_and_minus_one_reversed():
    own = {leaderboard.KVPRESS[p]: s for p, s in leaderboard.KVPRESS_AT_HALF.items() if p != "PyramidKV"}
    rho, k, side = leaderboard.spearman_vs_kvpress(board(own))
    assert k == len(own) and abs(rho - 1) < 1e-12
    rho, _, _ = leaderboard.spearman_vs_kvpress(board({p: -s for p, s in own.items()}))
    assert abs(rho + 1) < 1e-12


def test_rho_counts_only_shared_policies_and_needs_three():
    rho, k, _ = leaderboard.spearman_vs_kvpress(board({"full": 90.0, "h2o": 50.0, "cab": 70.0}))
    assert k == 2 and rho != rho  # NaN: two shared policies rank nothing
    rho, k, _ = leaderboard.spearman_vs_kvpress(board({"full": 90.0, "h2o": 50.0, "random": 60.0}))
    assert k == 3 and abs(rho - 0.5) < 1e-12  # random above h2o: one swap of three


def test_cause_split_counts_each_failed_answer_once_and_draws_bars(tmp_path):
    import holoviews as hv
    import numpy as np
    import xarray as xr

    from core import schema
    from viz.report import save_html

    hv.extension("bokeh", logo=False)
    code = np.array(
        [[[[0, 1, 2, 3, -1]], [[2, 2, -1, -1, -1]]]], dtype=np.int8
    )  # setting, policy, sparsity, doc
    ds = xr.Dataset(
        {
            "cause": (
                ("setting", "policy", "sparsity", "length", "depth"),
                code[:, :, :, None, :].repeat(1, 3),
            )
        },
        coords={
            "setting": ["aware"],
            "policy": ["h2o", "snapkv"],
            "sparsity": [0.5],
            "length": [256],
            "depth": np.arange(5),
        },
    ).expand_dims(sample=[0], axis=-1)
    split = leaderboard.cause_split(ds)
    h2o = split.set_index("policy").loc["h2o"]
    assert [int(h2o[c]) for c in schema.CAUSES] == [1, 1, 1, 1] and int(h2o.failed) == 4
    snap = split.set_index("policy").loc["snapkv"]
    assert int(snap[schema.CAUSES[2]]) == 2 and int(snap.failed) == 2
    page = save_html(leaderboard.cause_bars(split), tmp_path / "causes.html", "why")
    assert "evicted" in page.read_text()


def test_cause_map_colours_each_cell_by_its_samples_outcome(tmp_path):
    import numpy as np
    import xarray as xr

    from core import schema
    from viz import heatmaps

    names = [n for n, _ in heatmaps.OUTCOMES]
    assert names[1:5] == list(schema.CAUSES)  # the causes' codes, shifted by one
    # per document: answer, the full cache answers, cause, scored
    answer = np.array([1.0, 0.0, 0.0, 0.5, 0.0, np.nan])
    retrieved = np.array([True, True, True, True, False, True])
    cause = np.array([-1, 2, 3, 1, -1, -1])
    done = np.array([True, True, True, True, True, False])
    got = heatmaps.outcomes(answer, retrieved, cause, done)
    assert got.tolist() == [0, 3, 4, 2, 5, -1]
    assert heatmaps.cell_outcome(np.array([0, 0, 3])) == (0, "ok2 e1")
    assert heatmaps.cell_outcome(np.array([0, 3, 4])) == (3, "ok1 e1 k1")  # ties: the first cause
    assert heatmaps.cell_outcome(np.array([0, 4])) == (4, "ok1 k1")  # never better than it is
    assert heatmaps.cell_outcome(np.array([5, 5, 0])) == (5, "full fails")
    assert heatmaps.cell_outcome(np.array([-1, -1])) == (-1, "")

    dims = ("policy", "sparsity", "length", "depth", "sample")
    shape = (2, 1, 2, 3, 2)
    ans = np.ones(shape)
    ans[1] = 0.0
    code = np.full(shape, -1, dtype=np.int8)
    code[1] = 2  # the second policy: every document evicted
    ds = xr.Dataset(
        {
            "answer": (dims, ans),
            "cause": (dims, code),
            "retrieved": (dims[2:], np.ones(shape[2:], dtype=bool)),
            "done": (dims[2:], np.ones(shape[2:], dtype=bool)),
        },
        coords={"policy": ["full", "h2o"], "sparsity": [0.9], "length": [256, 512], "depth": [0.0, 0.5, 1.0]},
    )
    fig = heatmaps.cause_figure(ds, 0.9, "aware", dpi=50)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("ok2") == 6 and texts.count("e2") == 6
    fig.savefig(tmp_path / "causes.png")
    assert (tmp_path / "causes.png").stat().st_size > 5_000


def test_a_binary_task_rebuilt_from_its_csvs_ranks_and_splits_as_its_results_do(tmp_path):
    """`bench/leaderboard_table.py --earlier`: a task whose RESULTS are gone enters from the two CSVs
    written for it; with binary scores its table (scores and Wilson intervals) and its cause split
    equal those of the RESULTS themselves."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    import xarray as xr

    from core import schema

    spec = importlib.util.spec_from_file_location(
        "leaderboard_table", Path(__file__).resolve().parent.parent / "bench" / "leaderboard_table.py"
    )
    lt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lt)
    rng = np.random.default_rng(0)
    pols, sps, docs = ["full", "h2o", "snapkv", "kvzip"], [0.25, 0.5, 0.875], 25
    answer = (rng.random((2, len(pols), len(sps), 1, 5, 5)) < 0.6).astype(float)
    answer[:, 0] = 1.0  # the full cache answers every document
    cause = np.where(answer == 1, -1, rng.integers(0, len(schema.CAUSES), answer.shape)).astype(np.int8)
    dims = (schema.SETTING, schema.POLICY, "sparsity", "length", "depth", "sample")
    ds = xr.Dataset(
        {
            "answer": (dims, answer),
            "cause": (dims, cause),
            "retrieved": (("length", "depth", "sample"), np.ones((1, 5, 5), dtype=bool)),
            "done": (("length", "depth", "sample"), np.ones((1, 5, 5), dtype=bool)),
        },
        coords={
            schema.SETTING: ["agnostic", "aware"],
            schema.POLICY: pols,
            "sparsity": sps,
            "length": [4096],
            "depth": np.linspace(0, 1, 5),
            "sample": np.arange(5),
        },
    )
    boards = pd.concat(
        [leaderboard.table({"t": ds}, s).assign(setting=s) for s in ("agnostic", "aware")], ignore_index=True
    )
    boards.to_csv(tmp_path / "board.csv", index=False, float_format="%.2f")
    leaderboard.cause_split(ds).to_csv(tmp_path / "causes.csv", index=False)
    _, back = lt.earlier(f"t={tmp_path / 'board.csv'},{tmp_path / 'causes.csv'}")
    assert int(back.done.sum()) == docs
    for s in ("agnostic", "aware"):
        a, b = leaderboard.table({"t": ds}, s), leaderboard.table({"t": back}, s)
        cols = [c for c in a.columns if c != "rank"]
        pd.testing.assert_frame_equal(
            a[cols].set_index("policy").sort_index(), b[cols].set_index("policy").sort_index(), atol=0.006
        )
    order = ["setting", "policy", "sparsity"]
    pd.testing.assert_frame_equal(
        leaderboard.cause_split(ds).sort_values(order).reset_index(drop=True),
        leaderboard.cause_split(back).sort_values(order).reset_index(drop=True),
    )
