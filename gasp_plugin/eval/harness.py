"""lmms-eval as ``gasp eval`` drives it: the model class of a family, the benchmarks' task files,
one command line per (checkpoint, task), and the scores read back from lmms-eval's result file.

lmms-eval runs in its own Python (``--python``; it needs torchvision, which this package does not),
as its command-line entry point ``python -m lmms_eval``; nothing of lmms-eval is imported here.

Tasks (:data:`TASKS`): ``vsibench`` and ``blink_multi_view_reasoning`` ship with lmms-eval and read
the Hugging Face hub unless given a local copy; ``all_angles_bench`` ships with gasp-plugin
(``gasp_plugin/eval/tasks/all_angles_bench``) and always reads a local folder. A local copy is a
folder laid out as its publisher releases it; :func:`write_task_file` writes the small task file
that points lmms-eval at it, under a name of its own (``<task>_local``: lmms-eval's own tasks win
over external ones of the same name).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gasp_plugin.eval.tasks import TASKS_DIR

__all__ = ["ModelClass", "MODEL_CLASSES", "Budgets", "TaskInfo", "TASKS", "TaskRun", "RunResult", "model_class_for", "error_line",
           "model_args", "lmms_info", "plan_task", "write_task_file", "lmms_command", "run_lmms", "read_scores"]


@dataclass(frozen=True)
class ModelClass:
    """An lmms-eval model class and the names of its budget arguments (None: it has no such knob)."""

    name: str
    pixels: bool
    frames_arg: str
    force_simple: bool = False  # lmms-eval's --force_simple: its "simple" class, not the chat one


#: ``config.model_type`` -> lmms-eval model class (lmms-eval 0.7.3). llava_next_video has none that
#: loads transformers checkpoints (lmms-eval's llava_vid needs the original LLaVA-NeXT code).
#: llava_hf runs its simple class: 0.7.3's chat class hands the processor an empty image list on
#: video questions (IndexError in transformers' image processing), the simple one reads the video.
MODEL_CLASSES: dict[str, ModelClass] = {
    "qwen2_vl": ModelClass("qwen2_vl", True, "max_num_frames"),
    "qwen2_5_vl": ModelClass("qwen2_5_vl", True, "max_num_frames"),
    "qwen3_vl": ModelClass("qwen3_vl", True, "max_num_frames"),
    "qwen3_vl_moe": ModelClass("qwen3_vl", True, "max_num_frames"),
    "llava": ModelClass("llava_hf", False, "max_frames_num", force_simple=True),
    "llava_next": ModelClass("llava_hf", False, "max_frames_num", force_simple=True),
    "llava_onevision": ModelClass("llava_hf", False, "max_frames_num", force_simple=True),
}


@dataclass(frozen=True)
class Budgets:
    """Pixels per image or frame and frames per video given to the model class (its arguments)."""

    max_pixels: int = 602112  # 768 x 28 x 28: lmms-eval's qwen2_vl default
    min_pixels: int = 3136  # 4 x 28 x 28
    max_frames: int = 32

    def __post_init__(self):
        for name in ("max_pixels", "min_pixels", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"--min-pixels {self.min_pixels} is above --max-pixels {self.max_pixels}")


@dataclass(frozen=True)
class TaskInfo:
    """A benchmark ``gasp eval`` knows: its headline metric and where its data comes from."""

    name: str
    overall: str  # the metric reported as the task's ``overall``
    data: str  # what to download (named, never fetched here)
    shipped: bool = False  # a task folder of gasp-plugin (needs --data)
    video_cache: str | None = None  # lmms-eval reads the videos from $HF_HOME/<video_cache>/


TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("vsibench", "vsibench_overall", "the nyu-visionx/VSI-Bench dataset repository (README.md, test*.parquet, "
             "and arkitscenes.zip, scannet.zip, scannetpp.zip unpacked in the same folder)", video_cache="vsibench"),
    TaskInfo("blink_multi_view_reasoning", "blink_acc", "the BLINK-Benchmark/BLINK dataset repository (README.md and "
             "Multi-view_Reasoning/)"),
    TaskInfo("all_angles_bench", "overall", "the ch-chenyu/All-Angles-Bench dataset repository (data.json and the "
             "images; the Ego-Exo4D frames through the benchmark's own preparation steps)", shipped=True),
)}


def model_class_for(checkpoint: Path) -> tuple[str, ModelClass]:
    """``(model_type, lmms-eval model class)`` of a checkpoint folder, from its config.json."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "config.json").is_file():
        raise ValueError(f"{checkpoint} is a LoRA adapter, not a checkpoint: run `gasp export {checkpoint} --out DIR` "
                         "and evaluate DIR")
    config = checkpoint / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{checkpoint}: no config.json (a checkpoint folder that from_pretrained loads is needed)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{checkpoint}: model_type {model_type!r} has no lmms-eval model class here; "
                         f"supported: {sorted(MODEL_CLASSES)}")
    return model_type, MODEL_CLASSES[model_type]


