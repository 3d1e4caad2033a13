"""docs/extending_autoencoders.md's worked example, as written there: a plugin family loaded and run end to end."""

import csv
import re
from pathlib import Path

import pytest
import torch
from conftest import save_png
from helpers.autoencoder_contracts import CONTRACTS

from latenttracer.autoencoders import FAMILIES, AutoencoderLoadError, load_autoencoder
from latenttracer.inversion import InversionConfig, invert
from latenttracer.registry import load_plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending_autoencoders.md"


def example_code() -> str:
    """The first ```python block after the line naming ``toy_family.py``."""
    text = DOC.read_text()
    start = text.index("file `toy_family.py`")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"{DOC}: no python block after the toy_family.py line"
    return match.group(1)


@pytest.fixture(scope="module")
def toy_family(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "toy_family.py"
    path.write_text(example_code())
    load_plugins([path])
    return FAMILIES.get("toy")


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_example_family_passes_every_contract(toy_family, contract, tmp_path):
    contract(toy_family, tmp_path)


def test_example_family_traces_end_to_end(toy_family, tmp_path):
    from latenttracer.cli import main

    source = toy_family.tiny_for_tests(tmp_path / "my_toy", seed=0)
    ae = load_autoencoder(source)
    assert ae.family == "toy" and ae.resolution == 32 and ae.decoder_width == 16
    # own decodes and photo-like noise images: inversion runs and scores every one
    g = torch.Generator().manual_seed(0)
    own = ae.decode(torch.randn(2, 4, 8, 8, generator=g))
    results = invert(ae, torch.cat([own, torch.rand(2, 3, 32, 32, generator=g)]),
                     InversionConfig(steps=5, batch_size=4))
    assert [r.status for r in results] == ["ok"] * 4
    assert all(0 <= r.score <= r.init_loss for r in results)
    images = tmp_path / "images"
    images.mkdir()
    for i, x in enumerate(own):
        save_png(x, images / f"{i}.png")
    out = tmp_path / "scores.csv"
    assert main(["trace", "--model", source, "--images", str(images), "--out", str(out), "--steps", "3",
                 "--no-cache", "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and all(r["status"] == "ok" and float(r["score"]) >= 0 for r in rows)


def test_example_family_rejects_a_bad_folder_by_name(toy_family, tmp_path):
    source = Path(toy_family.tiny_for_tests(tmp_path / "broken", seed=0))
    (source / "toy.pth").write_bytes(b"not a torch file")
    with pytest.raises(AutoencoderLoadError, match=r"broken: not a toy autoencoder"):
        load_autoencoder(source)
