"""Image-set generation (data_gen/generate.py) on tiny random-init pipelines built from config dicts (no downloads)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_gen import generate as gen

REPO = Path(__file__).resolve().parents[1]
STEPS = {"num_inference_steps": 2}
PROMPTS = ["a red cat", "a blue dog", "tree"]



# ---------------------------------------------------------------------------------------------- tiny pipelines


def _tiny_vae(cls=None, **extra):
    from diffusers import AutoencoderKL

    cls = cls or AutoencoderKL
    return cls(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
               latent_channels=4, norm_num_groups=8, **extra)


def _text_config(vocab_size: int) -> dict:
    return {"vocab_size": vocab_size, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1, "projection_dim": 16}


def _tokenizer(root: Path):
    """A CLIP tokenizer over single letters, from a vocab/merges pair written into ``root``."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(root / "vocab.json"), merges=str(root / "merges.txt"), model_max_length=16)


def _seeded_text_parts(root: Path):
    """Seed torch, then the tokenizer of :func:`_tokenizer` and a text-encoder config over its vocabulary."""
    torch.manual_seed(0)
    tok = _tokenizer(root)
    return tok, _text_config(len(tok))


def _cond_unet(cross_attention_dim: int, down_block_types: tuple[str, str], **extra):
    """A tiny text-conditioned UNet over 8x8 latents: ``down_block_types`` and their mirror image going up."""
    from diffusers import UNet2DConditionModel

    up_block_types = tuple(t.replace("Down", "Up") for t in reversed(down_block_types))
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=4, down_block_types=down_block_types,
                                up_block_types=up_block_types, **extra)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_pipelines")


@pytest.fixture(scope="module")
def zoo_pipe(tiny_dir) -> Path:
    """A micro zoo member: LDMPipeline(AutoencoderKL, UNet2DModel, DDIMScheduler), 16x16 images."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    pipe = LDMPipeline(vqvae=_tiny_vae(), unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.save_pretrained(tiny_dir / "zoo-micro")
    return tiny_dir / "zoo-micro"


@pytest.fixture(scope="module")
def sd_pipe(tiny_dir) -> Path:
    """A tiny StableDiffusionPipeline saved WITH a (tiny) safety checker, as the real SD repos are."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    tok, text = _seeded_text_parts(tiny_dir)
    unet = _cond_unet(16, ("CrossAttnDownBlock2D", "DownBlock2D"))
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=text, projection_dim=16,
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8}))
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(CLIPTextConfig(**text)), tokenizer=tok, unet=unet,
        scheduler=PNDMScheduler(num_train_timesteps=100, skip_prk_steps=True, steps_offset=1),
        safety_checker=checker, feature_extractor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}))
    pipe.save_pretrained(tiny_dir / "sd-tiny")
    return tiny_dir / "sd-tiny"


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_dir) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok, text = _seeded_text_parts(tiny_dir)
    unet = _cond_unet(32, ("DownBlock2D", "CrossAttnDownBlock2D"), use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=4,
                      projection_class_embeddings_input_dim=4 * 6 + 16)
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer=tok, tokenizer_2=tok,
        unet=unet, scheduler=EulerDiscreteScheduler(num_train_timesteps=100))
    pipe.save_pretrained(tiny_dir / "sdxl-tiny")
    return tiny_dir / "sdxl-tiny"


@pytest.fixture(scope="module")
def vqd_pipe(tiny_dir) -> Path:
    from diffusers import Transformer2DModel, VQDiffusionPipeline, VQDiffusionScheduler, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = _tokenizer(tiny_dir)
    codes = 16
    pipe = VQDiffusionPipeline(
        vqvae=_tiny_vae(VQModel, num_vq_embeddings=codes, vq_embed_dim=4),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(len(tok)))), tokenizer=tok,
        transformer=Transformer2DModel(num_attention_heads=2, attention_head_dim=4, num_vector_embeds=codes + 1,
                                       sample_size=8, cross_attention_dim=16, num_embeds_ada_norm=100,
                                       norm_type="ada_norm", attention_bias=True, num_layers=1),
        learned_classifier_free_sampling_embeddings=LearnedClassifierFreeSamplingEmbeddings(learnable=False),
        scheduler=VQDiffusionScheduler(num_vec_classes=codes + 1, num_train_timesteps=100))
    pipe.save_pretrained(tiny_dir / "vqd-tiny")
    return tiny_dir / "vqd-tiny"


