"""lmms-eval's own command line (``python -m lmms_eval``) on the three spatial benchmarks, and
``gasp eval`` driving it, for real.

lmms-eval 0.7.3 from the package registry in a venv of its own (tests/frameworks.py: it needs
torchvision, hence torch 2.14.1 + torchvision 0.29.1), with this checkout installed editable beside
it. Its pins, each needed on this machine: ``decord`` (lmms-eval's qwen2_vl model class imports it
and does not declare it) and ``filelock<4`` (lmms-eval 0.7.3's evaluator imports
``filelock._api``, which filelock 4 removed).

Data: tests/framework_scripts/lmms_eval_data.py writes tiny local copies of VSI-Bench, BLINK
(Multi-view_Reasoning) and All-Angles Bench in each publisher's released layout and record format
(synthetic images and mp4 videos); the task files that point lmms-eval at them are the ones
``gasp eval --data`` writes (:func:`gasp_plugin.eval.harness.plan_task`). Nothing is downloaded.

What the runs show: a tiny saved model of each family with an lmms-eval class here (Qwen2-VL:
qwen2_vl; Qwen2.5-VL: qwen2_5_vl; Qwen3-VL: qwen3_vl; LLaVA-1.5: llava_hf) answers every question of
the three tasks through lmms-eval on CPU, with the command line gasp eval builds (videos read by
decord); scripted answers (lmms-eval's ``from_log`` model) score exactly the hand-computed values,
with lmms-eval's own VSI-Bench and BLINK scoring and the All-Angles task shipped here; ``gasp eval``
on two checkpoints writes its report (JSON, Markdown, PNG, probe summary), and a task that fails
leaves the others' results in it. Not run: LLaVA-OneVision (llava_hf): the tiny model's saved
processor has no ``num_image_tokens``, which transformers' LlavaOnevisionProcessor needs
(TypeError in ``_get_number_of_features``); LLaVA-NeXT-Video: lmms-eval 0.7.3 has no class for
transformers checkpoints of it.

Time on 2 CPU cores, after the venv is built (about 4 min the first time, cached under
.cache/venvs): about 5 min (each lmms-eval process spends about 15 s importing itself).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frameworks import REPO, TORCH_VISION, Framework, ensure_venv
from gasp_plugin.eval import harness
from gasp_plugin.eval.scoring import mean_relative_accuracy

FRAMEWORK = Framework("lmms-eval", TORCH_VISION, ("lmms-eval==0.7.3", "transformers==5.24.0", "decord==0.6.0",
                                                 "filelock==3.32.7"))
DATA_SCRIPT = REPO / "tests" / "framework_scripts" / "lmms_eval_data.py"
SCENE = REPO / "gasp_plugin" / "assets" / "hololens-000"
TIMEOUT = 900
TASKS = ("vsibench", "blink_multi_view_reasoning", "all_angles_bench")
BUDGET = ["--max-pixels", "12544", "--max-frames", "4"]


# ---- without lmms-eval -------------------------------------------------------------------------


def test_model_class_and_args_of_a_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    model_type, cls = harness.model_class_for(tmp_path)
    assert (model_type, cls.name) == ("qwen2_5_vl", "qwen2_5_vl")
    args = harness.model_args(tmp_path, cls, harness.Budgets(1000, 100, 8), "cuda")
    assert args == f"pretrained={tmp_path.resolve()},max_pixels=1000,min_pixels=100,max_num_frames=8,device_map=cuda"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next_video"}))
    with pytest.raises(ValueError, match="no lmms-eval model class"):
        harness.model_class_for(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="gasp export"):
        harness.model_class_for(adapter)
    with pytest.raises(ValueError, match="--min-pixels"):
        harness.Budgets(100, 1000, 8)


def test_all_angles_needs_its_folder(tmp_path):
    with pytest.raises(ValueError, match="--data all_angles_bench=DIR"):
        harness.plan_task("all_angles_bench", None, tmp_path, {})
    with pytest.raises(FileNotFoundError, match="no data.json"):
        harness.plan_task("all_angles_bench", tmp_path, tmp_path / "out", {})
    assert harness.plan_task("vsibench", None, tmp_path, {}).lmms_name == "vsibench"  # lmms-eval's own, from the hub


def _gasp_eval(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gasp_plugin.cli", "eval", *argv], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_gasp_eval_reports_a_users_mistake_in_one_line(tmp_path):
    from gasp_plugin.models.tiny import save_tiny_model

    adapter = tmp_path / "run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    done = _gasp_eval(str(adapter), "--device", "cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("gasp eval: error:") and "gasp export" in done.stderr
    base = save_tiny_model("qwen2_vl", tmp_path / "base", image_size=112, num_layers=2)
    done = _gasp_eval(f"base={base}", "--tasks", "vsibench", "--device", "cpu")  # this venv has no lmms-eval
    assert done.returncode == 2 and "lmms-eval is not usable in" in done.stderr and "Traceback" not in done.stderr
    done = _gasp_eval(f"base={base}", "--python", str(tmp_path / "nope" / "python"), "--device", "cpu")
    assert done.returncode == 2 and "no such interpreter" in done.stderr


def test_error_line_of_a_failed_run():
    """lmms-eval 0.7.3 logs the error (in colour) and exits 0: the report takes its message."""
    log = ("Traceback (most recent call last):\n  ...\nFileNotFoundError: record 5: image /d/x.jpg is missing\n"
           "\x1b[32m2026-01-01\x1b[0m | \x1b[31mERROR\x1b[0m | lmms_eval.__main__:cli_evaluate:614 - \x1b[31mError during "
           "evaluation: record 5: image /d/x.jpg is missing. Please set `--verbosity=DEBUG` to get more information.\x1b[0m\n")
    assert harness.error_line(log) == "record 5: image /d/x.jpg is missing."
    assert harness.error_line("x\nValueError: bad\nexit\n") == "ValueError: bad"
    assert harness.error_line("") == "no output"
    assert harness.RunResult(False, 0, 1.0, None).status == "failed: no results"
    assert harness.RunResult(False, 3, 1.0, None).status == "failed: exit 3"


# ---- lmms-eval's command line, in its venv -----------------------------------------------------------


@pytest.fixture(scope="module")
def lmms(tmp_path_factory):
    from gasp_plugin.models.tiny import save_tiny_model

    python = ensure_venv(FRAMEWORK)
    root = tmp_path_factory.mktemp("lmms")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_HOME=str(root / "hf"), TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), str(DATA_SCRIPT), str(root / "data")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    base = save_tiny_model("qwen2_vl", root / "base", image_size=112, num_layers=2)
    other = save_tiny_model("qwen2_vl", root / "gasp", image_size=112, num_layers=2, seed=1)
    data = {"vsibench": root / "data" / "VSI-Bench", "blink_multi_view_reasoning": root / "data" / "BLINK",
            "all_angles_bench": root / "data" / "All-Angles-Bench"}
    info = harness.lmms_info(str(python), ["vsibench", "blink_multi_view_reasoning"])
    runs = {t: harness.plan_task(t, data[t], root / "planned", info["yaml"]) for t in TASKS}
    expected = json.loads((root / "data" / "expected.json").read_text())
    return {"python": str(python), "root": root, "env": env, "base": base, "gasp": other, "data": data, "runs": runs,
            "expected": expected, "version": info["version"]}


def _lmms_eval(lmms, model: str, model_args: str, out: Path, force_simple: bool = False) -> dict:
    """One lmms-eval process over the three local tasks (the command line gasp eval builds); its
    scores and samples per task."""
    runs = lmms["runs"]
    env = dict(lmms["env"])
    for run in runs.values():
        env.update(run.env)
    together = harness.TaskRun("all", ",".join(r.lmms_name for r in runs.values()), lmms["root"] / "planned" / "lmms_tasks")
    cmd = harness.lmms_command(lmms["python"], model, model_args, together, out, device="cpu", force_simple=force_simple)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    results_files = sorted(out.rglob("*_results.json"))
    assert done.returncode == 0 and results_files, done.stdout[-3000:] + done.stderr[-5000:]
    samples = {t: [json.loads(line) for f in out.rglob(f"*_samples_{r.lmms_name}.jsonl") for line in f.open()]
               for t, r in runs.items()}
    scores = {t: harness.read_scores(results_files[-1], r) for t, r in runs.items()}
    return {"samples": samples, "scores": scores}


# model types with an lmms-eval class here, as tiny saved models (llava_onevision: see the module docstring)
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_three_benchmarks_run_through_the_lmms_eval_cli_on_a_tiny_model(lmms, model_type):
    from gasp_plugin.models.tiny import save_tiny_model

    checkpoint = lmms["base"] if model_type == "qwen2_vl" else save_tiny_model(
        model_type, lmms["root"] / f"tiny-{model_type}", image_size=112, num_layers=2)
    found, cls = harness.model_class_for(checkpoint)
    assert found == model_type
    args = harness.model_args(checkpoint, cls, harness.Budgets(12544, 3136, 4), "cpu")
    run = _lmms_eval(lmms, cls.name, args, lmms["root"] / f"run-{model_type}", cls.force_simple)
    expected = lmms["expected"]
    assert lmms["version"] == "0.7.3"
    counts = {t: len(s) for t, s in run["samples"].items()}
    assert counts == {"vsibench": len(expected["vsibench"]), "blink_multi_view_reasoning": len(expected["blink"]),
                      "all_angles_bench": len(expected["all_angles_bench"])}
    assert set(run["scores"]["vsibench"]) == {"overall", "obj_appearance_order_accuracy", "object_abs_distance_mra",
                                             "object_counting_mra", "object_rel_distance_accuracy",
                                             "object_size_estimation_mra", "room_size_estimation_mra",
                                             "route_planning_accuracy", "object_rel_direction_accuracy"}
    assert set(run["scores"]["all_angles_bench"]) == {"overall", "category_mean", "attribute_identification",
                                                     "camera_pose_estimation", "counting", "manipulation",
                                                     "relative_direction", "relative_distance"}
    assert list(run["scores"]["blink_multi_view_reasoning"]) == ["overall"]
    for task, scores in run["scores"].items():
        assert all(0.0 <= v <= 1.0 for v in scores.values()), (task, scores)
    # every question reached the model with its images or video; its answer is logged
    aab = sorted(run["samples"]["all_angles_bench"], key=lambda s: s["doc_id"])
    record = expected["all_angles_bench"][0]
    assert f"Question: {record['question']}\nOptions:\nA. {record['A']}\n" in aab[0]["input"]
    assert all(isinstance(s["filtered_resps"], str) for task in run["samples"].values() for s in task)


def _scripted_logs(folder: Path, runs: dict, answers: dict) -> None:
    """Logs in the form lmms-eval's from_log model replays: one file per task, responses by doc_id."""
    folder.mkdir(parents=True)
    for task, responses in answers.items():
        log = {"args": {"model": "scripted", "model_args": "", "limit": None}, "time": "0101_0000",
               "model_configs": {"task": runs[task].lmms_name},
               "logs": [{"doc_id": i, "resps": [[r]]} for i, r in enumerate(responses)]}
        (folder / f"{task}.json").write_text(json.dumps(log))


