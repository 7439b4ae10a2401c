"""Every command turns bad input into one line `gasp <cmd>: error: ...` and exit status 2, with no
traceback; bugs keep their traceback; `--debug` shows it for user errors too (gasp_plugin.errors).

The commands run as subprocesses, as a user runs them; each fails before any model is built.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gasp_plugin.errors import is_user_error, run_command

REPO = Path(__file__).resolve().parents[1]
HOLOLENS = REPO / "gasp_plugin" / "assets" / "hololens-000"


def _gasp(*argv: str, module: str = "gasp_plugin.cli", cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def _one_line_error(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The error line, after checking the exit status, that it is the only one, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def not_a_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("not_a_scene")
    (folder / "notes.txt").write_text("no frames here")
    return folder


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("argv, prog, message", [
    (["train", "--recipe", "recipes/qwen2vl_gasp.yaml", "model.path=/nonexistent/Qwen"], "gasp train",
     "not a local checkpoint folder"),
    (["train", "--recipe", "tiny_cpu", "training.bogus=1"], "gasp train", "unknown key 'training.bogus'"),
    (["train", "--recipe", "tiny_cpu", "training.max_steps=-3"], "gasp train", "training.max_steps"),
    (["train", "--recipe", "tiny_cpu", "model.path=tiny:bert"], "gasp train", "model_type='bert'"),
    (["train", "--recipe", "/nonexistent/recipe.yaml"], "gasp train", "not found"),
    (["probe", "--model", "/nonexistent", "--scenes", HOLOLENS], "gasp probe", "'/nonexistent'"),
    (["probe", "--model", "tiny:bert", "--scenes", HOLOLENS], "gasp probe", "model_type='bert'"),
    (["tracks", "/not/a/scene", "--anchor", "0", "--frames", "1"], "gasp tracks", "does not exist"),
    (["bench", "tracks", "--frames", "0"], "gasp bench", "num_frames"),
    (["bench", "tracks", "--grid", "abc"], "gasp bench tracks", "invalid int value"),
    (["bench", "nope"], "gasp bench", "known benchmarks"),
    (["probe", "--model", "tiny:qwen2_vl", "--scenes", HOLOLENS, "--layers", "x"], "gasp probe", "--layers"),
], ids=lambda v: " ".join(map(str, v)) if isinstance(v, list) else None)
def test_bad_input_is_one_line(argv, prog, message):
    assert message in _one_line_error(_gasp(*argv), prog)


def test_a_folder_that_is_not_a_scene(not_a_scene):
    line = _one_line_error(_gasp("tracks", not_a_scene, "--anchor", "0", "--frames", "1"), "gasp tracks")
    assert "unknown scene layout" in line


def test_demo_out_is_a_file(a_file):
    line = _one_line_error(_gasp("demo", "--out", a_file), "gasp demo")
    assert f"--out {a_file} is a file" in line


def test_the_launcher_entry_reports_the_same_way():
    """`python -m gasp_plugin.train.launch` (what recipes/qwen2vl_gasp.sh runs on every rank)."""
    proc = _gasp("--recipe", "tiny_cpu", "training.bogus=1", module="gasp_plugin.train.launch")
    assert "unknown key 'training.bogus'" in _one_line_error(proc, "gasp train")


@pytest.mark.parametrize("argv", [["--debug", "train"], ["train", "--debug"]])
def test_debug_adds_the_traceback(argv):
    proc = _gasp(*argv, "--recipe", "tiny_cpu", "training.bogus=1")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "RecipeError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("gasp train: error: unknown key")


# ---- the rule, in process ---------------------------------------------------------------------


def _raise_from(module: str, exc: BaseException):
    """A function whose frame belongs to ``module`` and raises ``exc``."""
    namespace = {"__name__": module, "exc": exc}
    exec("def fail():\n    raise exc\n", namespace)
    return namespace["fail"]


def _caught(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("did not raise")


@pytest.mark.parametrize("module, exc, user", [
    ("gasp_plugin.data.scene", ValueError("not a scene"), True),
    ("gasp_plugin.recipe.schema", IndexError("frame 9 out of range"), True),
    ("gasp_plugin.data.readers.video", ImportError("pip install 'gasp-plugin[video]'"), True),
    ("gasp_plugin", ValueError("top level"), True),
    ("gasp_plugin.train.assemble", ModuleNotFoundError("No module named 'deepspeed'", name="deepspeed"), True),
    ("gasp_plugin.models.registry", ImportError("cannot import name 'x'", name="gasp_plugin.models"), False),
    ("gasp_plugin.cli", ModuleNotFoundError("No module named 'gasp_plugin.y'", name="gasp_plugin.y"), False),
    ("torch.nn.functional", ValueError("from deep in torch"), False),  # we called it wrongly: a bug
    ("transformers.models.auto", ImportError("inside transformers"), False),
    ("gasp_plugin_other", ValueError("a package whose name only starts like ours"), False),
    ("gasp_plugin.core.head", TypeError("wrong call"), False),
    ("gasp_plugin.core.capture", RuntimeError("invariant broken"), False),
    ("gasp_plugin.core.head", KeyError("no head"), False),
    ("torch.serialization", FileNotFoundError(2, "No such file or directory", "/x"), True),
    ("shutil", PermissionError(13, "Permission denied", "/root/x"), True),
])
def test_user_errors_by_type_and_origin(module, exc, user):
    assert is_user_error(_caught(_raise_from(module, exc))) is user


def test_run_command_reports(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run_command("gasp x", _raise_from("gasp_plugin.x", ValueError("bad value"))) == 2
    assert capsys.readouterr().err == "gasp x: error: bad value\n"
    assert run_command("gasp x", _raise_from("os", FileNotFoundError(2, "No such file or directory", "/a"))) == 2
    assert capsys.readouterr().err == "gasp x: error: /a: No such file or directory\n"
    assert run_command("gasp x", _raise_from("torch.nn", ValueError("deep"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("gasp x: internal error: ValueError: deep")
    assert run_command("gasp x", lambda: 3) == 3 and run_command("gasp x", lambda: None) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_command("gasp train", _raise_from("gasp_plugin.train", ValueError("bad"))) == 2
    assert capsys.readouterr().err == "gasp train: error: [rank 1] bad\n"


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    """A checkpoint folder of a family GASP has no adapter for (only its config: nothing loads)."""
    folder = tmp_path_factory.mktemp("bert")
    (folder / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    return folder


def test_an_unsupported_checkpoint_is_one_line_before_loading(bert_checkpoint):
    train = _one_line_error(_gasp("train", "--recipe", "recipes/qwen2vl_gasp.yaml", f"model.path={bert_checkpoint}"),
                            "gasp train")
    probe = _one_line_error(_gasp("probe", "--model", bert_checkpoint, "--scenes", HOLOLENS), "gasp probe")
    for line in (train, probe):
        assert "model_type 'bert' is not supported by GASP" in line and "config.json" in line