@pytest.fixture(scope="module")
def kandinsky_pipe(tiny_dir) -> Path:
    """A tiny Kandinsky 2.1 in the hub layout: a KandinskyPipeline (decoder) directory whose README.md model card
    names its KandinskyPriorPipeline directory under ``prior:``, as kandinsky-community/kandinsky-2-1 does."""
    from diffusers import (
        DDIMScheduler,
        KandinskyPipeline,
        KandinskyPriorPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        XLMRobertaTokenizer,
    )

    torch.manual_seed(0)
    dim = 16  # CLIP image-embedding size: prior output, M-CLIP projection, UNet cross-attention
    # XLM-Roberta (unigram) tokenizer over single letters; the decoder pads prompts to 77 tokens (hard-coded)
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(p, -1.0) for c in string.ascii_lowercase for p in ("\u2581" + c, c)]
    xlm_tok = XLMRobertaTokenizer(vocab=pieces)
    text_encoder = MultilingualCLIP(MCLIPConfig(
        transformerDimSize=dim, imageDimSize=dim, vocab_size=len(xlm_tok), hidden_size=dim, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=80))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=8, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=dim, attention_head_dim=4,
                                encoder_hid_dim=dim, encoder_hid_dim_type="text_image_proj",
                                addition_embed_type="text_image", resnet_time_scale_shift="scale_shift",
                                down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                mid_block_type="UNetMidBlock2DSimpleCrossAttn")
    movq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
                   latent_channels=4, norm_num_groups=8, num_vq_embeddings=16, vq_embed_dim=4,
                   norm_type="spatial")  # SpatialNorm has 32 groups: hence 32 channels
    decoder = KandinskyPipeline(text_encoder=text_encoder, tokenizer=xlm_tok, unet=unet, movq=movq,
                                scheduler=DDIMScheduler(num_train_timesteps=100, clip_sample=False,
                                                        set_alpha_to_one=False, steps_offset=1))
    clip_tok = _tokenizer(tiny_dir)
    prior = KandinskyPriorPipeline(
        prior=PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=dim, num_layers=1,
                               num_embeddings=clip_tok.model_max_length),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(len(clip_tok)))),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8, projection_dim=dim)),
        tokenizer=clip_tok, image_processor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=100,
                                  clip_sample=True, clip_sample_range=10.0))
    decoder_dir, prior_dir = tiny_dir / "kandinsky-tiny", tiny_dir / "kandinsky-prior-tiny"
    decoder.save_pretrained(decoder_dir)
    prior.save_pretrained(prior_dir)
    (decoder_dir / "README.md").write_text(f"---\nprior:\n- {json.dumps(str(prior_dir))}\n---\n")
    return decoder_dir


# ---------------------------------------------------------------------------------------------- helpers


