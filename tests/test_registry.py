"""Registries: lazy entry points filled by their own package, no import for side effects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoprune.errors import AutopruneError
from autoprune.registry import Registry


def test_an_entry_point_is_imported_on_first_get_only():
    reg = Registry("thing", entry_points={"json": "json:dumps"})
    assert reg.names() == ["json"] and "json" in reg and list(reg) == ["json"]
    import json

    assert reg.get("json") is json.dumps


def test_a_module_may_register_the_object_its_entry_point_names():
    import json

    reg = Registry("thing", entry_points={"dumps": "json:dumps"})
    reg.register("dumps", json.dumps)  # what a module's own @register does when it is imported
    assert reg.get("dumps") is json.dumps
    with pytest.raises(ValueError, match="already registered"):
        reg.register("dumps", json.loads)


def test_another_object_under_an_entry_point_name_needs_overwrite():
    import json

    reg = Registry("thing", entry_points={"dumps": "json:dumps"})
    with pytest.raises(ValueError, match="already registered"):
        reg.register("dumps", json.loads)
    reg.register("dumps", json.loads, overwrite=True)
    assert reg.get("dumps") is json.loads


def test_a_broken_entry_point_is_a_clear_error():
    reg = Registry("thing", entry_points={"gone": "no_such_module_xyz:thing", "typo": "json:dumpz"})
    with pytest.raises(AutopruneError, match="thing 'gone': cannot load 'no_such_module_xyz:thing'"):
        reg.get("gone")
    with pytest.raises(AutopruneError, match="thing 'typo'"):
        reg.get("typo")
    with pytest.raises(AutopruneError, match="unknown thing 'gnoe'"):
        reg.get("gnoe")


def test_built_in_searchers_and_cost_models_are_known_without_importing_them():
    code = (
        "import sys\n"
        "from autoprune.core.cost import COST_MODELS\n"
        "from autoprune.search.base import SEARCHERS\n"
        "assert {'latency', 'params_fine', 'flops_nm'} <= set(COST_MODELS.names())\n"
        "assert {'uniform', 'random', 'sensitivity', 'netadapt', 'ddpg'} <= set(SEARCHERS.names())\n"
        "assert not [m for m in sys.modules if m.startswith(('autoprune.latency', 'autoprune.agents'))]\n"
        "assert SEARCHERS.get('ddpg').__name__ == 'DdpgSearcher'\n"
        "assert COST_MODELS.get('latency').__module__ == 'autoprune.latency.timing'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
