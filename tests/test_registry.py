import sys
import textwrap

import pytest

from recsys_lightning import registry
from recsys_lightning.family import TaskFamily
from recsys_lightning.registry import RegistryError, discover, get_task, register_task

FAMILY = textwrap.dedent('''
    from recsys_lightning.registry import register_task
    from recsys_lightning.builtin_tasks.sequential import Sequential

    @register_task("{name}")
    class Plugin(Sequential):
        prompt_file = "sequential.yaml"
''')


def test_builtin_families_are_discovered():
    found = discover()
    assert "sequential" in found
    assert found["sequential"].source.endswith("tasks/sequential.py")


def test_a_dropped_in_file_registers_a_family(tmp_path):
    (tmp_path / "plugin_family.py").write_text(FAMILY.format(name="plugin_test_family"))
    assert get_task("plugin_test_family") if "plugin_test_family" in registry._REGISTRY else True
    found = discover([tmp_path])
    assert found["plugin_test_family"].source == str(tmp_path / "plugin_family.py")


def test_duplicate_names_are_rejected(tmp_path):
    (tmp_path / "dup.py").write_text(FAMILY.format(name="sequential"))
    with pytest.raises(RegistryError, match="registered twice"):
        discover([tmp_path])


def test_unknown_family_lists_known_ones():
    discover()
    with pytest.raises(RegistryError, match="registered:.*sequential"):
        get_task("no_such_family")


def test_only_task_families_register():
    with pytest.raises(RegistryError, match="TaskFamily subclass"):
        register_task("x")(dict)


def test_entry_point_group_is_loaded(tmp_path, monkeypatch):
    pkg = tmp_path / "ep_family.py"
    pkg.write_text(FAMILY.format(name="entry_point_family"))
    dist = tmp_path / "ep_family-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-family\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[recsys_lightning.tasks]\nplugin = ep_family\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_LOADED_ENTRY_POINTS", False)
    assert issubclass(discover()["entry_point_family"], TaskFamily)
    sys.modules.pop("ep_family", None)


def test_missing_task_folder_is_an_error(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        discover([tmp_path / "nope"])
