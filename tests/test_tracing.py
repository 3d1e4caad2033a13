"""latenttracer.tracing.Tracer: calibrate (clean, perturbed copies, a rate in latent-RMS units), the early-exit
rule from the calibration images' full runs, trace with verdicts, the summary lines."""

import pandas as pd
import pytest
from conftest import decoded_images, natural_crops, save_png

from latenttracer.autoencoders import load_autoencoder
from latenttracer.early_exit import learn_exit_policy
from latenttracer.inversion import InversionConfig
from latenttracer.methods import LatentTracer, get_method
from latenttracer.reencoding import parse_family
from latenttracer.tracing import Tracer

CONFIG = InversionConfig(steps=10, batch_size=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    sibling = load_autoencoder(tiny_dirs["AutoencoderKL-1"], resolution=32)
    root = tmp_path_factory.mktemp("tracer")
    out = {}
    for name, images in {"cal": decoded_images(ae, 8, 0), "own": decoded_images(ae, 4, 1),
                         "other": decoded_images(sibling, 4, 0), "real": natural_crops(4)}.items():
        (root / name).mkdir()
        out[name] = [save_png(x, root / name / f"{i:02d}.png") for i, x in enumerate(images)]
    return ae, out


def test_calibrate_early_exit_trace_and_summary(files):
    ae, f = files
    lines = []
    tracer = Tracer(ae, LatentTracer(CONFIG), progress=False, log=lines.append)
    t = tracer.calibrate(f["cal"], 0.75, where="cal")
    assert t == pytest.approx(sorted(tracer.calibration["score"])[5])  # the 6th of 8: 75% TPR
    assert "threshold" in lines[-1] and "75% TPR on 8 images from cal" in lines[-1]
    policy = tracer.early_exit(risk=0.5)
    trajectories = tracer.calibration["trajectory"].map(list).tolist()
    assert policy == learn_exit_policy(trajectories, t, 0.5, CONFIG)  # the library's rule, nothing else
    assert lines[-1] == f"early exit: {policy.allows()}"
    assert tracer.exits and tracer.method.config.exit_ratios == policy.bound
    paths = [*f["own"], *f["other"], *f["real"]]
    frame, skipped = tracer.trace(paths)
    assert not skipped and frame["path"].tolist() == [str(p) for p in paths]
    assert (frame["belonging"] == (frame["score"].astype(float) <= t)).all()
    assert set(frame["exit_reason"]) <= {"threshold", "bound", ""}
    assert (frame.loc[frame["exit_reason"] == "", "steps_run"] == 10).all()
    summary = tracer.summary(frame)
    assert summary[0].startswith("early exit: ") and summary[-1] == (
        f"belonging (score <= {t:.4g}): {int(frame['belonging'].sum())} of {len(frame)}")


def test_a_threshold_by_hand_allows_the_exact_exit_only_and_other_methods_refuse(files):
    ae, f = files
    lines = []
    tracer = Tracer(ae, LatentTracer(CONFIG), progress=False, log=lines.append, threshold=1e-3)
    assert tracer.early_exit() is None and tracer.method.config.exit_ratios is None
    assert "exact part only" in lines[-1]
    with pytest.raises(ValueError, match="early exit needs a threshold"):
        Tracer(ae, LatentTracer(CONFIG), progress=False).early_exit()
    with pytest.raises(ValueError, match="--method aedr does not take --early-exit"):
        Tracer(ae, get_method("aedr"), progress=False, threshold=1.0).early_exit()


def test_a_rate_in_latent_rms_units_is_resolved_on_the_calibration_images_and_perturbed_copies_pool(files, tmp_path):
    ae, f = files
    lines = []
    tracer = Tracer(ae, LatentTracer(InversionConfig(steps=3, lr_scale="latent_rms")), progress=False,
                    log=lines.append)
    tracer.calibrate(f["cal"][:4], 0.95, family=parse_family("jpeg:90"), perturbed_root=tmp_path, where="cal")
    assert tracer.method.config.lr_scale == "absolute" and tracer.method.config.lr != 0.05
    assert "latent RMS" in lines[0] and "and their perturbed copies (jpeg90), pooled" in lines[-1]
    sets = tracer.calibration["calibration_set"].value_counts()
    assert dict(sets) == {"clean": 4, "jpeg90": 4}
    assert isinstance(tracer.trace(f["own"][:1])[0], pd.DataFrame)