def test_scripted_answers_score_as_computed_by_hand(lmms):
    """Known answers through lmms-eval's own scoring (VSI-Bench, BLINK) and the All-Angles task."""
    expected = lmms["expected"]
    aab = expected["all_angles_bench"]  # 6 categories x 2 records, in that order
    wrong = {"A": "B", "B": "C", "C": "A"}
    forms = ["{}", "({})", "{}. option", "The answer is {}."]
    aab_responses = [forms[i % 4].format(r["answer"] if i % 3 != 2 else wrong[r["answer"]]) for i, r in enumerate(aab)]
    # VSI-Bench, in the order of lmms_eval_data.VSI: counting gt 4, abs distance 2.5, size 80, room 20.0,
    # rel direction easy A / medium B / hard C, rel distance D, route A, appearance order B
    vsi_responses = ["4", "3.0", "100", "20", "A", "B.", "D", "D", "A", "A"]
    blink_responses = ["(A)", "A", "(A)", "The answer is (B)."]  # answers (A), (B), (A), (B)
    logs = lmms["root"] / "scripted_logs"
    _scripted_logs(logs, lmms["runs"], {"all_angles_bench": aab_responses, "vsibench": vsi_responses,
                                        "blink_multi_view_reasoning": blink_responses})
    scores = _lmms_eval(lmms, "from_log", f"logs={logs}", lmms["root"] / "scripted_run")["scores"]

    # All-Angles: records 2, 5, 8, 11 answered wrong -> camera pose, counting, rel direction, rel distance 1 of 2
    assert scores["all_angles_bench"] == pytest.approx({
        "overall": 8 / 12, "category_mean": (1 + 0.5 + 0.5 + 1 + 0.5 + 0.5) / 6, "attribute_identification": 1.0,
        "camera_pose_estimation": 0.5, "counting": 0.5, "manipulation": 1.0, "relative_direction": 0.5,
        "relative_distance": 0.5})
    # BLINK: (A) right, A wrong, (A) right, "The answer is (B)." right
    assert scores["blink_multi_view_reasoning"] == pytest.approx({"overall": 0.75})
    # VSI-Bench: counting 4/4 -> 1; abs distance 3.0 vs 2.5 (0.2 off): theta 0.50..0.80 by the definition (0.7),
    # but lmms-eval compares in floats and 0.2 > 1 - 0.8 there -> 0.6; size 100 vs 80 (0.25 off) -> 0.6;
    # room 20 -> 1; rel direction (1 + 1 + 0) / 3; rel distance 1; route 1; appearance order 0
    vsi = {"object_counting_mra": 1.0, "object_abs_distance_mra": 0.6, "object_size_estimation_mra": 0.6,
           "room_size_estimation_mra": 1.0, "object_rel_direction_accuracy": 2 / 3, "object_rel_distance_accuracy": 1.0,
           "route_planning_accuracy": 1.0, "obj_appearance_order_accuracy": 0.0}
    assert scores["vsibench"] == pytest.approx({"overall": sum(vsi.values()) / 8, **vsi})
    assert mean_relative_accuracy("3.0", "2.5") == pytest.approx(0.7)
    assert mean_relative_accuracy("3.0", "2.5", tolerance=0.0) == pytest.approx(scores["vsibench"]["object_abs_distance_mra"])
    assert mean_relative_accuracy("100", "80") == pytest.approx(scores["vsibench"]["object_size_estimation_mra"])


