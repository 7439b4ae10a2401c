"""The patches in patches/: they parse, use only gasp_plugin names that exist, stay small, and are
listed in patches/README.md with their target commit. (The upstream repositories are not needed.)"""

import importlib
import importlib.util
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from gasp_plugin.integrations.common import GaspArguments

PATCH_DIR = Path(__file__).resolve().parents[1] / "patches"
PATCHES = sorted(PATCH_DIR.glob("*.patch"))
GASP_FIELDS = {f.name for f in fields(GaspArguments)}
SHA = re.compile(r"\b[0-9a-f]{40}\b")


def _sections(text: str) -> dict[str, dict]:
    """``{path: {"new": bool, "added": [lines], "removed": [lines]}}`` of a unified git diff."""
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("diff --git "):
            path = line.split(" b/", 1)[1]
            current = out.setdefault(path, {"new": False, "added": [], "removed": []})
        elif current is None:
            continue  # header lines before the first diff
        elif line.startswith("new file mode"):
            current["new"] = True
        elif line.startswith("+") and not line.startswith("+++ "):
            current["added"].append(line[1:])
        elif line.startswith("-") and not line.startswith("--- "):
            current["removed"].append(line[1:])
    return out


def _header(text: str) -> str:
    return text.split("diff --git ", 1)[0]


def test_there_are_patches():
    assert {p.name for p in PATCHES} >= {"qwen-vl-finetune-gasp.patch", "llamafactory-gasp.patch"}


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_patch_parses_as_a_unified_diff(patch, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    stat = subprocess.run(["git", "apply", "--numstat", str(patch)], cwd=tmp_path, capture_output=True, text=True)
    assert stat.returncode == 0, stat.stderr
    counted = {line.split("\t")[2]: (int(line.split("\t")[0]), int(line.split("\t")[1]))
               for line in stat.stdout.splitlines()}
    sections = _sections(patch.read_text())
    assert counted.keys() == sections.keys() and counted
    for path, sec in sections.items():
        assert counted[path] == (len(sec["added"]), len(sec["removed"])), path


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_patch_is_small_and_calls_the_integration(patch):
    sections = _sections(patch.read_text())
    changed = sum(len(s["added"]) + len(s["removed"]) for s in sections.values() if not s["new"])
    # 40: the wiring plus the guards that keep gasp_plugin unimported while GASP is off
    assert changed <= 40, f"{patch.name} changes {changed} lines of upstream files; move logic to gasp_plugin.integrations"
    calls = sum(len(re.findall(r"\bgasp\.\w+", line)) for s in sections.values() for line in s["added"])
    assert calls >= 3, "the wiring should be calls into gasp_plugin.integrations"


def _imports(lines: list[str]) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """``({alias: module}, [(module, name)])`` for the gasp_plugin imports in ``lines``."""
    aliases, names = {}, []
    for line in lines:
        s = line.strip()
        m = re.match(r"from (gasp_plugin[\w.]*) import (.+)$", s)
        if m:
            for part in m.group(2).strip("()").split(","):
                name, _, alias = part.strip().partition(" as ")
                names.append((m.group(1), name.strip()))
                obj = getattr(importlib.import_module(m.group(1)), name.strip(), None)
                if obj is None:  # a submodule imported by name
                    obj = importlib.import_module(f"{m.group(1)}.{name.strip()}")
                aliases[(alias or name).strip()] = obj
        m = re.match(r"import (gasp_plugin[\w.]*)(?: as (\w+))?$", s)
        if m:
            aliases[m.group(2) or m.group(1)] = importlib.import_module(m.group(1))
    return aliases, names


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_every_gasp_plugin_name_the_patch_uses_exists(patch):
    used = 0
    for path, sec in _sections(patch.read_text()).items():
        if not path.endswith(".py"):
            continue
        aliases, names = _imports(sec["added"])
        for module, name in names:
            mod = importlib.import_module(module)
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), f"{module}.{name}"
            used += 1
        for alias, obj in aliases.items():
            for line in sec["added"]:
                for attr in re.findall(rf"\b{re.escape(alias)}\.(\w+)", line):
                    assert hasattr(obj, attr), f"{path}: {alias}.{attr} does not exist in {obj.__name__}"
                    used += 1
    assert used >= 3


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_gasp_options_in_added_scripts_and_configs_exist(patch):
    found = set()
    for sec in _sections(patch.read_text()).values():
        for line in sec["added"]:
            found |= set(re.findall(r"--(gasp_\w+)", line)) | set(re.findall(r"^\s*(gasp_\w+):", line))
    assert found, "the patch should show the GASP options in its example script or config"
    assert found <= GASP_FIELDS, f"unknown GASP options {sorted(found - GASP_FIELDS)}"


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_readme_lists_the_patch_with_its_target_commit(patch):
    readme = (PATCH_DIR / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|") and f"`{patch.name}`" in line]
    assert len(rows) == 1, f"patches/README.md must have one table row for {patch.name}"
    commits = SHA.findall(rows[0])
    assert len(commits) == 1
    header = _header(patch.read_text())
    assert re.search(rf"^Commit: {commits[0]}$", header, re.M), "the patch header must name the same commit"
    assert re.search(r"^Target: https://github\.com/[\w.-]+/[\w.-]+", header, re.M)
