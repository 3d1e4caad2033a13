"""latenttracer.methods.flags: a method's settings as command-line flags and back (names -> --kebab-case, Literal ->
choices, bool -> --x/--no-x, tuples -> several values, help from the field's metadata), the method the parsed
flags ask for, and the one-line description the commands print."""

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from latenttracer.methods import METHODS, get_method
from latenttracer.methods.base import Method
from latenttracer.methods.flags import add_method_args, describe, method_flags, method_from_args


def _parser(*taken: str) -> argparse.ArgumentParser:
    """A command's parser: the shared options method_from_args reads, any flags in ``taken``, the method flags."""
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", default="auto", type=lambda t: t if t == "auto" else int(t))
    for flag in taken:
        p.add_argument(flag)
    add_method_args(p)
    return p


@pytest.fixture
def toy(monkeypatch):
    """A method registered for this test only, with one field of every kind a flag can have."""
    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))

    @METHODS.register
    @dataclass(frozen=True)
    class Toy(Method):
        mode: Literal["fast", "exact"] = field(default="exact", metadata={"help": "how hard to try"})
        calibrated_cut: float | None = None
        ratios: tuple[float, ...] | None = None
        use_mean: bool = False
        size: int | Literal["auto"] = "auto"
        device: str = "auto"
        dtype: str = "float32"
        name = "toy"

        def identity(self):
            return {"mode": self.mode, "size": self.size}

        def compute(self, ae, images, records):
            return []

    return Toy


def test_flags_are_built_from_a_settings_dataclass(toy):
    flags = method_flags()
    assert flags["mode"].choices == {"toy": ("fast", "exact")} and flags["mode"].helps["toy"] == "how hard to try"
    text = _parser().format_help()
    assert "--mode {fast,exact}" in text and "how hard to try [default: toy exact]" in " ".join(text.split())
    assert "--use-mean, --no-use-mean" in text and "--calibrated-cut" in text
    args = _parser().parse_args(["--method", "toy", "--mode", "fast", "--ratios", "1", "2.5", "--use-mean",
                                 "--size", "7", "--calibrated-cut", "0.25"])
    assert method_from_args(args) == toy(mode="fast", calibrated_cut=0.25, ratios=(1.0, 2.5), use_mean=True, size=7)
    args = _parser().parse_args(["--method", "toy", "--size", "auto", "--no-use-mean"])
    assert method_from_args(args) == toy()
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mode", "slow"])
    # A flag several methods share takes every method's values; each method then checks its own.
    assert method_from_args(_parser().parse_args(["--distance", "l1"])).config.distance == "l1"


def test_shared_options_come_from_the_commands_flags_and_only_to_methods_that_take_them(toy):
    args = _parser().parse_args(["--method", "toy", "--device", "cpu", "--dtype", "float16", "--batch-size", "3"])
    assert method_from_args(args) == toy(device="cpu", dtype="float16")  # toy has no batch_size: not passed
    args = _parser().parse_args(["--batch-size", "3"])
    assert method_from_args(args).batch_size == 3 != get_method("latenttracer").batch_size


def test_a_flag_the_method_does_not_take_is_an_error_naming_both_and_flags_spell_their_values(toy):
    with pytest.raises(ValueError, match=r"--method toy does not take --distance l1 \(methods that take --distance: "):
        method_from_args(_parser().parse_args(["--method", "toy", "--distance", "l1"]))
    flags = method_flags()
    assert flags["mode"].methods == ["toy"] and flags["mode"].spelled("fast") == "--mode fast"
    assert flags["use_mean"].spelled(False) == "--no-use-mean" and flags["ratios"].tokens((1.0, 2.5)) == [
        "--ratios", "1.0", "2.5"]


def test_types_without_a_command_line_form_and_clashing_flags_are_errors_naming_them(toy):
    @dataclass(frozen=True)
    class Clash(toy):
        mode: int = 3
        name = "clash"

    METHODS.register(Clash)
    with pytest.raises(TypeError, match=r"option mode: type .*, but method (toy|clash)'s mode is .*cannot be both"):
        method_flags()
    del METHODS._entries["clash"]

    @dataclass(frozen=True)
    class Odd(toy):
        table: dict = field(default_factory=dict)
        name = "odd"

    METHODS.register(Odd)
    with pytest.raises(TypeError, match="method odd, option table: type <class 'dict'> has no command-line form"):
        method_flags()
    del METHODS._entries["odd"]
    with pytest.raises(TypeError, match=r"method option mode \(toy\): --mode is already a flag of tool"):
        _parser("--mode")


def test_describe_is_the_label_and_the_identity(toy):
    assert describe(toy(mode="fast", size=7)) == f"{toy().label}: mode=fast size=7"
    method = get_method("latenttracer")
    assert describe(method).startswith(f"{method.label}: ") and all(
        f"{k}={v}" in describe(method) for k, v in method.identity().items())