def test_gasp_eval_writes_its_report_and_keeps_results_when_a_task_fails(lmms):
    root = lmms["root"]
    broken = root / "aab-broken"
    shutil.copytree(lmms["data"]["all_angles_bench"], broken)
    missing = broken / lmms["expected"]["all_angles_bench"][5]["image_path"][0]
    missing.unlink()
    out = root / "gasp_eval"
    cmd = [sys.executable, "-m", "gasp_plugin.cli", "eval", f"base={lmms['base']}", f"gasp={lmms['gasp']}",
           "--tasks", "vsibench,all_angles_bench", "--data", f"vsibench={lmms['data']['vsibench']}",
           "--data", f"all_angles_bench={broken}", "--python", lmms["python"], *BUDGET, "--device", "cpu",
           "--probe-scenes", str(SCENE), "--out", str(out)]
    done = subprocess.run(cmd, env=lmms["env"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    for k in range(1, 5):
        assert f"[{k}/4]" in done.stdout
    assert "2 of 4 run(s) failed: base/all_angles_bench, gasp/all_angles_bench" in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [c["label"] for c in report["checkpoints"]] == ["base", "gasp"]
    assert report["checkpoints"][0]["model_args"].endswith("max_pixels=12544,min_pixels=3136,max_num_frames=4,device_map=cpu")
    assert report["lmms_eval"]["version"] == "0.7.3"
    for label in ("base", "gasp"):
        vsi = report["tasks"]["vsibench"][label]
        assert vsi["status"] == "ok" and len(vsi["scores"]) == 9 and Path(vsi["log"]).is_file()
        aab = report["tasks"]["all_angles_bench"][label]
        assert aab["status"].startswith("failed") and str(missing.name) in aab["error"]
        probe = report["probe"][label]
        assert probe["descriptor"] == "qk" and 0 <= probe["pck2"] <= 1 and probe["peak_layer"] in (0, 1)
    rows = [r for r in report["rows"] if r["task"] == "vsibench"]
    assert rows[0]["category"] == "overall" and len(rows) == 9
    assert all(r["diff_gasp"] == pytest.approx(r["gasp"] - r["base"]) for r in rows)
    text = (out / "report.md").read_text()
    assert "## vsibench" in text and "| category | base | gasp | gasp - base |" in text
    assert "base: failed: no results (all_angles_bench record 5: image" in text and "## Layer-wise probe" in text
    assert (out / "report.png").stat().st_size > 1000
