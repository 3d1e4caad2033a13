"""Command-line flags from the registered methods' settings dataclasses, and back (used by :mod:`latenttracer.cli`
and :mod:`latenttracer.attack_cli`): :func:`add_method_args` puts ``--method`` and every method's options on a
parser, :func:`method_from_args` builds the method the parsed arguments ask for.

A settings field ``my_option`` becomes ``--my-option``: a ``Literal`` gives its choices, a ``bool`` gives
``--my-option`` / ``--no-my-option``, ``int`` / ``float`` / ``str`` (or an ``Optional`` of one, or a union of them
with a ``Literal``) one value, ``tuple[X, ...]`` one or more; the help text is the field's
``metadata["help"]``. Methods that share a field name share its flag (their types must agree);
:data:`~latenttracer.methods.base.SHARED_OPTIONS` come from the CLI's shared flags instead.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from latenttracer.methods.base import METHODS, SHARED_OPTIONS

__all__ = ["MethodFlag", "add_method_args", "describe", "method_flags", "method_from_args"]


@dataclass
class MethodFlag:
    """One ``--flag`` built from a settings field that one or more registered methods take."""

    name: str  # the settings field
    kind: str  # "bool" (--x / --no-x), "value" or "values" (a tuple: one or more words)
    base: Any  # the field's type without None and with a Literal as its values' type: equal for every method
    converts: dict[str, Callable[[str], Any] | None] = field(default_factory=dict)  # method -> converter
    choices: dict[str, tuple] = field(default_factory=dict)  # method -> allowed values (Literal fields)
    helps: dict[str, str] = field(default_factory=dict)  # method -> help text
    defaults: dict[str, Any] = field(default_factory=dict)  # method -> default

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return f"method_option_{self.name}"

    @property
    def methods(self) -> list[str]:
        return sorted(self.defaults)

    def convert(self, text: str) -> Any:
        """One command-line word as a value: one of the methods' choices when every method has choices (each
        method's own are checked in :func:`method_from_args`), else by the field's type."""
        if len(self.choices) == len(self.defaults):
            for values in self.choices.values():
                for v in values:
                    if str(v) == text:
                        return v
            allowed = ", ".join(dict.fromkeys(str(v) for c in self.choices.values() for v in c))
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {allowed}")
        convert = next(c for m, c in self.converts.items() if m not in self.choices)
        try:
            return convert(text)  # type: ignore[misc]
        except ValueError as err:
            name = getattr(self.base, "__name__", str(self.base))
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {name}") from err

    def tokens(self, value: Any) -> list[str]:
        """The command-line words that set this option to ``value``."""
        if self.kind == "bool":
            return [self.flag if value else "--no-" + self.flag[2:]]
        if self.kind == "values":
            return [self.flag, *map(str, value)]
        return [self.flag, str(value)]

    def spelled(self, value: Any) -> str:
        return " ".join(self.tokens(value))

    def help_text(self) -> str:
        by_text: dict[str, list[str]] = {}
        for m in self.methods:
            if self.helps[m]:
                by_text.setdefault(self.helps[m], []).append(m)
        if len(by_text) == 1 and len(next(iter(by_text.values()))) == len(self.methods):
            text = next(iter(by_text))
        else:
            text = "; ".join(f"{', '.join(ms)}: {h}" for h, ms in by_text.items())
        defaults = ", ".join(f"{m} {self.defaults[m]}" for m in self.methods)
        return ((f"{text} " if text else "") + f"[default: {defaults}]").replace("%", "%%")


def _flag_type(tp: Any, where: str) -> tuple[str, Callable[[str], Any] | None, tuple | None]:
    """(kind, converter, Literal choices) of a settings field's type."""
    if tp is bool:
        return "bool", None, None
    origin = get_origin(tp)
    if origin is Literal:
        values = get_args(tp)

        def literal(text: str, values=values):
            for v in values:
                if str(v) == text:
                    return v
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, values))}")

        return "value", literal, values
    if origin is Union or origin is types.UnionType:
        parts = [a for a in get_args(tp) if a is not type(None)]
        if len(parts) == 1:
            return _flag_type(parts[0], where)
        converted = [_flag_type(a, where) for a in parts]
        if any(kind != "value" for kind, _, _ in converted):
            raise TypeError(f"{where}: a union of {tp} has no command-line form")
        choices = tuple(v for _, _, c in converted for v in (c or ()))
        convs = sorted(converted, key=lambda c: c[2] is None)  # literal values first, then int, float, str

        def union(text: str, convs=convs):
            for _, conv, _ in convs:
                try:
                    return conv(text)
                except (argparse.ArgumentTypeError, ValueError):
                    pass
            raise argparse.ArgumentTypeError(f"{text!r} is not a {tp}")

        return "value", union, (choices if all(c for _, _, c in converted) else None)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            kind, convert, choices = _flag_type(args[0], where)
            if kind == "value":
                return "values", convert, choices
        raise TypeError(f"{where}: only tuples of one type (tuple[float, ...]) have a command-line form, not {tp}")
    if tp in (int, float, str):
        return "value", tp, None
    if tp is Path:
        return "value", Path, None
    raise TypeError(f"{where}: type {tp} has no command-line form (use bool, int, float, str, a Literal or "
                    "an Optional of one)")


