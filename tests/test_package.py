"""The package imports, and its commands start, with none of the extras installed."""

import subprocess
import sys

EXTRAS = ("deepspeed", "decord", "flash_attn", "av")

# as if not installed: `import x` raises ImportError and importlib.util.find_spec(x) is None
_BLOCK = f"""
import sys
for name in {EXTRAS!r}:
    sys.modules[name] = None
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, timeout=120)


def test_imports_without_extras():
    proc = _run(
        "import gasp_plugin\n"
        "from gasp_plugin import GaspConfig, GaspLoss, attach_gasp, detach_gasp, Tracks, compute_tracks, open_scene\n"
        "import gasp_plugin.train.launch, gasp_plugin.train.trainer, gasp_plugin.probe.runner, gasp_plugin.demo\n"
        "import gasp_plugin.data.readers\n"
        "print('ok')\n"
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_cli_help_without_extras():
    proc = _run("from gasp_plugin.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    print('exit', e.code)\n")
    assert proc.returncode == 0 and "exit 0" in proc.stdout, proc.stderr[-3000:]
    for command in ("tracks", "train", "probe", "demo", "bench", "env"):
        assert command in proc.stdout


def test_env_report_without_extras():
    """`gasp env` says which extras are missing instead of failing on them."""
    proc = _run("from gasp_plugin.cli import main\nprint('exit', main(['env']))\n")
    assert proc.returncode == 0 and "exit 0" in proc.stdout, proc.stderr[-3000:]
    assert "- deepspeed: " in proc.stdout and "- attention: usable" in proc.stdout


def test_video_reader_names_the_missing_extra(tmp_path):
    """The one reader that needs decord says which extra to install."""
    proc = _run(
        "from pathlib import Path\n"
        "from gasp_plugin.data.readers import video\n"
        "try:\n"
        "    video._import_decord()\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    assert "ERR" in proc.stdout and "video" in proc.stdout, proc.stdout + proc.stderr[-2000:]
