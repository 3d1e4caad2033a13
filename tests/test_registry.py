"""The one registry mechanism: registration, unknown names, plugins from files."""

import sys
import types

import pytest

from latenttracer.registry import Registry, RegistryError, load_plugins


def test_register_get_and_unknown_name_lists_known():
    reg = Registry("widget", "latenttracer.templates_does_not_exist")
    reg._discovered = True  # no package to scan in this test

    @reg.register
    class A:
        name = "a"

    @reg.register(name="b")
    def b():
        return 1

    assert reg.get("a") is A and reg.get("b") is b and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(RegistryError, match=r"widget 'c' is not one of \['a', 'b'\]"):
        reg.get("c")

    class Other:
        name = "a"

    with pytest.raises(RegistryError, match="registered twice"):
        reg.register(Other)


def test_plugin_file_registers_into_a_registry(tmp_path, monkeypatch):
    target = types.ModuleType("registry_test_target")
    target.REG = Registry("gadget", "latenttracer.templates_does_not_exist")
    target.REG._discovered = True
    monkeypatch.setitem(sys.modules, "registry_test_target", target)
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("import registry_test_target as t\n\n@t.REG.register\nclass G:\n    name = 'g'\n")
    (mod,) = load_plugins([plugin])
    assert target.REG.get("g") is mod.G
    assert load_plugins([plugin]) == [mod]  # loads once
    with pytest.raises(RegistryError, match="missing.py"):
        load_plugins([tmp_path / "missing.py"])
