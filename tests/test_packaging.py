"""pyproject.toml lists the packages (the shipped spaces live outside tune_adapter/): a new
subpackage left off the list would be missing from the wheel."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_and_the_spaces_map_to_search_spaces():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tune_adapter").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"tune_adapter.search_spaces"}
    assert setuptools["package-dir"] == {"tune_adapter.search_spaces": "search_spaces"}
    assert (ROOT / "search_spaces" / "__init__.py").is_file() and (ROOT / "search_spaces" / "default.py").is_file()