def _base_type(tp: Any) -> Any:
    """What must agree between methods sharing a flag: the type without None, a Literal as its values' type."""
    origin = get_origin(tp)
    if origin is Literal:
        return type(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        parts = [_base_type(a) for a in get_args(tp) if a is not type(None)]
        return parts[0] if len(parts) == 1 else frozenset(parts)
    if origin is tuple:
        return (tuple, *(_base_type(a) for a in get_args(tp)))
    return tp


def method_flags() -> dict[str, MethodFlag]:
    """Every registered method's options as command-line flags, merged by field name (``seed`` is one flag for
    every method that has one). :data:`~latenttracer.methods.base.SHARED_OPTIONS` come from the shared flags."""
    out: dict[str, MethodFlag] = {}
    for mname, cls in METHODS.items():
        settings = cls.settings_type()
        hints = get_type_hints(settings)
        defaults = cls.option_defaults()
        for f in cls.option_fields():
            if f.name in SHARED_OPTIONS:
                continue
            where = f"method {mname}, option {f.name}"
            kind, convert, choices = _flag_type(hints[f.name], where)
            base = _base_type(hints[f.name])
            flag = out.setdefault(f.name, MethodFlag(f.name, kind, base))
            if (flag.kind, flag.base) != (kind, base):
                other = flag.methods[0]
                raise TypeError(f"{where}: type {hints[f.name]}, but method {other}'s {f.name} is a "
                                f"{flag.kind} option of {flag.base}; one flag cannot be both (rename one of them)")
            flag.converts[mname] = convert
            if choices:
                flag.choices[mname] = choices
            flag.helps[mname] = f.metadata.get("help", "")
            flag.defaults[mname] = defaults.get(f.name)
    return out


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """``--method`` and every registered method's options, in a group of ``parser``."""
    m = parser.add_argument_group("method", "each option flag says which methods take it and their defaults")
    m.add_argument("--method", choices=METHODS.names(), default="latenttracer",
                   help="scoring method (default latenttracer)")
    for flag in method_flags().values():
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": flag.help_text()}
        if flag.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = flag.convert
            if flag.kind == "values":
                kwargs["nargs"] = "+"
            kwargs["metavar"] = flag.name.upper()
            all_choices = [v for c in flag.choices.values() for v in c]
            if all_choices and len(flag.choices) == len(flag.defaults):  # only Literal fields: list the choices
                kwargs["metavar"] = "{" + ",".join(dict.fromkeys(map(str, all_choices))) + "}"
        try:
            m.add_argument(flag.flag, **kwargs)
        except argparse.ArgumentError as err:
            raise TypeError(f"method option {flag.name} ({', '.join(flag.methods)}): {flag.flag} is already a "
                            f"flag of {parser.prog} ({err})") from err


def method_from_args(args: argparse.Namespace):
    """The :class:`~latenttracer.methods.Method` that arguments parsed with :func:`add_method_args` ask for; the
    :data:`~latenttracer.methods.base.SHARED_OPTIONS` come from ``args.device``, ``args.dtype`` and
    ``args.batch_size`` (``"auto"``: the method's own). A flag the chosen method does not take, or a value it does
    not allow, is an error naming the flag, the method and the methods that take it."""
    from latenttracer.methods import get_method

    name = args.method
    flags = method_flags()
    given = {f.name: getattr(args, f.dest) for f in flags.values() if getattr(args, f.dest, None) is not None}
    given = {k: tuple(v) if flags[k].kind == "values" else v for k, v in given.items()}
    for key, value in given.items():
        flag = flags[key]
        if name not in flag.defaults:
            raise ValueError(f"--method {name} does not take {flag.spelled(value)} (methods that take "
                             f"{flag.flag}: {', '.join(flag.methods)})")
        allowed = flag.choices.get(name)
        if allowed is not None and flag.kind == "value" and value not in allowed:
            others = [m for m, c in flag.choices.items() if value in c]
            raise ValueError(f"--method {name} takes {flag.flag} {'|'.join(map(str, allowed))}, not {value}"
                             + (f" ({value} is for {', '.join(others)})" if others else ""))
    takes = {f.name for f in METHODS.get(name).option_fields()}
    shared = {"device": args.device, "dtype": args.dtype}
    if args.batch_size != "auto":
        shared["batch_size"] = args.batch_size
    options = {k: v for k, v in shared.items() if k in takes and k in SHARED_OPTIONS}
    return get_method(name, {**given, **options})


def describe(method) -> str:
    """A method and its settings in one line, as the commands print it: ``label: key=value ...``."""
    return f"{method.label}: " + " ".join(f"{k}={v}" for k, v in method.identity().items())
