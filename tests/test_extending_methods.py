"""docs/extending_methods.md, run: its example method file and YAML, taken out of the page, written to a temporary
folder, loaded as a plugin and used end to end (library, contracts, CLI with --plugin and LATENTTRACER_PLUGINS)."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import natural_crops, save_png
from helpers import method_contracts as contracts
from omegaconf import OmegaConf

from latenttracer.autoencoders import load_autoencoder
from latenttracer.cli import main
from latenttracer.images import load_image
from latenttracer.methods import METHODS, get_method
from latenttracer.registry import PLUGINS_ENV, RegistryError, load_plugins
from latenttracer.tracing import score_images

DOC = Path(__file__).parents[1] / "docs" / "extending_methods.md"
NAME = "pixel_mean_distance"


def doc_block(language: str, contains: str) -> str:
    """The one fenced ``language`` block of the page that contains ``contains``."""
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S) if contains in b]
    assert len(blocks) == 1, f"{DOC}: {len(blocks)} {language} blocks with {contains!r}"
    return blocks[0]


@pytest.fixture()
def registry_snapshot(monkeypatch):
    """Plugins registered in a test are forgotten after it (the registry is process-wide)."""
    METHODS.names()  # discover the built-in methods first
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))


@pytest.fixture()
def plugin_file(tmp_path, registry_snapshot):
    path = tmp_path / "plugins" / f"{NAME}.py"
    path.parent.mkdir()
    path.write_text(doc_block("python", "@METHODS.register"))
    return path


@pytest.fixture(scope="module")
def setup(tiny_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ext_images")
    paths = [save_png(x, folder / f"{i}.png") for i, x in enumerate(natural_crops(4, seed=3))]
    return tiny_dirs["AutoencoderKL-0"], folder, paths


def test_the_example_method_scores_what_it_says(plugin_file, setup):
    model, _, paths = setup
    assert NAME not in METHODS
    load_plugins([plugin_file])
    assert NAME in METHODS
    ae = load_autoencoder(model, resolution=32)
    for norm in ("l1", "l2"):
        frame, _ = score_images(ae, paths, method=get_method(NAME, {"norm": norm}), progress=False)
        for path, score in zip(paths, frame["score"]):  # written out with diffusers: posterior mean, one pass
            x = load_image(path, 32)[0][None]
            with torch.no_grad():
                recon = ae.model.decode(ae.model.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5
            d = (recon - x).abs() if norm == "l1" else (recon - x).square()
            assert score == pytest.approx(d.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        get_method(NAME, {"steps": 3})
    with pytest.raises(ValueError, match="norm 'l3'"):
        get_method(NAME, {"norm": "l3"})


def test_the_example_passes_every_method_contract(plugin_file, setup, tmp_path):
    model, folder, paths = setup
    load_plugins([plugin_file])
    ae = load_autoencoder(model, resolution=32)
    for contract in ("batch_independence", "determinism", "bad_input", "cache_identity"):
        getattr(contracts, f"check_{contract}")(NAME, ae, paths)
    contracts.check_cli_round_trip(NAME, model, folder, tmp_path)


def test_the_example_yaml_is_a_valid_method_preset(plugin_file):
    from experiments.schema import MethodSchema

    load_plugins([plugin_file])
    preset = OmegaConf.merge(OmegaConf.structured(MethodSchema), OmegaConf.create(doc_block("yaml", NAME)))
    method = get_method(preset.name, OmegaConf.to_container(preset.options))
    assert method.name == NAME and method.norm == "l1"


def _trace(*words, out, folder, model):
    return main(["trace", *map(str, words), "--method", NAME, "--norm", "l2", "--model", str(model), "--images",
                 str(folder), "--out", str(out), "--no-cache", "--resolution", "32", "--quiet"])


def test_the_cli_loads_the_example_from_plugin_and_env(plugin_file, setup, tmp_path, monkeypatch, capsys):
    model, folder, paths = setup
    assert NAME not in METHODS
    with pytest.raises(SystemExit, match="2"):  # without the plugin, argparse knows no such method
        _trace(out=tmp_path / "none.csv", folder=folder, model=model)
    assert f"invalid choice: '{NAME}'" in capsys.readouterr().err
    # --plugin FILE: loaded before the flags are built (--norm exists, --method accepts the name).
    with pytest.raises(SystemExit):
        main(["trace", "--plugin", str(plugin_file), "--help"])
    assert "--norm {l1,l2}" in capsys.readouterr().out
    assert main(["--plugin", str(plugin_file), "trace", "--method", NAME, "--norm", "l2", "--model", str(model),
                 "--images", str(folder), "--out", str(tmp_path / "a.csv"), "--no-cache", "--resolution", "32",
                 "--quiet"]) == 0  # --plugin before the command, or after it (below)
    written = pd.read_csv(tmp_path / "a.csv")
    library, _ = score_images(load_autoencoder(model, resolution=32), paths, method=get_method(NAME, {"norm": "l2"}),
                              progress=False)
    np.testing.assert_allclose(written["score"], library["score"], rtol=1e-9)
    # $LATENTTRACER_PLUGINS: a second copy of the file, in a registry without the first one.
    monkeypatch.setattr(METHODS, "_entries", {k: v for k, v in METHODS._entries.items() if k != NAME})
    copy = tmp_path / "env" / f"{NAME}.py"
    copy.parent.mkdir()
    copy.write_text(plugin_file.read_text())
    monkeypatch.setenv(PLUGINS_ENV, str(copy))
    assert _trace(out=tmp_path / "b.csv", folder=folder, model=model) == 0
    pd.testing.assert_series_equal(pd.read_csv(tmp_path / "b.csv")["score"], written["score"])
    # A plugin that cannot be imported: one line, naming it.
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    capsys.readouterr()
    assert _trace("--plugin", broken, out=tmp_path / "c.csv", folder=folder, model=model) == 2  # after the command
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.py" in err and "no_such_module_here" in err
    with pytest.raises(RegistryError):
        load_plugins([broken])
