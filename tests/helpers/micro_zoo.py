"""The micro zoo the entry-point tests run on, and composing a job config as ``@hydra.main`` does.

Six untrained members with the real zoo's architectures, a few images, a few steps. A test module uses them with

    from helpers.micro_zoo import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)

(``_wandb_sandbox`` is autouse: importing it keeps W&B off the network and out of the home directory for every
test of that module; ``micro_zoo`` and ``workspace`` are built once per module).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
MEMBERS = {"kl-a": "kl", "kl-b": "kl", "kl-a-ft": "kl", "vq": "vq", "tiny": "tiny", "kl16": "kl"}
# 6 generated images per member (3 calibration / 3 evaluation), 4 real crops (of 12 built), 3 steps.
MICRO = ["debug=default", "suite.generated.n=6", "suite.generated.batch_size=6", "suite.real.n=4",
         "suite.real.crops.n=12", "inversion.steps=3", "progress=false"]


@pytest.fixture(autouse=True)
def _wandb_sandbox(tmp_path, monkeypatch):
    """W&B never touches the network or the home directory."""
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "wandb_cache"),
                     ("WANDB_CONFIG_DIR", "wandb_config"), ("WANDB_DATA_DIR", "wandb_data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory) -> Path:
    """Six untrained members with the real zoo's architectures, saved as LDMPipeline directories."""
    from data_gen import zoo

    root = tmp_path_factory.mktemp("micro_zoo")
    for seed, (name, kind) in enumerate(MEMBERS.items()):
        m = zoo.MEMBERS[name]
        torch.manual_seed(seed)
        ae = zoo.build_autoencoder(kind, 32, m.latent_channels, m.widths, m.norm_groups)
        unet = zoo.build_prior(zoo.latent_size(ae, 32), m.latent_channels)
        zoo.make_pipeline(ae, unet).save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One root (caches, results) shared by the tests of this module, as a user's checkout would be."""
    return tmp_path_factory.mktemp("workspace")


def job(name: str, root: Path, zoo_dir: Path, out: Path, overrides=()):
    """A composed, resolved job config like @hydra.main passes it (HydraConfig set, no `hydra` node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[*MICRO, f"paths.root_dir={root}", f"paths.zoo_dir={zoo_dir}",
                                       f"paths.output_dir={out}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
