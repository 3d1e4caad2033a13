"""The Hydra configs (conf/): every preset composes with its entry points; every key of every YAML is checked
against the schemas of experiments/schema.py (a typo names the key and the YAML it is in)."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers.configs import compose_resolved
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import experiments.schema  # noqa: F401  (registers the schemas, as every entry point does)
from latenttracer.inversion import InversionConfig
from latenttracer.tracking import start_run

CONF = Path(__file__).resolve().parents[1] / "conf"
# every top-level YAML but base.yaml is an entry point's config (each study's included)
ENTRY_POINTS = tuple(sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "base"))
ZOO = ["kl-a", "kl-b", "kl-a-ft", "vq", "tiny", "kl16"]
PAPER = ["sd15", "sd2base", "sd21", "sdxl", "kandinsky21", "vqdiffusion"]


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_entry_point_has_a_schema_and_every_study_a_config():
    from experiments import schema
    from latenttracer.studies import STUDIES

    assert set(ENTRY_POINTS) <= set(schema.schemas())
    # every study of the package has its config (a plugin study, loaded by another test, brings its own)
    builtin = {name for name, s in STUDIES.items() if s.__module__.startswith("latenttracer.studies.")}
    assert builtin <= set(ENTRY_POINTS)
    assert {"methods", "attribution", "robustness", "drift", "complexity", "real_decoder"} <= builtin


def test_every_preset_is_listed_here():
    assert _names("experiment") == sorted(["table1_zoo", "table1_paper", "full", "ablation_init", "ablation_steps",
                                           "ablation_lr", "robustness_full", "drift_taef2", "table1_celeba"])


def test_the_fresh_suites_share_no_image_with_each_other_or_the_zoo(tmp_path):
    """Image i of a set uses seed + i: the generated seed ranges of the zoo (and experiment=full's 1000 images),
    zoo_fresh and zoo_fresh2 do not overlap; each draws its own real crops (own folder) and subset."""
    full, _ = compose_resolved("table1", ["experiment=full"], tmp_path)
    suites = [full.suite, *[compose_resolved("early_exit", [f"suite={s}"], tmp_path)[0].suite
                            for s in ("zoo", "zoo_fresh", "zoo_fresh2")]]
    zoo, fresh, fresh2 = suites[1:]
    seeds = [set(range(int(s.generated.seed), int(s.generated.seed) + int(s.generated.n)))
             for s in (full.suite, fresh, fresh2)]  # the full suite's seeds include the zoo's
    assert seeds[1] and seeds[2] and not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])
    assert len({int(s.real.seed) for s in (zoo, fresh, fresh2)}) == 3
    assert len({int(s.real.crops.seed) for s in (zoo, fresh, fresh2)}) == 3
    assert len({str(s.real.dir) for s in (zoo, fresh, fresh2)}) == 3
    for key in ("generated.n", "split", "real.n", "real.crops.n", "real.crops.size", "real.origin"):
        assert OmegaConf.select(fresh2, key) == OmegaConf.select(zoo, key), key


@pytest.mark.parametrize("entry", ["invert", "table1", "figures"])
@pytest.mark.parametrize("preset", ["table1_zoo", "table1_paper", "full"])
def test_table1_presets_compose(entry, preset, tmp_path):
    cfg, _ = compose_resolved(entry, [f"experiment={preset}"], tmp_path)
    assert list(cfg.suite.models) == (PAPER if preset == "table1_paper" else ZOO)
    for name, model in cfg.suite.models.items():
        assert model.name == name
    assert cfg.suite.generated.n == {"table1_zoo": 100, "table1_paper": 1000, "full": 1000}[preset]
    assert cfg.suite.real.n >= 50
    assert cfg.outputs.table1 == str(tmp_path / "results" / {"table1_zoo": "table1", "table1_paper": "table1_paper",
                                                            "full": "table1_full"}[preset])
    InversionConfig.from_dict(OmegaConf.to_container(cfg.inversion))


@pytest.mark.parametrize("preset", ["ablation_init", "ablation_steps", "ablation_lr"])
def test_ablation_presets_compose_as_sweeps(preset, tmp_path):
    cfg, hydra_cfg = compose_resolved("ablations", [f"experiment={preset}"], tmp_path)
    assert str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    params = dict(hydra_cfg.sweeper.params)
    expected = {"ablation_init": {"inversion.init": "encoder,random,zeros"},
                "ablation_steps": {"inversion.steps": "0,1,5,10,25,50,100,200", "inversion.init": "encoder,random"},
                "ablation_lr": {"inversion.lr": "0.005,0.01,0.05,0.1,0.5"}}[preset]
    assert params == expected
    assert list(cfg.inspected) == ["kl-a"]
    assert cfg.ablation.name == preset.removeprefix("ablation_")
    if preset == "ablation_steps":  # every swept step count is covered by the one long run
        assert cfg.ablation.trajectory_steps == max(int(s) for s in expected["inversion.steps"].split(","))


def test_defaults_are_the_paper_protocol(tmp_path):
    cfg, hydra_cfg = compose_resolved("table1", [], tmp_path)
    assert hydra_cfg.runtime.choices["experiment"] == "table1_zoo"
    assert hydra_cfg.job.chdir is False
    inv = InversionConfig.from_dict(OmegaConf.to_container(cfg.inversion))
    paper = asdict(InversionConfig())
    assert {k: v for k, v in asdict(inv).items() if k != "batch_size"} == \
        {k: v for k, v in paper.items() if k != "batch_size"}
    assert (inv.init, inv.lr, inv.steps, inv.schedule, inv.distance, inv.strategy) == \
        ("encoder", 0.05, 100, "authors", "l2", "min")
    assert cfg.logger.backend == "wandb" and cfg.logger.mode == "offline"
    assert cfg.logger.dir == str(tmp_path / "out")
    assert cfg.device == "auto" and cfg.threads is None
    assert cfg.suite.split.calibration_fraction == 0.5 and cfg.suite.split.target_tpr == 0.95
    assert cfg.store == str(tmp_path / "results" / "cache" / "scores")


def test_fast_inversion_is_the_paper_with_fewer_steps(tmp_path):
    paper, _ = compose_resolved("table1", [], tmp_path)
    fast, _ = compose_resolved("table1", ["inversion=fast"], tmp_path)
    assert fast.inversion.steps < paper.inversion.steps
    assert {**OmegaConf.to_container(fast.inversion), "steps": paper.inversion.steps} == \
        OmegaConf.to_container(paper.inversion)


def test_debug_preset_is_micro_and_untracked(tmp_path):
    cfg, _ = compose_resolved("table1", ["debug=default"], tmp_path)
    assert cfg.suite.generated.n <= 10 and cfg.suite.real.n <= 10 and cfg.inversion.steps <= 5
    assert cfg.logger.backend == "none"
    assert cfg.paths.results_dir == str(tmp_path / "results" / "debug")  # never overwrites the real tables


@pytest.mark.parametrize("model", _names("model"))
def test_every_model_composes_for_invert(model, tmp_path):
    cfg, _ = compose_resolved("invert", [f"model={model}"], tmp_path)
    assert cfg.model.name == model
    assert set(cfg.model) == {"name", "weights", "pipeline", "resolution", "dtype", "generation"}
    assert cfg.model.pipeline in ("zoo", "hub", "auto", "prior")  # auto: no generation pipeline (taef2); prior: disvae


@pytest.mark.parametrize("logger", _names("logger"))
def test_logger_configs_are_accepted_by_the_tracker(logger, tmp_path):
    cfg, _ = compose_resolved("table1", [f"logger={logger}", "logger.mode=disabled"] if logger == "wandb"
                              else [f"logger={logger}"], tmp_path)
    tracker = start_run(OmegaConf.to_container(cfg.logger), config={"x": 1})
    try:
        assert tracker.active == (logger == "wandb")
    finally:
        tracker.finish()


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm", "slurm"])
def test_launchers_compose(launcher, tmp_path):
    _, hydra_cfg = compose_resolved("invert", [f"hydra/launcher={launcher}"], tmp_path)
    assert "Launcher" in hydra_cfg.launcher._target_
    if launcher == "slurm":
        assert hydra_cfg.launcher.gpus_per_node == 1


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("override", ["no_such_key=1", "suite.generated.nn=3", "inversion.learning_rate=0.1",
                                      "logger.offline=true"])
def test_unknown_keys_are_errors(entry, override, tmp_path):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose_resolved(entry, [override], tmp_path)


def test_unknown_groups_and_options_are_errors(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_resolved("table1", ["experiment=no_such_preset"], tmp_path)
    with pytest.raises(ConfigCompositionException):
        compose_resolved("invert", ["model=no_such_model"], tmp_path)


def test_generate_takes_its_settings_from_the_suite(tmp_path):
    cfg, _ = compose_resolved("generate", ["images=kl-b"], tmp_path)
    table, _ = compose_resolved("table1", [], tmp_path)
    assert cfg.images == "kl-b" and cfg.suite == table.suite  # one source: the same suite node as table1's
    paper, _ = compose_resolved("generate", ["experiment=table1_paper", "suite.generated.seed=3"], tmp_path)
    assert list(paper.suite.models) == PAPER and paper.suite.generated.seed == 3


# One typo per config group (and per top-level config): (YAML under conf/, entry point, overrides selecting it).
TYPOS = [
    ("model/kl-a.yaml", "table1", []),
    ("model/sd15.yaml", "invert", ["model=sd15"]),
    ("suite/zoo.yaml", "table1", []),
    ("suite/paper.yaml", "generate", ["experiment=table1_paper"]),
    ("inversion/paper.yaml", "ablations", []),
    ("inversion/fast.yaml", "table1", ["inversion=fast"]),
    ("experiment/full.yaml", "table1", ["experiment=full"]),
    ("experiment/ablation_lr.yaml", "ablations", ["experiment=ablation_lr"]),
    ("logger/wandb.yaml", "figures", []),
    ("logger/none.yaml", "invert", ["logger=none"]),
    ("debug/default.yaml", "table1", ["debug=default"]),
    ("paths/default.yaml", "invert", []),
    ("base.yaml", "figures", []),
    ("method/aedr.yaml", "methods", ["method=aedr"]),
    ("method/ronan.yaml", "methods", ["method=ronan"]),
    ("method/latenttracer.yaml", "table1", []),
    ("perturbation/default.yaml", "robustness", []),
    ("perturbation/aeroblade_grid.yaml", "robustness", ["perturbation=aeroblade_grid"]),
    ("experiment/robustness_full.yaml", "robustness", ["experiment=robustness_full"]),
    ("suite/zoo_fresh.yaml", "early_exit", ["suite=zoo_fresh"]),
    ("suite/zoo_fresh2.yaml", "early_exit", ["suite=zoo_fresh2"]),
    *[(f"{entry}.yaml", entry, []) for entry in ENTRY_POINTS],
]


@pytest.mark.parametrize(("yaml", "entry", "overrides"), TYPOS, ids=[t[0] for t in TYPOS])
def test_a_typo_in_any_yaml_names_the_key_and_the_file(yaml, entry, overrides, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    path = conf / yaml
    text = path.read_text()
    # a mistyped key inside a nested node where there is one (suite.generated.nn, as in the issue), else on top
    nested = {"suite/zoo.yaml": "generated", "suite/paper.yaml": "real", "experiment/full.yaml": "generated",
              "suite/zoo_fresh.yaml": "real", "suite/zoo_fresh2.yaml": "real"}
    lines = text.splitlines()
    if yaml in nested:
        (i,) = [i for i, line in enumerate(lines) if line.lstrip().startswith(f"{nested[yaml]}:")]
        indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
        lines.insert(i + 1, f"{indent}  nn: 3")
        key = "nn"
    else:
        lines.append("learning_rat: 0.1")
        key = "learning_rat"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigCompositionException) as err:
        compose_resolved(entry, overrides, tmp_path, conf=conf)
    message = str(err.value)
    assert f"In '{yaml.removesuffix('.yaml')}'" in message  # the YAML (its path under conf/, without .yaml)
    assert f"Key '{key}' not in" in message
    # and untouched, the copy composes
    shutil.copyfile(CONF / yaml, path)
    compose_resolved(entry, overrides, tmp_path, conf=conf)


def _preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "method" / f"{name}.yaml"))


# Every conf/method/ preset, read from the folder (a new method's YAML is covered without editing a list), except
# the ones that need local weight files (a `*_weights: null` option; test_lpips_preset_fails_clearly_... below).
METHOD_PRESETS = [n for n in _names("method")
                  if not any(k.endswith("_weights") and v is None
                             for k, v in (_preset(n).get("method", _preset(n)).get("options") or {}).items())]


def test_every_method_preset_names_a_registered_method():
    from latenttracer.methods import METHODS

    assert "aeroblade_lpips" not in METHOD_PRESETS and {"latenttracer", "aedr", "ronan"} <= set(METHOD_PRESETS)
    for name in _names("method"):
        assert _preset(name).get("method", _preset(name))["name"] in METHODS.names(), name


@pytest.mark.parametrize("preset", METHOD_PRESETS)
def test_method_presets_compose_and_build(preset, tmp_path):
    from experiments import common
    from latenttracer.methods import METHODS

    cfg, hydra_cfg = compose_resolved("methods", [f"method={preset}"], tmp_path)
    built = common.method(cfg)
    assert type(built) is METHODS.get(cfg.method.name) and built.label.startswith(cfg.method.name)
    assert hydra_cfg.runtime.choices.method == preset == common.method_preset(cfg)
    table, _ = compose_resolved("table1", [], tmp_path)
    # only the sized RONAN preset changes the sets (to prefixes of the suite's); every other keeps Table 1's
    if preset == "ronan":
        assert cfg.suite.generated.n < table.suite.generated.n and cfg.suite.real.n < table.suite.real.n
        assert cfg.method.probe < 16 and built.config.steps == 1500 and built.config.init == "random"
    else:
        assert cfg.suite == table.suite


def test_latenttracer_method_is_the_inversion_node(tmp_path):
    from experiments import common
    from latenttracer.methods import LatentTracer

    cfg, _ = compose_resolved("methods", ["inversion.steps=7"], tmp_path)
    assert cfg.method.name == "latenttracer"  # the default of every entry point
    built = common.method(cfg)
    assert type(built) is LatentTracer and built.config == common.inversion_config(cfg)
    assert built.config.steps == 7
    bad, _ = compose_resolved("methods", ["+method.options.steps=5"], tmp_path)
    with pytest.raises(ValueError, match="latenttracer takes its settings from the `inversion` node"):
        common.method(bad)


def test_method_options_are_checked_by_the_method(tmp_path):
    from experiments import common

    cfg, _ = compose_resolved("methods", ["method=aedr", "+method.options.posteriorr=mean"], tmp_path)
    with pytest.raises(ValueError, match=r"method 'aedr' \(conf/method/, key method.options\).*posteriorr"):
        common.method(cfg)


def test_lpips_preset_fails_clearly_without_weight_files(tmp_path):
    from experiments import common

    cfg, _ = compose_resolved("methods", ["method=aeroblade_lpips"], tmp_path)
    with pytest.raises(FileNotFoundError, match="vgg_weights not given.*lpips_weights not given"):
        common.method(cfg)
    cfg, _ = compose_resolved("methods", ["method=aeroblade_lpips", f"method.options.vgg_weights={tmp_path}/v.pth",
                                          f"method.options.lpips_weights={tmp_path}/l.pth"], tmp_path)
    with pytest.raises(FileNotFoundError, match="v.pth not found"):
        common.method(cfg)


def test_a_wrong_type_in_a_yaml_is_an_error(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "inversion" / "paper.yaml").write_text((CONF / "inversion" / "paper.yaml").read_text().replace(
        "steps: 100", "steps: many"))
    with pytest.raises(ConfigCompositionException, match="(?s)In 'inversion/paper'.*steps"):
        compose_resolved("table1", [], tmp_path, conf=conf)


# the conditions of the shipped grids; a grid added later is only checked to parse (test below)
GRIDS = {"aeroblade_grid": tuple(range(21)),
         "default": (0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19, 20),  # every other strength of each kind
         "none": ()}


@pytest.mark.parametrize("grid", _names("perturbation"))
def test_every_perturbation_grid_parses(grid, tmp_path):
    from latenttracer.perturbations import AEROBLADE_GRID
    from latenttracer.studies import robustness

    cfg, _ = compose_resolved("robustness", [f"perturbation={grid}"], tmp_path)
    conditions = robustness.grid(cfg)
    assert cfg.perturbation.name == grid
    assert len(conditions) == len(cfg.perturbation.conditions)
    if grid in GRIDS:
        assert conditions == tuple(AEROBLADE_GRID[i] for i in GRIDS[grid])


def test_a_typo_in_a_perturbation_condition_is_an_error(tmp_path):
    from latenttracer.studies import robustness

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    path = conf / "perturbation" / "default.yaml"
    path.write_text(path.read_text().replace("blur:3", "blurr:3"))
    cfg, _ = compose_resolved("robustness", [], tmp_path, conf=conf)
    with pytest.raises(ValueError, match=r"perturbation 'default' \(conf/perturbation/\).*blurr"):
        robustness.grid(cfg)


def test_robustness_full_is_the_whole_study(tmp_path):
    cfg, _ = compose_resolved("robustness", ["experiment=robustness_full"], tmp_path)
    assert len(cfg.perturbation.conditions) == 21 and cfg.inspected is None
    assert [m.name for m in cfg.methods] == ["latenttracer", "aedr", "aeroblade", "ronan"]
    assert all(m.n_belonging is None and m.n_per_source is None for m in cfg.methods)


def test_compare_methods_runs_every_preset_that_says_compare():
    import subprocess

    flagged = sorted(n for n in _names("method") if _preset(n).get("compare") is True)
    assert {"latenttracer", "lowpass", "relative"} <= set(flagged)
    plan = subprocess.run(["make", "-n", "compare-methods"], cwd=CONF.parent, capture_output=True, text=True,
                          check=True).stdout
    assert f"method={','.join(flagged)} " in plan
