"""The slow tier is opt-in: deselected by default, added by ``RUN_SLOW=1``, and an explicit ``-m`` always wins.

Each case runs pytest in-process on a throwaway project whose ``addopts`` and ``conftest.py`` hook are the
project's own (the hook is loaded from ``tests/conftest.py``), with one fast and one slow test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        """
        [pytest]
        markers = slow: long-running tests
        addopts = -m 'not slow'
        """
    )
    pytester.makeconftest(
        f"""
        import importlib.util

        _spec = importlib.util.spec_from_file_location("project_conftest", {str(CONFTEST)!r})
        _mod = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_mod)
        pytest_configure = _mod.pytest_configure
        """
    )
    pytester.makepyfile(
        test_tiers="""
        import pytest

        def test_fast():
            assert True

        @pytest.mark.slow
        def test_slow():
            assert True
        """
    )
    return pytester


@pytest.mark.parametrize(
    "run_slow, args, expected",
    [
        (None, [], {"passed": 1, "deselected": 1}),
        ("0", [], {"passed": 1, "deselected": 1}),
        ("1", [], {"passed": 2, "deselected": 0}),
        ("true", [], {"passed": 2, "deselected": 0}),
        ("1", ["-m", "not slow"], {"passed": 1, "deselected": 1}),
        ("1", ["-m", "slow"], {"passed": 1, "deselected": 1}),
        (None, ["-m", "slow or not slow"], {"passed": 2, "deselected": 0}),
    ],
)
def test_run_slow_selects_the_slow_tier(project, monkeypatch, run_slow, args, expected):
    if run_slow is None:
        monkeypatch.delenv("RUN_SLOW", raising=False)
    else:
        monkeypatch.setenv("RUN_SLOW", run_slow)
    result = project.runpytest("-p", "no:xdist", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(**expected)
