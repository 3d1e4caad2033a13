"""latenttracer.tracing: Tracer (calibrate on clean and perturbed copies, a rate in latent-RMS units, the early-exit
rule from the calibration images' full runs, trace with verdicts, the report and summary lines, the CSV's columns),
which methods can exit early, and attribution across several inspected models."""

import pandas as pd
import pytest
from conftest import decoded_images, natural_crops, save_png

from latenttracer.attribution import NONE
from latenttracer.autoencoders import load_autoencoder
from latenttracer.early_exit import learn_exit_policy
from latenttracer.inversion import InversionConfig
from latenttracer.methods import LatentTracer, get_method
from latenttracer.reencoding import parse_family
from latenttracer.store import ResultStore
from latenttracer.tracing import CSV_COLUMNS, EXIT_COLUMNS, Tracer, attribute, check_early_exit

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


def test_report_counts_the_run_and_table_has_the_csv_columns(files):
    ae, f = files
    tracer = Tracer(ae, LatentTracer(CONFIG), progress=False, log=[].append, threshold=1e-3)
    tracer.early_exit()
    paths = [*f["own"][:2], *f["other"][:1]]
    frame, skipped = tracer.trace(paths)
    seconds = 2.25
    lines = tracer.report(frame, len(paths), len(skipped), seconds, "cpu")
    assert lines[0] == f"{len(paths)} images: {len(paths)} scored, 0 failed, 0 skipped; 0 from cache; {seconds:.1f}s"
    assert lines[1].startswith("speed: ") and lines[1].endswith(" image-steps/s on cpu")
    assert lines[2:] == tracer.summary(frame)
    assert list(tracer.table(frame).columns) == CSV_COLUMNS + EXIT_COLUMNS
    plain = Tracer(ae, get_method("aedr"), progress=False)
    assert list(plain.table(frame).columns) == CSV_COLUMNS + list(plain.method.components)
    assert not any(line.startswith("speed") for line in plain.report(frame, 3, 0, 1.0, "cpu"))


def test_check_early_exit_names_the_methods_that_take_it():
    check_early_exit(LatentTracer(CONFIG))
    with pytest.raises(ValueError, match=r"--method aedr does not take --early-exit \(methods that take it: .*latent"):
        check_early_exit(get_method("aedr"))


def test_attribute_calibrates_each_model_on_its_own_images_and_names_the_strongest_claim(files, tiny_dirs, tmp_path):
    ae, f = files
    models = [tiny_dirs["AutoencoderKL-0"], tiny_dirs["AutoencoderKL-1"]]
    calibration = [f["cal"][:4], f["other"][:2]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths = [*f["own"][:2], *f["other"][2:], *f["real"][:1], broken]
    store, lines = ResultStore(tmp_path / "store"), []
    options = dict(store=store, progress=False, log=lines.append, on_bad_image="skip")
    frame, names, skipped = attribute(models, calibration, paths, LatentTracer(CONFIG), target_tpr=0.75,
                                      where=["own a", "own b"], load_options={"resolution": 32}, **options)
    assert names == ["AutoencoderKL-0", "AutoencoderKL-1"] and list(skipped) == [str(broken)]
    assert frame["path"].tolist() == [str(p) for p in paths] and frame["predicted"].isna().tolist()[-1]
    assert any("inspected model: AutoencoderKL-1" in line for line in lines)
    assert any("on 2 images from own b" in line for line in lines)
    scored = frame.iloc[:-1]
    norms = {}
    for name, source, cal in zip(names, models, calibration):  # each model's own threshold, on its own images
        t = Tracer(load_autoencoder(source, resolution=32), LatentTracer(CONFIG), **options).calibrate(cal, 0.75)
        assert scored[f"norm_{name}"].to_numpy() == pytest.approx(scored[f"score_{name}"].to_numpy() / t)
        norms[name] = scored[f"norm_{name}"]
    for i, row in scored.iterrows():
        claims = {n: norms[n][i] for n in names if norms[n][i] <= 1}
        assert row["predicted"] == (min(claims, key=claims.get) if claims else NONE)
    with pytest.raises(ValueError, match="2 models but 1 calibration sets"):
        attribute(models, calibration[:1], paths, LatentTracer(CONFIG), **options)