def model_args(checkpoint: Path, cls: ModelClass, budgets: Budgets, device: str | None) -> str:
    """lmms-eval's ``--model_args`` string for a checkpoint. ``device``: its ``device_map``; None
    under a data-parallel launch, where each process takes its own GPU (lmms-eval's classes do that
    when no device_map is given)."""
    path = str(Path(checkpoint).resolve())
    if "," in path or "=" in path:
        raise ValueError(f"checkpoint path {path!r}: lmms-eval's --model_args cannot hold ',' or '=' in a path")
    args = [f"pretrained={path}"]
    if cls.pixels:
        args += [f"max_pixels={budgets.max_pixels}", f"min_pixels={budgets.min_pixels}"]
    args.append(f"{cls.frames_arg}={budgets.max_frames}")
    if device is not None:
        args.append(f"device_map={device}")
    return ",".join(args)


def lmms_info(python: str, yaml_of: list[str] = ()) -> dict:
    """Version and task folder of the lmms-eval installed in ``python``; with ``yaml_of``, the task
    file of each named task (lmms-eval's task index)."""
    code = ("import json, os, sys\nfrom importlib.metadata import version\nimport lmms_eval\n"
            "out = {'version': version('lmms_eval'), 'tasks_dir': os.path.join(os.path.dirname(lmms_eval.__file__), 'tasks')}\n"
            "names = sys.argv[1:]\n"
            "if names:\n    from lmms_eval.tasks import TaskManager\n    index = TaskManager().task_index\n"
            "    out['yaml'] = {n: index[n]['yaml_path'] for n in names if n in index and index[n].get('yaml_path', -1) != -1}\n"
            "print('GASP_LMMS_INFO ' + json.dumps(out))\n")
    try:
        done = subprocess.run([python, "-c", code, *yaml_of], capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--python {python}: no such interpreter") from err
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("GASP_LMMS_INFO ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ImportError(f"lmms-eval is not usable in {python}: {tail[0]} (install it there: "
                          "pip install torch torchvision lmms-eval decord qwen-vl-utils)")
    return json.loads(lines[-1][len("GASP_LMMS_INFO "):])


@dataclass
class TaskRun:
    """How one benchmark runs: the name lmms-eval knows it by, the task folder to include, and
    environment variables it needs."""

    task: str
    lmms_name: str
    include_path: Path | None = None
    env: dict = field(default_factory=dict)


def write_task_file(task: str, data_dir: Path, out_dir: Path, template_yaml: Path | None) -> str:
    """Write ``out_dir/<task>_local.yaml`` pointing ``task`` at the local copy ``data_dir``;
    returns the task's lmms-eval name. ``template_yaml``: the task file of an lmms-eval task
    (None for a task shipped here)."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise NotADirectoryError(f"--data {task}={data_dir}: no such folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = TASKS.get(task)
    if info is not None and info.shipped:
        data_json = data_dir / "data.json"
        if not data_json.is_file():
            raise FileNotFoundError(f"--data {task}={data_dir}: no data.json there (expected {info.data})")
        template = TASKS_DIR / task / "_default_template_yaml"
        text = (f"include: {json.dumps(str(template))}\ntask: {task}\ndataset_path: json\n"
                f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_json))}\n"
                f"lmms_eval_specific_kwargs:\n  default:\n    data_root: {json.dumps(str(data_dir))}\n"
                "    pre_prompt: \"\"\n    post_prompt: \"Answer with the option's letter from the given choices directly.\"\n")
        name = task
    else:
        if template_yaml is None:
            raise ValueError(f"--data {task}=...: lmms-eval has no task {task!r} to point at a local copy")
        name = f"{task}_local"
        text = f"include: {json.dumps(str(template_yaml))}\ntask: {name}\ndataset_path: {json.dumps(str(data_dir))}\n"
    (out_dir / f"{name}.yaml").write_text(f"# written by gasp eval: {task} on the local copy {data_dir}\n{text}")
    return name


def plan_task(task: str, data_dir: Path | None, out_dir: Path, templates: dict[str, str]) -> TaskRun:
    """The :class:`TaskRun` of ``task``: as lmms-eval ships it, or on a local copy ``data_dir``.
    ``templates``: lmms-eval's task file of each task (:func:`lmms_info`), for local copies."""
    info = TASKS.get(task)
    shipped = info is not None and info.shipped
    if shipped and data_dir is None:
        raise ValueError(f"{task} reads a local folder: add --data {task}=DIR with {info.data}")
    if data_dir is None:
        return TaskRun(task, task)
    folder = out_dir / "lmms_tasks" / task
    template = None if shipped else templates.get(task)
    name = write_task_file(task, data_dir, folder, Path(template) if template else None)
    env = {}
    if info is not None and info.video_cache:
        env = _video_home(Path(data_dir).resolve(), out_dir / "hf_home", info.video_cache)
    return TaskRun(task, name, folder, env)


def _video_home(data_dir: Path, home: Path, cache: str) -> dict:
    """lmms-eval's vsibench reads videos from ``$HF_HOME/<cache>/<dataset>/<scene>.mp4``: an
    ``HF_HOME`` whose ``<cache>`` is the local copy, with the user's hub and datasets caches kept."""
    if not any(p.is_dir() for p in data_dir.iterdir() if p.name in ("arkitscenes", "scannet", "scannetpp")):
        raise FileNotFoundError(f"{data_dir}: no video folders (arkitscenes/, scannet/, scannetpp/): unpack the "
                                "released zips there")
    home.mkdir(parents=True, exist_ok=True)
    link = home / cache
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(data_dir, target_is_directory=True)
    user_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return {"HF_HOME": str(home),
            "HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE", str(user_home / "hub")),
            "HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE", str(user_home / "datasets")),
            "HF_TOKEN_PATH": os.environ.get("HF_TOKEN_PATH", str(user_home / "token"))}


