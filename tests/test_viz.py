"""Figures from real results: values match the data, files are self-contained, the explorer renders."""

import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.conftest import ROOT, one_setting, run_cli

METHODS = "full,oracle,h2o,snapkv,cab,cab_high"


@pytest.fixture(scope="module")
def study(tiny_llama_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("viz")
    store, results = base / "run.zarr", base / "run.results.zarr"
    r = run_cli(
        "dump",
        "--model",
        tiny_llama_dir,
        "--lengths",
        "256,320",
        "--depths",
        "0.2,0.5,0.8",
        "--samples",
        "2",
        "--window",
        "8",
        "--block",
        "32",
        "--out",
        str(store),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "analyze",
        str(store),
        "--policies",
        METHODS,
        "--sparsity",
        "0.5,0.9",
        "--workers",
        "1",
        "--out",
        str(results),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    return store, results


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    store, results = study
    out = tmp_path_factory.mktemp("report") / "report"
    r = run_cli("viz", str(results), "--out", str(out), "--store", str(store), "--dpi", "60")
    assert r.returncode == 0, r.stderr
    return out


def test_report_files_and_offline_html(report):
    for name in (
        "index.html",
        "heatmaps.html",
        "curves.html",
        "keptset.html",
        "difference_cab_h2o.html",
        "summary.csv",
    ):
        assert (report / name).stat().st_size > 0, name
    assert len(list(report.glob("heatmap_needle_hit_*_s*.png"))) == 4
    # every CAB variant against h2o: one PNG per setting (aware by default) and sparsity
    assert sorted(p.name for p in report.glob("difference_cab_h2o_*.png")) == [
        "difference_cab_h2o_aware_s0.5.png",
        "difference_cab_h2o_aware_s0.9.png",
    ]
    for html in report.glob("*.html"):
        text = html.read_text()
        assert not re.search(r"<script[^>]*src=[\"']https?://", text), html
        assert not re.search(r"<link[^>]*href=[\"']https?://", text), html
        assert not re.search(r"<script[^>]*src=[\"'](?!data:)", text), html  # no external script at all


def test_summary_csv_rows_and_values(report, study):
    df = pd.read_csv(report / "summary.csv")
    assert len(df) == 6 * 2 * 2  # policy x sparsity x length
    ds = one_setting(xr.open_zarr(study[1]))
    # independent: mean over layer, head, then samples, then depths
    expected = (
        ds.needle_hit.sel({"policy": "h2o"})
        .sel(sparsity=0.9, length=320)
        .mean(["layer", "head"])
        .mean("sample")
        .mean("depth")
    )
    row = df[(df.policy == "h2o") & (df.sparsity == 0.9) & (df.length == 320)]
    assert float(row.needle_hit_all.iloc[0]) == pytest.approx(float(expected), abs=1e-4)
    assert (df[df.policy == "full"].needle_hit_all == 1).all()


def test_heatmap_cells_equal_results(study):
    import holoviews as hv

    from viz import heatmaps

    hv.extension("bokeh", logo=False)
    ds = one_setting(xr.open_zarr(study[1]).load())
    layout = heatmaps.figure(ds, 0.9, "needle_recall", "all")
    hm = layout.values()[METHODS.split(",").index("snapkv")].get(0)
    cells = {(r[0], r[1]): r[2] for r in hm.dframe().itertuples(index=False)}
    ref = ds.needle_recall.sel({"policy": "snapkv"}).sel(sparsity=0.9).mean(["layer", "head"]).mean("sample")
    assert cells[("256", "0.50")] == pytest.approx(round(float(ref.sel(length=256, depth=0.5)), 2))


def test_interactive_page_carries_every_frame(study):
    from viz import heatmaps
    from viz.select import subsets

    ds = one_setting(xr.open_zarr(study[1]).load())
    doc = heatmaps.interactive(ds)
    sources = [r.data_source for fig in doc.children[1].children for r in getattr(fig[0], "renderers", [])]
    keys = {
        heatmaps.frame_key(float(s), m, h)
        for s in ds.sparsity.values
        for m in heatmaps.METRICS
        for h in subsets(ds)
    }
    rect = [s for s in sources if "zvalues" in s.data]
    assert rect and all(keys <= set(s.data) for s in rect)


def test_kept_sets_respect_the_budget(study):
    from analyze.keptsets import kept_sets
    from viz import keptset

    store, _ = study
    sets = kept_sets(str(store), 320, 1, 0, 2, ["h2o", "cab"], [0.9])
    assert (sets.kept.sum("key") == round(0.1 * 320)).all()
    frac, width = keptset.binned(sets.kept.values.reshape(-1, 320), 100)
    assert width == 4 and frac.shape == (2 * 4, 80)
    np.testing.assert_allclose(frac.sum(-1) * width, sets.kept.values.reshape(-1, 320).sum(-1))


def test_picture_kept_sets_are_the_scored_ones_random_and_gqa_head(study, tmp_path):
    """The kept-set picture of a `--gqa head --seed 3` study draws exactly the sets that were scored:
    metrics recomputed from the picture's masks equal RESULTS bit for bit (random included), and the
    image rows are those masks, first policy at the top under its own label."""
    from analyze import metrics
    from analyze.keptsets import kept_sets_scored
    from core.runstore import load_doclayer

    store, _ = study
    out = tmp_path / "head.results.zarr"
    r = run_cli(
        "analyze",
        str(store),
        "--policies",
        "random,h2o,full",
        "--sparsity",
        "0.5,0.9",
        "--gqa",
        "head",
        "--seed",
        "3",
        "--workers",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    res = one_setting(xr.open_zarr(out).load())
    assert res.attrs["gqa"] == "head" and res.attrs["seed"] == 3
    for layer in (0, 2):
        sets = kept_sets_scored(res, str(store), 320, 1, 0, layer)
        x, token_masks = load_doclayer(str(store), 320, 1, 0, layer, 2, 0)
        for i, policy in enumerate(res.policy.values):
            for j, sp in enumerate(res.sparsity.values):
                m = metrics.kept_metrics(sets.kept.values[i, j], token_masks, x.final_row.astype(np.float64))
                scored = (
                    res.sel(policy=policy, sparsity=sp, length=320).isel(depth=1, sample=0).sel(layer=layer)
                )
                np.testing.assert_array_equal(m[1].astype(np.float32), scored.needle_recall.values)
                np.testing.assert_array_equal(m[2].astype(np.float32), scored.mass_kept.values)
        # under gqa=head the two query heads of a kv group keep different random sets
        assert not np.array_equal(sets.kept.values[0, 1, 0], sets.kept.values[0, 1, 1])


def test_keptset_picture_labels_match_their_bands(study):
    """Two policies with known, different kept sets: `full` keeps every key, `streaming` at 0.9 keeps
    4 sinks and the most recent keys. Each band of the picture, found by its label's tick, shows its
    own policy's keys."""
    from analyze.keptsets import kept_sets
    from viz import keptset

    store, _ = study
    for order in (["full", "streaming"], ["streaming", "full"]):
        sets = kept_sets(str(store), 320, 1, 0, 2, order, [0.9])
        pic = keptset.picture(sets)
        img = pic.get(0)
        ticks = dict((label, y) for y, label in img.opts.get("plot").kwargs["yticks"])
        assert set(ticks) == set(order)
        assert img[160.5, ticks["full"]] == 1.0  # the middle of the document: full keeps it
        assert img[160.5, ticks["streaming"]] == 0.0  # streaming evicted it
        assert img[319.5, ticks["streaming"]] == 1.0  # and keeps the most recent key


def test_viz_bad_input(tmp_path):
    r = run_cli("viz", str(tmp_path / "nothing.zarr"))
    assert r.returncode == 2 and "python -m analyze" in r.stderr and "Traceback" not in r.stderr


def _chromium():
    for exe in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(exe):
            return shutil.which(exe)
    return None


needs_browser = pytest.mark.skipif(
    _chromium() is None or shutil.which("chromedriver") is None,
    reason="Debian chromium + chromium-driver are not installed (.ci/run installs them)",
)


def _driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        "--allow-file-access-from-files",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


READ_CELLS = """
    const out = {rects: [], texts: []};
    for (const m of Bokeh.documents[0].all_models) {
        if (!m.data) continue;
        const d = m.data instanceof Map ? Object.fromEntries(m.data) : m.data;
        if (d.zvalues) out.rects.push(Array.from(d.zvalues).map(Number));
        else if (d.value && Object.keys(d).some(k => k.startsWith('t:'))) out.texts.push(Array.from(d.value).map(String));
    }
    return out;
"""


@needs_browser
def test_heatmap_numbers_follow_every_widget(report, study, tmp_path):
    """heatmaps.html in headless Chromium: after each widget change, the number written in every cell
    is the value its colour shows, and both are the selected frame's means from RESULTS."""
    from viz.select import cell_mean

    res = one_setting(xr.open_zarr(study[1]).load())
    driver = _driver(tmp_path)
    try:
        driver.get((report / "heatmaps.html").as_uri())
        deadline = time.time() + 60
        while time.time() < deadline and not driver.execute_script(
            "return !!(window.Bokeh && Bokeh.documents.length)"
        ):
            time.sleep(0.5)
        frames = [
            ("sparsity", "0.9"),
            ("metric", "needle_recall"),
            ("heads", "retrieval"),
            ("metric", "mass_kept"),
        ]
        state = {"sparsity": "0.5", "metric": "needle_hit", "heads": "all"}
        for title, value in frames:
            driver.execute_script(
                "for (const m of Bokeh.documents[0].all_models) { if (m.title === arguments[0] && m.options) m.value = arguments[1]; }",
                title,
                value,
            )
            state[title] = value
            time.sleep(0.5)
            cells = driver.execute_script(READ_CELLS)
            assert len(cells["rects"]) == len(cells["texts"]) == res.sizes["policy"]
            for i, policy in enumerate(res.policy.values):
                want = cell_mean(res, state["metric"], state["heads"]).sel(
                    policy=policy, sparsity=float(state["sparsity"])
                )
                shown = sorted(cells["rects"][i])
                assert shown == sorted(round(float(v), 2) for v in want.values.ravel()), (
                    title,
                    value,
                    policy,
                )
                assert sorted(cells["texts"][i]) == sorted(f"{v:.2f}" for v in cells["rects"][i]), (
                    title,
                    value,
                )
    finally:
        driver.quit()


@needs_browser
def test_explorer_renders_and_selector_changes_heatmap(study, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "viz", "serve", str(study[1]), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    driver = _driver(tmp_path)
    try:
        deadline = time.time() + 60
        while True:
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)

        def heatmap_text():
            # Bokeh draws on canvases: read the heatmap cells from the page's Bokeh document
            return driver.execute_script("""
                const docs = window.Bokeh && Bokeh.documents;
                if (!docs || !docs.length) return null;
                const out = [];
                for (const m of docs[0].all_models) {
                    if (!m.data) continue;
                    const d = m.data instanceof Map ? Object.fromEntries(m.data) : m.data;
                    if (d.zvalues) out.push(Array.from(d.zvalues).join(','));
                }
                return out.join('|');
            """)

        deadline = time.time() + 90
        before = None
        while time.time() < deadline and not before:
            before = heatmap_text()
            time.sleep(1)
        assert before, "the heatmap never rendered"
        driver.save_screenshot(str(tmp_path / "explorer_before.png"))
        # change the metric selector through the Bokeh model (the widget lives in a shadow DOM)
        driver.execute_script("""
            for (const m of Bokeh.documents[0].all_models) {
                if (m.title === 'metric' && m.options) { m.value = 'mass_kept'; }
            }
        """)
        after = before
        deadline = time.time() + 60
        while time.time() < deadline and after == before:
            time.sleep(1)
            after = heatmap_text()
        assert after != before, "changing the metric did not change the heatmap"
        driver.save_screenshot(str(tmp_path / "explorer_after.png"))
        assert (tmp_path / "explorer_after.png").stat().st_size > 10_000
        shots = ROOT / "runs" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "explorer_after.png", shots / "explorer.png")
    finally:
        driver.quit()
        server.kill()


def test_calibration_figure_one_colour_per_policy_and_each_point_labelled_with_its_sparsity(monkeypatch):
    """The calibration figure is readable: every policy its own colour (oracle and cab shared red
    before), and every point names its sparsity."""
    import holoviews as hv
    import xarray as xr

    from analyze.options import DEFAULT_POLICIES
    from viz import calibration

    names = list(DEFAULT_POLICIES)  # 11 policies: more than a 10-colour palette holds
    grid = np.linspace(0, 1, len(names) * 3).reshape(len(names), 3)
    rates = xr.Dataset(
        {"proxy": (("policy", "sparsity"), grid), "answer": (("policy", "sparsity"), grid[::-1])},
        coords={"policy": names, "sparsity": [0.3, 0.5, 0.7]},
        attrs={"rule": "needle in every retrieval head"},
    )
    monkeypatch.setattr(calibration, "proxy_vs_answer", lambda results: rates)
    hv.extension("bokeh")
    fig = calibration.figure(None)
    scatters = [e for e in fig if isinstance(e, hv.Scatter)]
    assert [e.label for e in scatters] == names
    colours = [hv.Store.lookup_options("bokeh", e, "style").kwargs["color"] for e in scatters]
    assert len(set(colours)) == len(names)
    labels = [e for e in fig if isinstance(e, hv.Labels)]
    assert len(labels) == len(names)
    assert all(list(lab.dimension_values("text")) == ["0.3", "0.5", "0.7"] for lab in labels)


def test_heatmaps_of_several_tasks_behind_a_task_selector(study, tmp_path):
    _, results = study
    out = tmp_path / "tasks.html"
    r = run_cli("viz", "tasks", f"passkey={results}", f"multikey:3={results}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert '"title":"task"' in page.replace(" ", "") and "multikey:3" in page and "passkey" in page
    assert "<script src=" not in page  # self-contained
    bad = run_cli("viz", "tasks", f"passkey{results}", "--out", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and "is not TASK=RESULTS" in bad.stderr and not (tmp_path / "x.html").exists()
