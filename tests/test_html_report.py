"""The HTML report: built from a micro run made through the real code paths, checked as files and in Chromium.

The micro run: two tiny random-init autoencoders (kl-a, kl-b) each score their own decoded images (calibration and
evaluation halves), the other's and a few real crops through :func:`score_images` and a results store; the cells,
tables, figures and scores are written with the same functions ``experiments.table1`` and ``figures`` use.
The browser test opens the page in headless Chromium (the system's ``chromium``, driven by Playwright; nothing
is downloaded) and is marked ``browser``; it skips, saying why, when either is missing.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import decoded_images, natural_crops, save_png
from PIL import Image

from latenttracer import atomic, html_report, provenance, tables
from latenttracer.autoencoders import load_autoencoder
from latenttracer.cli import main
from latenttracer.images import ImageOptions, load_images
from latenttracer.inversion import InversionConfig
from latenttracer.protocol import cell_metrics
from latenttracer.store import ResultStore
from latenttracer.tracing import score_images

MODELS = {"kl-a": "AutoencoderKL-0", "kl-b": "AutoencoderKL-1"}
SECTIONS = ["table1", "hardest", "methods", "attribution", "robustness", "drift", "complexity", "early_exit",
            "schedule_sweep", "ablations", "models", "provenance"]
CONFIG = InversionConfig(steps=4, lr=0.1)


@pytest.fixture(scope="module")
def micro_results(tmp_path_factory, tiny_dirs) -> Path:
    root = tmp_path_factory.mktemp("micro_run")
    results, images = root / "results", root / "images"
    models = {n: load_autoencoder(tiny_dirs[d], name=n, resolution=32) for n, d in MODELS.items()}
    sets = {}
    for i, (name, ae) in enumerate(models.items()):
        (images / name).mkdir(parents=True)
        paths = [str(save_png(x, images / name / f"{k:03d}.png")) for k, x in enumerate(decoded_images(ae, 8, i))]
        sets[name] = {"calibration": paths[:4], "evaluation": paths[4:]}
    (images / "real").mkdir()
    sets["real"] = {"evaluation": [str(save_png(x, images / "real" / f"{k:03d}.png"))
                                   for k, x in enumerate(natural_crops(4, seed=1))]}
    store = ResultStore(root / "store")
    cells, scores = [], []
    with provenance.stage(results, "table1"):
        for name, ae in models.items():
            grid = pd.DataFrame([{"source": s, "split": split, "path": p} for s in sets for split in sets[s]
                                 if s == name or split == "evaluation" for p in sets[s][split]])
            frame, _ = score_images(ae, grid["path"], CONFIG, store=store, progress=False)
            merged = grid.merge(frame, on="path", validate="one_to_one")
            merged.insert(0, "inspected", name)
            scores.append(merged)
            cells += cell_metrics(merged, name, [s for s in sets if s != name], 0.95)
        cells, scores = pd.DataFrame(cells), pd.concat(scores, ignore_index=True)
        tables.write_tables(cells, results / "table1", ["auc", "tpr_at_1fpr", "median_non_belonging"])
        atomic.write_frame(scores.drop(columns="best_latent"), results / "table1_scores.parquet")  # as table1
    with provenance.stage(results, "figures"):
        for name in models:
            threshold = float(cells.loc[cells["inspected"] == name, "threshold"].iloc[0])
            tables.save_figure(tables.loss_histograms(scores, name, threshold), results / "figures" / f"hist_{name}",
                               ("png",))
            tables.save_figure(tables.roc_curves(scores, name), results / "figures" / f"roc_{name}", ("png",))
    return results


def build(micro_results: Path, out: Path, tiny_dirs) -> Path:
    def decoders(name):
        return load_autoencoder(tiny_dirs[MODELS[name]], name=name, resolution=32)

    return html_report.build_run_report(micro_results, out, decoders=decoders, store=ResultStore(
        micro_results.parent / "store"), config={"inversion": {"steps": 4}}, n_cases=2)


def test_report_files_and_reconstructions(micro_results, tmp_path, tiny_dirs):
    page = build(micro_results, tmp_path / "report", tiny_dirs)
    html = page.read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in html
    assert "make ablations" in html and "make compare-methods" in html  # missing inputs say how to make them
    assert "make drift" in html and "make complexity" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    for src in (s.split('"')[0] for s in html.split('src="')[1:]):
        assert (page.parent / src).is_file(), src
    assert "AUC" in html and "background:#" in html  # colour-scaled Table 1
    # each hardest case: its image, the decoded best latent and the difference, at the image's resolution
    recons = sorted((page.parent / "cases").rglob("*_recon.png"))
    assert len(recons) == 2 * 2 * 2
    scores = pd.read_parquet(micro_results / "table1_scores.parquet")
    worst = scores[(scores["inspected"] == "kl-a") & (scores["source"] == "kl-a") & (scores["split"] == "evaluation")]
    worst = worst.nlargest(1, "score").iloc[0]
    recon = np.asarray(Image.open(page.parent / "cases" / "kl-a" / "belonging_0_recon.png"), dtype=np.float64) / 255
    x, _, _ = load_images([worst["path"]], 32, ImageOptions())
    mse = float(((x[0].permute(1, 2, 0).numpy() - recon) ** 2).mean())
    assert mse == pytest.approx(worst["score"], rel=0.05, abs=2e-5)  # 8-bit PNG rounding
    stages = json.loads((micro_results / "provenance.json").read_text())["stages"]
    assert {"table1", "figures"} <= set(stages) and all(s["seconds"] >= 0 for s in stages.values())
    assert "Wall time of each stage" in html and "table1" in html
    # image paths are shown relative to the project (the folder holding results/), not as this machine's paths
    hardest = html.split('id="hardest"')[1].split("<section")[0]
    shown = re.findall(r'<div class="path">([^<]*)</div>', hardest)
    assert len(shown) == 2 * 2 * 2 and str(micro_results.parent) not in hardest
    assert all(p.startswith("images/") and (micro_results.parent / p).is_file() for p in shown), shown


def test_display_path_never_shows_the_machine():
    root = Path("/srv/me/latenttracer")
    assert html_report.display_path(root / "results/cache/images/kl-a/00001.png", root, "results") == \
        "results/cache/images/kl-a/00001.png"
    # scores computed in another checkout: shown from its results folder on
    assert html_report.display_path("/home/other/clone/results/cache/images/vq/00007.png", root, "results") == \
        "results/cache/images/vq/00007.png"
    assert html_report.display_path("/home/other/photos/a.png", root, "results") == "…/photos/a.png"
    assert html_report.display_path("photos/a.png", Path.cwd() / "photos") == "a.png"
    assert html_report.display_path("elsewhere/a.png", root) == "elsewhere/a.png"


def test_rows_without_latent_or_image_say_so(micro_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(micro_results, results)
    scores = pd.read_parquet(results / "table1_scores.parquet")
    scores.loc[scores.index[scores["source"] == "real"], "path"] = "/nowhere/real.png"
    atomic.write_frame(scores, results / "table1_scores.parquet")
    # no store: the latents cannot be found (as for rows cached before latents were stored)
    html = html_report.build_run_report(results, tmp_path / "report", decoders=lambda name: 1 / 0).read_text()
    assert "No stored latent" in html and "make reproduce-table1" in html
    assert not list((tmp_path / "report").rglob("*_recon.png"))
    assert list((tmp_path / "report").rglob("*_image.png"))  # the images are still shown


def test_empty_results_dir_explains_every_section(tmp_path):
    html = html_report.build_run_report(tmp_path / "nothing", tmp_path / "report").read_text()
    assert html.count('class="missing"') >= 6 and "make reproduce-table1" in html


def test_results_of_other_stages_appear_when_present(tmp_path):
    results = tmp_path / "results"
    (results / "figures").mkdir(parents=True)
    pd.DataFrame({"method": ["latenttracer", "aedr"], "auc": [0.99, 0.7]}).to_csv(results / "methods.csv",
                                                                                  index=False)
    tables.save_figure(tables.score_histogram([1e-4, 2e-4, 1e-3], 3e-4), results / "figures" / "robustness_jpeg",
                       ("png",))
    html = html_report.build_run_report(results, tmp_path / "report").read_text()
    methods = html.split('id="methods"')[1].split("<section")[0]
    assert "aedr" in methods and "0.700" in methods and "background:#" in methods
    assert "make compare-methods" not in methods
    robustness = html.split('id="robustness"')[1].split("<section")[0]
    assert "figures/robustness_jpeg.png" in robustness and (tmp_path / "report/figures/robustness_jpeg.png").is_file()
    assert "make attribution" in html


def test_provenance_records_stages_atomically(tmp_path, monkeypatch):
    for k in range(3):
        provenance.record_stage(tmp_path, f"s{k}", k + 0.5, config={"k": k})
    provenance.record_stage(tmp_path, "s1", 9.0)
    stages = provenance.load(tmp_path)["stages"]
    assert set(stages) == {"s0", "s1", "s2"} and stages["s1"]["seconds"] == 9.0 and stages["s2"]["config"] == {"k": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provenance.json"]
    info = provenance.collect({"a": 1})
    assert info["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert provenance.package_versions(("no-such-distribution-xyz",)) == {"no-such-distribution-xyz": None}
    assert info["machine"]["cpu_count"] and info["config"] == {"a": 1}
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository: no error


def test_trace_report(tmp_path, tiny_dirs, capsys):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, x in enumerate(torch.cat([decoded_images(ae, 3, 5), natural_crops(3, seed=6)])):
        save_png(x, folder / f"{k}.png")
    out = tmp_path / "trace.html"
    assert main(["trace", "--model", str(tiny_dirs["AutoencoderKL-0"]), "--images", str(folder), "--out",
                 str(tmp_path / "s.csv"), "--threshold", "0.05", "--steps", "3", "--no-cache", "--resolution", "32",
                 "--quiet", "--html", str(out)]) == 0
    html = out.read_text()
    for sid in ("summary", "distribution", "nearest", "verdicts", "provenance"):
        assert f'id="{sid}"' in html
    assert (tmp_path / "trace_files" / "scores.png").is_file()
    assert len(list((tmp_path / "trace_files").glob("near_*.png"))) == 6
    assert str(out) in capsys.readouterr().out
    # one verdict cell per image, matching the CSV's belonging column; paths relative to the traced folder
    verdicts = html.split('id="verdicts"')[1].split("</table>")[0]
    shown = dict(re.findall(r'<th class="row">([^<]*)</th>\s*<td[^>]*>[^<]*</td><td[^>]*>ok</td><td[^>]*>([^<]*)</td>',
                            verdicts))
    rows = pd.read_csv(tmp_path / "s.csv")
    expected = {Path(p).name: "belonging" if b else "not belonging" for p, b in zip(rows["path"], rows["belonging"])}
    assert shown == expected and len(shown) == 6
    # the threshold lies between the decoded images (0-2) and the natural crops (3-5): both verdicts are checked
    assert [shown[f"{k}.png"] for k in range(6)] == ["belonging"] * 3 + ["not belonging"] * 3
    assert str(folder) not in html.split('id="provenance"')[0]
    near = re.findall(r'<div class="path">([^<]*)</div>', html)
    assert len(near) == 6 and set(near) <= set(expected)


def _browser_missing() -> str:
    """Why the browser test cannot run here ("" when it can)."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "browser test: no `chromium` on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser test: the `playwright` Python package is not installed (pip install -e '.[dev]')"
    return ""