def _manifest(set_dir: Path) -> list[dict]:
    with open(set_dir / gen.MANIFEST_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


def _pngs(set_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(set_dir.glob("*.png"))}


def _zoo(zoo_pipe, out, **kw):
    args = {"n": 4, "batch_size": 2, "model_name": "micro", "pipeline_kwargs": STEPS, "device": "cpu",
            "resolution": 16, "progress": False}
    args.update(kw)
    return gen.generate_set(str(zoo_pipe), out, **args)


# ---------------------------------------------------------------------------------------------- zoo sources


@pytest.fixture(scope="module")
def zoo_reference(zoo_pipe, tmp_path_factory) -> Path:
    """Six images from the micro zoo member, batch size 2, seed 0 (do not modify; copy it)."""
    return _zoo(zoo_pipe, tmp_path_factory.mktemp("reference"), n=6, batch_size=2)


def _copy(set_dir: Path, dest: Path) -> Path:
    shutil.copytree(set_dir, dest / set_dir.name)
    return dest / set_dir.name


def test_zoo_set_has_n_images_of_the_right_size_and_a_manifest(zoo_reference):
    set_dir = zoo_reference
    assert set_dir.name == "micro"
    assert sorted(_pngs(set_dir)) == [f"{i:05d}.png" for i in range(6)]
    with Image.open(set_dir / "00003.png") as im:
        assert (im.mode, im.size) == ("RGB", (16, 16))
        assert np.asarray(im).std() > 0  # not a blank image
    rows = _manifest(set_dir)
    assert [r["file"] for r in rows] == [f"{i:05d}.png" for i in range(6)]
    assert [int(r["seed"]) for r in rows] == list(range(6))
    assert {r["model"] for r in rows} == {"micro"} and {r["prompt"] for r in rows} == {""}
    assert {(r["width"], r["height"]) for r in rows} == {("16", "16")}
    assert json.loads(rows[0]["pipeline_args"]) == STEPS
    record = json.loads((set_dir / gen.SET_FILE).read_text())
    assert record["config"]["kind"] == "zoo" and record["config"]["seed"] == 0 and record["n"] == 6
    assert len(set(_pngs(set_dir).values())) == 6  # each image has its own seed
    assert not list(set_dir.glob(".*.tmp"))


def test_images_do_not_depend_on_the_batch_size(zoo_pipe, zoo_reference, tmp_path):
    assert _pngs(_zoo(zoo_pipe, tmp_path, n=6, batch_size=3)) == _pngs(zoo_reference)  # batches 3+3 vs 2+2+2


def test_resume_regenerates_exactly_the_missing_images(zoo_pipe, zoo_reference, tmp_path):
    set_dir = _copy(zoo_reference, tmp_path)
    for name in ("00000.png", "00002.png", "00004.png", "00005.png"):
        os.utime(set_dir / name, ns=(1, 1))  # a rewrite would change this
    (set_dir / "00001.png").unlink()
    (set_dir / "00003.png").unlink()
    _zoo(zoo_pipe, tmp_path, n=6)
    assert _pngs(set_dir) == _pngs(zoo_reference)  # regenerated byte-identical
    assert all((set_dir / f"{i:05d}.png").stat().st_mtime_ns == 1 for i in (0, 2, 4, 5))
    assert _manifest(set_dir) == _manifest(zoo_reference)
    _zoo(zoo_pipe, tmp_path, n=6)  # a finished set: nothing to do, nothing rewritten
    assert all((set_dir / f"{i:05d}.png").stat().st_mtime_ns == 1 for i in (0, 2, 4, 5))


def test_an_interrupted_run_resumes_and_a_larger_n_extends_the_set(zoo_pipe, zoo_reference, tmp_path, monkeypatch):
    real_load = gen.load_generation_pipeline
    calls = []

    def failing_load(*args, **kwargs):  # the second pipeline call dies, like a killed job
        pipe = real_load(*args, **kwargs)

        def call(**kw):
            calls.append(kw)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return pipe(**kw)
        return call

    monkeypatch.setattr(gen, "load_generation_pipeline", failing_load)
    with pytest.raises(KeyboardInterrupt):
        _zoo(zoo_pipe, tmp_path, n=4)
    set_dir = tmp_path / "micro"
    assert sorted(_pngs(set_dir)) == ["00000.png", "00001.png"]  # the first batch is complete and listed
    assert [r["file"] for r in _manifest(set_dir)] == ["00000.png", "00001.png"]
    monkeypatch.setattr(gen, "load_generation_pipeline", real_load)

    _zoo(zoo_pipe, tmp_path, n=4)  # resume
    reference = _pngs(zoo_reference)
    assert _pngs(set_dir) == {k: v for k, v in reference.items() if k < "00004.png"}
    _zoo(zoo_pipe, tmp_path, n=6)  # extend
    assert _pngs(set_dir) == reference
    assert len(_manifest(set_dir)) == 6 and json.loads((set_dir / gen.SET_FILE).read_text())["n"] == 6


def test_a_set_with_a_different_config_is_refused_unless_overwrite(zoo_pipe, zoo_reference, tmp_path):
    set_dir = _copy(zoo_reference, tmp_path)
    before = _pngs(set_dir)
    with pytest.raises(FileExistsError) as err:
        _zoo(zoo_pipe, tmp_path, n=2, seed=1, pipeline_kwargs={"num_inference_steps": 3})
    msg = str(err.value)
    assert str(set_dir) in msg and "seed" in msg and "pipeline_kwargs" in msg and "overwrite" in msg
    assert _pngs(set_dir) == before  # untouched
    _zoo(zoo_pipe, tmp_path, n=2, seed=1, overwrite=True)
    after = _pngs(set_dir)
    assert sorted(after) == ["00000.png", "00001.png"] and after["00000.png"] != before["00000.png"]
    assert [int(r["seed"]) for r in _manifest(set_dir)] == [1, 2]
    os.utime(set_dir / "00000.png", ns=(1, 1))
    _zoo(zoo_pipe, tmp_path, n=2, seed=1, overwrite=True)  # overwrite regenerates even under the same config
    assert (set_dir / "00000.png").stat().st_mtime_ns != 1 and _pngs(set_dir) == after


def test_the_set_follows_the_weights_not_the_path(zoo_pipe, zoo_reference, tmp_path):
    set_dir = _copy(zoo_reference, tmp_path / "out")
    moved = Path(shutil.copytree(zoo_pipe, tmp_path / "moved"))
    for p in set_dir.glob("*.png"):
        os.utime(p, ns=(1, 1))
    _zoo(moved, tmp_path / "out", n=6)  # same weights elsewhere: the finished set is kept as it is
    assert all(p.stat().st_mtime_ns == 1 for p in set_dir.glob("*.png"))
    config_file = moved / "unet" / "config.json"
    config_file.write_text(config_file.read_text().replace('"layers_per_block": 1', '"layers_per_block": 2'))
    with pytest.raises(FileExistsError, match="'weights'"):
        _zoo(moved, tmp_path / "out", n=6)


def test_a_set_without_images_takes_the_new_config(zoo_pipe, tmp_path):
    set_dir = _zoo(zoo_pipe, tmp_path, n=0)  # e.g. a run that died while loading its model
    _zoo(zoo_pipe, tmp_path, n=0, seed=5)
    assert json.loads((set_dir / gen.SET_FILE).read_text())["config"]["seed"] == 5
    assert _manifest(set_dir) == []


def test_unknown_folder_contents_and_bad_options_are_refused(zoo_pipe, tmp_path):
    foreign = tmp_path / "micro"
    foreign.mkdir()
    Image.new("RGB", (4, 4)).save(foreign / "00000.png")
    with pytest.raises(FileExistsError, match="no set.json"):
        _zoo(zoo_pipe, tmp_path)
    with pytest.raises(ValueError, match="dtype='float16' needs a CUDA device"):
        _zoo(zoo_pipe, tmp_path / "x", dtype="float16")
    with pytest.raises(ValueError, match="'guidance_scale' is not an argument of LDMPipeline"):
        _zoo(zoo_pipe, tmp_path / "x", pipeline_kwargs={"guidance_scale": 7.5})
    with pytest.raises(ValueError, match="pipeline='hub'"):
        _zoo(zoo_pipe, tmp_path / "x", pipeline="hub", prompts=PROMPTS)
    with pytest.raises(ValueError, match="resolution asks for 32x32"):
        _zoo(zoo_pipe, tmp_path / "x", n=1, resolution=32)


# ---------------------------------------------------------------------------------------------- hub-style sources


def test_stable_diffusion_loads_without_safety_checker_and_records_prompts(sd_pipe, tmp_path):
    assert (sd_pipe / "safety_checker").is_dir()
    pipe = gen.load_generation_pipeline(str(sd_pipe), device="cpu")
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False
    with pytest.raises(ValueError, match="give prompts"):
        gen.generate_set(str(sd_pipe), tmp_path, n=1, device="cpu", progress=False)
    set_dir = gen.generate_set(str(sd_pipe), tmp_path, n=4, batch_size=3, prompts=PROMPTS, resolution=16,
                               pipeline_kwargs={**STEPS, "guidance_scale": 7.5}, device="cpu", progress=False)
    rows = _manifest(set_dir)
    assert [r["prompt"] for r in rows] == PROMPTS + PROMPTS[:1]
    assert json.loads(rows[0]["pipeline_args"]) == {"num_inference_steps": 2, "guidance_scale": 7.5,
                                                     "height": 16, "width": 16}
    assert {(r["width"], r["height"]) for r in rows} == {("16", "16")}
    assert json.loads((set_dir / gen.SET_FILE).read_text())["config"]["prompts"] == PROMPTS
    # per-image seeds and prompts: the set made one image per call is the same
    again = gen.generate_set(str(sd_pipe), tmp_path / "b1", n=2, batch_size=1, prompts=PROMPTS, resolution=16,
                             pipeline_kwargs={**STEPS, "guidance_scale": 7.5}, device="cpu", progress=False)
    assert _pngs(again) == {k: v for k, v in _pngs(set_dir).items() if k < "00002.png"}


def test_sdxl_loads_without_watermarker(sdxl_pipe, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    seen = {}
    real = DiffusionPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(spy))
    pipe = gen.load_generation_pipeline(str(sdxl_pipe), device="cpu")
    assert seen.get("add_watermarker") is False and "safety_checker" not in seen
    assert pipe.watermark is None
    set_dir = gen.generate_set(str(sdxl_pipe), tmp_path, n=2, batch_size=2, prompts=PROMPTS, resolution=16,
                               pipeline_kwargs=STEPS, device="cpu", progress=False)
    assert [r["prompt"] for r in _manifest(set_dir)] == PROMPTS[:2]
    with Image.open(set_dir / "00001.png") as im:
        assert im.size == (16, 16)


def test_vq_diffusion_is_assembled_and_called_one_image_at_a_time(vqd_pipe, tmp_path):
    pipe = gen.load_generation_pipeline(str(vqd_pipe), device="cpu")
    assert type(pipe).__name__ == "VQDiffusionPipeline"
    kwargs = {"n": 3, "prompts": PROMPTS, "pipeline_kwargs": {**STEPS, "guidance_scale": 2.0}, "device": "cpu",
              "progress": False}
    set_dir = gen.generate_set(str(vqd_pipe), tmp_path / "b2", batch_size=2, **kwargs)
    assert [r["prompt"] for r in _manifest(set_dir)] == PROMPTS
    assert _pngs(set_dir) == _pngs(gen.generate_set(str(vqd_pipe), tmp_path / "b1", batch_size=1, **kwargs))


def test_kandinsky_decoder_is_loaded_with_its_prior(tmp_path, monkeypatch):
    from diffusers import AutoPipelineForText2Image

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    loaded = {}

    class Stub:
        def to(self, device):
            return self

        def set_progress_bar_config(self, **kw):
            pass

    def fake(source, **kwargs):
        loaded.update(source=source, **kwargs)
        return Stub()

    monkeypatch.setattr(AutoPipelineForText2Image, "from_pretrained", fake)
    assert isinstance(gen.load_generation_pipeline(str(tmp_path), device="cpu"), Stub)
    assert loaded == {"source": str(tmp_path), "dtype": torch.float32}
    assert gen.pipeline_class("KandinskyPipeline").__name__ == "KandinskyCombinedPipeline"


def test_kandinsky_2_1_generates_through_its_prior_offline(kandinsky_pipe, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: any request fails
    pipe = gen.load_generation_pipeline(str(kandinsky_pipe), device="cpu")
    assert type(pipe).__name__ == "KandinskyCombinedPipeline"
    assert pipe.prior_prior.config.num_embeddings == 16  # the prior came from the directory the model card names
    kwargs = {"n": 2, "batch_size": 2, "prompts": PROMPTS, "resolution": 16, "device": "cpu", "progress": False,
              "pipeline_kwargs": {**STEPS, "prior_num_inference_steps": 2}}
    set_dir = gen.generate_set(str(kandinsky_pipe), tmp_path / "a", **kwargs)
    rows = _manifest(set_dir)
    assert [r["prompt"] for r in rows] == PROMPTS[:2] and {r["model"] for r in rows} == {"kandinsky-tiny"}
    assert {(r["width"], r["height"]) for r in rows} == {("16", "16")}
    with Image.open(set_dir / "00001.png") as im:
        assert (im.mode, im.size) == ("RGB", (16, 16)) and np.asarray(im).std() > 0
    pngs = _pngs(set_dir)
    assert sorted(pngs) == ["00000.png", "00001.png"] and len(set(pngs.values())) == 2
    assert _pngs(gen.generate_set(str(kandinsky_pipe), tmp_path / "b", **kwargs)) == pngs  # seeded


def test_kandinsky_fingerprint_covers_its_prior(kandinsky_pipe, tmp_path):
    """A finished Kandinsky set must not be reused once the prior it was made with changes."""
    import safetensors.torch

    decoder = Path(shutil.copytree(kandinsky_pipe, tmp_path / "decoder"))
    prior = Path(shutil.copytree(gen.connected_prior(str(kandinsky_pipe)), tmp_path / "prior"))
    (decoder / "README.md").write_text(f"---\nprior:\n- {json.dumps(str(prior))}\n---\n")
    assert gen.connected_prior(str(decoder)) == str(prior)
    before = gen.weights_fingerprint(str(decoder))
    assert before == gen.weights_fingerprint(str(decoder))
    (weights,) = (prior / "prior").glob("*.safetensors")
    tensors = safetensors.torch.load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
    assert gen.weights_fingerprint(str(decoder)) != before
    assert gen.connected_prior(str(prior)) is None  # a prior pipeline itself names no prior


# ---------------------------------------------------------------------------------------------- prompts, entry point


def test_the_project_prompt_list():
    prompts = gen.read_prompts()
    assert len(prompts) >= 50 and len(set(prompts)) == len(prompts)
    assert all(not p.startswith("#") for p in prompts)


def test_hydra_entry_point(zoo_pipe, tmp_path):
    cmd = [sys.executable, "-m", "experiments.generate", "images=kl-a", f"suite.models.kl-a.weights={zoo_pipe}",
           f"paths.root_dir={tmp_path}", "suite.generated.n=3", "suite.generated.batch_size=2", "device=cpu",
           "progress=false", "suite.models.kl-a.generation.num_inference_steps=2",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    set_dir = tmp_path / "results" / "cache" / "images" / "kl-a"  # the default: ${suite.generated.dir}/<model>
    assert sorted(_pngs(set_dir)) == ["00000.png", "00001.png", "00002.png"]
    assert {r["model"] for r in _manifest(set_dir)} == {"kl-a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hydra", "results"]  # nothing written elsewhere
