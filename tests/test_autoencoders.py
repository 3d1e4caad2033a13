import json

import pytest
import torch
from conftest import make_autoencoder

from latenttracer.autoencoders import AutoencoderLoadError, load_autoencoder


@pytest.mark.parametrize("class_name,kind", [("AutoencoderKL", "kl"), ("VQModel", "vq"), ("AutoencoderTiny", "tiny")])
def test_bare_autoencoder_loads_with_conventions(tiny_dirs, class_name, kind):
    ae = load_autoencoder(tiny_dirs[f"{class_name}-0"], resolution=32)
    assert ae.family == f"diffusers-{kind}" and ae.name == f"{class_name}-0" and ae.resolution == 32
    assert len(ae.fingerprint) == 16
    x = torch.rand(2, 3, 32, 32)
    z = ae.encode(x)
    raw = ae.model
    with torch.no_grad():
        if kind == "kl":
            expected = raw.encode(x * 2 - 1).latent_dist.mean * raw.config.scaling_factor
            torch.testing.assert_close(z, expected)
        elif kind == "vq":  # the quantised codes: every latent vector is a codebook entry
            codebook = raw.quantize.embedding.weight
            vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            assert torch.cdist(vectors, codebook).min(1).values.max() < 1e-4
    y = ae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_fingerprint_follows_weights(tiny_dirs):
    a0 = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    a1 = load_autoencoder(tiny_dirs["AutoencoderKL-1"], resolution=32)
    assert a0.fingerprint != a1.fingerprint
    assert load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32).fingerprint == a0.fingerprint


def _ldm_pipeline_dir(tmp_path, class_name="AutoencoderKL"):
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    pipe = LDMPipeline(vqvae=make_autoencoder(class_name, 0), unet=unet, scheduler=DDIMScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_pipeline_dir_loads_only_its_autoencoder_and_native_resolution(tmp_path):
    d = _ldm_pipeline_dir(tmp_path)
    ae = load_autoencoder(d)
    assert ae.family == "diffusers-kl" and ae.name == "pipe"
    assert ae.resolution == 16 * 2  # prior sample size x autoencoder downsampling
    assert load_autoencoder(d, resolution=64, name="x").resolution == 64


def test_pipeline_without_autoencoder_names_what_was_found(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                                    "scheduler": ["diffusers", "DDPMScheduler"]}))
    with pytest.raises(AutoencoderLoadError, match=r"DDPMPipeline.*no supported autoencoder.*unet=UNet2DModel"):
        load_autoencoder(d)


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(AutoencoderLoadError, match="no such directory"):
        load_autoencoder(tmp_path / "missing" / "dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutoencoderLoadError, match="no model_index.json and no config.json"):
        load_autoencoder(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(AutoencoderLoadError, match="'UNet2DModel'"):
        load_autoencoder(tmp_path / "other")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(AutoencoderLoadError, match="is a file"):
        load_autoencoder(f)


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AutoencoderLoadError, match="no-such-owner/no-such-model: not a local directory, and the hub"):
        load_autoencoder("no-such-owner/no-such-model", local_files_only=True)



def test_any_slot_name_holds_the_autoencoder(tmp_path):
    d = _ldm_pipeline_dir(tmp_path)
    index = json.loads((d / "model_index.json").read_text())
    index["my_autoencoder"] = index.pop("vqvae")
    (d / "model_index.json").write_text(json.dumps(index))
    (d / "vqvae").rename(d / "my_autoencoder")
    before = load_autoencoder(_ldm_pipeline_dir(tmp_path / "orig"))
    ae = load_autoencoder(d)
    assert ae.family == "diffusers-kl" and ae.resolution == 32 and ae.fingerprint == before.fingerprint