@pytest.mark.browser
@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "-")
def test_report_in_headless_chromium(micro_results, tmp_path, tiny_dirs):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    page_path = build(micro_results, tmp_path / "report", tiny_dirs)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            present = page.evaluate(f"{json.dumps(SECTIONS)}.filter(id => document.getElementById(id) !== null)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(widths) >= 4 + 2 * 2 * 2 * 3 and all(w > 0 for _, w in widths), widths
    assert present == SECTIONS
    assert Image.open(tmp_path / "report.png").size[1] > 900


def test_report_entry_point_logs_the_folder_to_wandb(micro_results, tmp_path, monkeypatch):
    """``python -m experiments.html_report`` on cached results: the page, its provenance stage, a W&B artifact."""
    import warnings

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from experiments import html_report as entry

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    results = tmp_path / "results"
    shutil.copytree(micro_results, results)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("html_report", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                           "logger.mode=offline", "decode=false", "cases=1"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = entry.run(cfg)
    assert not [w for w in caught if "W&B" in str(w.message)]
    assert page == results / "report" / "index.html" and page.is_file()
    assert [k for k in provenance.load(results)["stages"] if k.startswith("report [")]  # named with its overrides
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


def test_metric_table_shows_intervals_when_given_bounds():
    from latenttracer import html_report

    matrix = pd.DataFrame({"b": [0.9444, np.nan]}, index=["a", "c"])
    lo = pd.DataFrame({"b": [0.8012, np.nan]}, index=["a", "c"])
    hi = pd.DataFrame({"b": [1.0, np.nan]}, index=["a", "c"])
    table = html_report.metric_table(matrix, "auc", "AUC", bounds=(lo, hi))
    assert [cell.text for _, cells in table.rows for cell in cells] == ["0.944 [0.80, 1.00]", "–"]
    plain = html_report.metric_table(matrix, "auc", "AUC")
    assert plain.rows[0][1][0].text == "0.944"