def lmms_command(python: str, model: str, args: str, run: TaskRun, output: Path, *, device: str, batch_size: int = 1,
                 limit: int | None = None, num_processes: int = 1, force_simple: bool = False,
                 extra: list[str] = ()) -> list[str]:
    """The lmms-eval command line of one (checkpoint, task) run; ``model`` and ``force_simple`` as
    :data:`MODEL_CLASSES` gives them."""
    head = [python, "-m", "lmms_eval"]
    if num_processes > 1:
        head = [python, "-m", "accelerate.commands.launch", f"--num_processes={num_processes}", "-m", "lmms_eval"]
    cmd = [*head, "--model", model, "--model_args", args, "--tasks", run.lmms_name, "--batch_size", str(batch_size),
           "--device", device, "--output_path", str(output), "--log_samples"]
    if run.include_path is not None:
        cmd += ["--include_path", str(run.include_path)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if force_simple:
        cmd.append("--force_simple")
    return cmd + list(extra)


@dataclass
class RunResult:
    """One lmms-eval run: ``ok`` when it wrote a results file (lmms-eval 0.7.3 exits 0 after an error
    during evaluation, so the exit status alone does not tell)."""

    ok: bool
    returncode: int
    seconds: float
    results_file: Path | None
    error: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.ok else f"failed: exit {self.returncode}" if self.returncode else "failed: no results"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(log_text: str) -> str:
    """The error of a failed lmms-eval run, from its log: lmms-eval's ``Error during evaluation``
    line, else the last exception line of a traceback, else the last line."""
    lines = [_ANSI.sub("", ln).strip() for ln in log_text.splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if "Error during evaluation:" in ln:
            return ln.split("Error during evaluation:", 1)[1].split(" Please set `--verbosity")[0].strip()[-400:]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln):
            return ln[-400:]
    return (lines or ["no output"])[-1][-400:]


def run_lmms(cmd: list[str], output: Path, log: Path, env: dict, stream=None) -> RunResult:
    """Run one lmms-eval command, its output into ``log`` (and ``stream``, when given)."""
    output.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **env}, bufsize=1)
        for line in proc.stdout:
            f.write(line)
            if stream is not None:
                stream.write(line)
        proc.wait()
    seconds = time.monotonic() - start
    found = sorted(output.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode == 0 and found:
        return RunResult(True, 0, seconds, found[-1])
    return RunResult(False, proc.returncode, seconds, None, error_line(log.read_text(errors="replace")))


def read_scores(results_file: Path, run: TaskRun) -> dict[str, float]:
    """``{category: score}`` of one task from lmms-eval's results JSON; the task's headline metric
    (:attr:`TaskInfo.overall`, else a metric named ``overall``, else the only one) as ``overall``."""
    results = json.loads(Path(results_file).read_text())["results"]
    if run.lmms_name not in results:
        raise ValueError(f"{results_file}: no results for task {run.lmms_name!r} (has {sorted(results)})")
    scores = {}
    for key, value in results[run.lmms_name].items():
        metric, _, _filter = key.partition(",")
        if not _filter or "_stderr" in metric or not isinstance(value, (int, float)):
            continue
        scores[metric] = float(value)
    info = TASKS.get(run.task)
    headline = info.overall if info is not None else ("overall" if "overall" in scores else None)
    if headline is None and len(scores) == 1:
        headline = next(iter(scores))
    ordered = {"overall": scores.pop(headline)} if headline in scores else {}
    ordered.update(scores)
    return ordered
