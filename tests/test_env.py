"""`gasp env` / `gasp --version`: versions, the ranges setup.py declares (read from the installed
metadata), torch's build and devices, and the usable attention implementations."""

import subprocess
import sys
from importlib import metadata

import pytest

from gasp_plugin import env
from gasp_plugin.env import PACKAGES, Requirement, declared_requirements, package_status

REQUIRES = [
    "torch>=2.4",
    "transformers<6,>=5.0",
    "deepspeed>=0.15; extra == \"deepspeed\"",
    "deepspeed>=0.15; extra == \"test\"",
    "flash_attn>=2.5; extra == \"flash\"",
    "numpy>=1.24; extra == \"test\"",
    "numpy>=1.24",
    "pywin32>=300; sys_platform == \"win32\" and extra == \"windows-only-missing\"",
]


def test_declared_requirements_merge_extras_and_order_bounds():
    found = declared_requirements(REQUIRES, ["deepspeed", "flash", "test"])
    assert found["torch"] == Requirement(">=2.4", ())
    assert found["transformers"].specifier == ">=5.0,<6" and found["transformers"].required
    assert found["deepspeed"] == Requirement(">=0.15", ("deepspeed", "test"))
    assert found["flash-attn"] == Requirement(">=2.5", ("flash",)) and not found["flash-attn"].required
    assert found["numpy"].required  # also in install_requires: required wins
    assert "pywin32" not in found  # under no extra the distribution provides


@pytest.mark.parametrize("version, spec, in_range, verdict", [
    ("5.24.0", ">=5.0,<6", True, "ok"),
    ("6.0.0", ">=5.0,<6", False, "OUTSIDE the declared range"),
    ("2.13.0+cpu", ">=2.4", True, "ok"),  # a local build label
    ("2.6.0.dev20250101", ">=2.4", True, "ok"),  # a nightly
    ("2.3.1", ">=2.4", False, "OUTSIDE the declared range"),
])
def test_package_status_in_range(version, spec, in_range, verdict):
    status = package_status("x", version, Requirement(spec))
    assert status.in_range is in_range and status.verdict == verdict


def test_package_status_missing_and_undeclared():
    assert package_status("torch", None, Requirement(">=2.4")).verdict == "MISSING: required"
    optional = package_status("flash-attn", None, Requirement(">=2.5", ("flash",)))
    assert optional.in_range is None and optional.verdict == "optional: pip install 'gasp-plugin[flash]'"
    assert package_status("foo", "1.0", None).verdict == "no range declared"


@pytest.fixture(scope="module")
def report():
    return env.collect()


def test_collect_reads_the_installed_metadata(report):
    declared = declared_requirements(metadata.requires("gasp-plugin"),
                                     metadata.metadata("gasp-plugin").get_all("Provides-Extra"))
    assert [p.name for p in report.packages] == list(PACKAGES)
    for status in report.packages:
        assert status.requirement == declared[status.name.replace("_", "-")], status.name
        assert status.version == env.installed_version(status.name)
    assert report.python.requirement.specifier == metadata.metadata("gasp-plugin")["Requires-Python"]
    assert report.python.version == ".".join(map(str, sys.version_info[:3]))
    assert report.gasp_version == metadata.version("gasp-plugin")
    torch_row = next(p for p in report.packages if p.name == "torch")
    assert torch_row.in_range is True and torch_row.verdict == "ok"


def test_torch_build_devices_and_attention(report):
    import torch

    from gasp_plugin.train.assemble import resolve_attention

    assert report.torch["version"] == torch.__version__
    assert report.torch["build"] == ("CPU" if torch.version.cuda is None and not torch.version.hip
                                     else report.torch["build"])
    assert len([d for d in report.torch["devices"] if d.startswith("cuda:")]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report.attention["eager"] == "yes" and report.attention["sdpa"] == "yes"
    assert set(report.attention) == {"eager", "sdpa", "flash_attention_2"}
    assert report.attention_auto == resolve_attention("auto")


def test_format_report_is_a_pasteable_list(report):
    text = env.format_report(report)
    lines = text.splitlines()
    assert lines[0].startswith("Copy-and-paste") and lines[1] == ""
    assert all(line.startswith("- ") for line in lines[2:])
    for name in ("gasp-plugin", "platform", "CPU", "python", *PACKAGES, "attention"):
        assert any(line.startswith(f"- {name}:") for line in lines), name
    assert f"- transformers: {metadata.version('transformers')} (declared >=5.4,<6: ok)" in lines


def test_ranges_follow_the_metadata(monkeypatch):
    """The declared ranges come from the installed metadata, not from a copy in env.py."""
    monkeypatch.setattr(env.metadata, "requires", lambda name: ["torch>=99"])
    report = env.collect()
    torch_row = next(p for p in report.packages if p.name == "torch")
    assert torch_row.verdict == "OUTSIDE the declared range"
    assert next(p for p in report.packages if p.name == "peft").verdict == "no range declared"


def test_gasp_env_and_version_commands():
    proc = subprocess.run([sys.executable, "-m", "gasp_plugin.cli", "env"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "- torch: " in proc.stdout and "- attention: usable" in proc.stdout
    code = ("import sys\nfrom gasp_plugin.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    first, last = proc.stdout.splitlines()[0], proc.stdout.splitlines()[-1]
    assert first.startswith(f"gasp-plugin {metadata.version('gasp-plugin')} (python ")
    assert "torch " in first and last == "exit 0 False"  # metadata only: torch is not imported
