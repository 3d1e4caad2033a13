"""Composing an entry point's config as ``@hydra.main`` does, fully resolved (shared by the config tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_resolved(name: str, overrides: list[str], tmp_path: Path, conf: Path = CONF):
    """Compose like @hydra.main does, resolve every value, and return (job config, hydra config)."""
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/out",
                                       *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    hydra_cfg = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)  # every interpolation resolves
    return cfg, hydra_cfg
