"""The benchmarks' scoring rules (gasp_plugin.eval.scoring) against hand-computed cases, and the
report's table arithmetic. Pure functions: well under a second."""

import math

import pytest

from gasp_plugin.eval.scoring import (ALL_ANGLES_CATEGORIES, MRA_THRESHOLDS, category_accuracy, exact_match,
                                      extract_choice, mean_relative_accuracy, option_letters, to_number)


@pytest.mark.parametrize("response, letter", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("A.", "A"), ("B. left", "B"), ("(B) left", "B"),
    ("The answer is (C).", "C"), ("Answer: B", "B"), ("I think option A, no: the answer is C", "C"),
    ("A chair", ""), ("the answer is a chair", ""), ("D", ""), ("", ""), ("none of them", ""),
])
def test_extract_choice(response, letter):
    assert extract_choice(response, "ABC") == letter


def test_exact_match():
    assert exact_match("B", "B") == 1.0
    assert exact_match("(b)", "B") == 1.0
    assert exact_match("B. second option", "(B)") == 1.0
    assert exact_match("A", "B") == 0.0
    assert exact_match("The answer is A", "A") == 1.0
    assert exact_match("D", "D", letters="ABCD") == 1.0 and exact_match("D", "A") == 0.0
    with pytest.raises(ValueError, match="not one of the option letters"):
        exact_match("A", "Z")


def test_mra_thresholds_are_the_papers():
    assert MRA_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@pytest.mark.parametrize("pred, gt, expected", [
    ("4", "4", 1.0),            # exact: within every 1 - theta
    ("12", "10", 0.7),          # 0.20 <= 1 - theta for theta 0.50 .. 0.80: 7 of 10
    ("3.0", "2.5", 0.7),        # 0.20 again
    ("100", "80", 0.6),         # 0.25: theta 0.50 .. 0.75
    ("11", "10", 0.9),          # 0.10: theta 0.50 .. 0.90
    ("10.4", "10", 1.0),        # 0.04 <= 0.05
    ("16", "10", 0.0),          # 0.60 > 0.50
    ("5", "10", 1 / 10),        # 0.50: theta 0.50 only
    ("about 9 chairs", "10", 0.9),
    ("three", "3", 0.0),        # not a number: 0
    (7, 10.0, 0.5),             # 0.30: theta 0.50 .. 0.70
])
def test_mean_relative_accuracy(pred, gt, expected):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(expected)


def test_mra_without_tolerance_is_lmms_evals_float_comparison():
    """lmms-eval's vsibench compares |pred - gt| / gt <= 1 - theta in plain floats: 1 - 0.8 is
    0.19999999999999996, so a relative error of exactly 0.2 misses theta = 0.8 there."""
    assert mean_relative_accuracy("12", "10", tolerance=0.0) == pytest.approx(0.6)
    assert mean_relative_accuracy("3.0", "2.5", tolerance=0.0) == pytest.approx(0.6)
    assert mean_relative_accuracy("100", "80", tolerance=0.0) == pytest.approx(0.6)  # 1 - 0.75 is exact


def test_mra_refuses_a_ground_truth_that_is_not_positive():
    with pytest.raises(ValueError, match="positive number"):
        mean_relative_accuracy("1", "0")
    with pytest.raises(ValueError, match="positive number"):
        mean_relative_accuracy("1", "n/a")


def test_to_number_and_option_letters():
    assert to_number("about 2.5 m") == 2.5 and to_number("-3") == -3.0 and to_number("none") is None
    assert to_number(4) == 4.0 and option_letters(3) == "ABC"
    with pytest.raises(ValueError):
        option_letters(0)


def test_all_angles_category_accuracy_by_hand():
    records = [("counting", 1), ("counting", 0), ("counting", 1), ("counting", 1),
               ("camera_pose_estimation", 0), ("camera_pose_estimation", 1),
               ("manipulation", 1)]
    acc = category_accuracy(records)
    assert acc["categories"] == {"camera_pose_estimation": 0.5, "counting": 0.75, "manipulation": 1.0}
    assert acc["counts"] == {"camera_pose_estimation": 2, "counting": 4, "manipulation": 1}
    assert acc["overall"] == pytest.approx(5 / 7)  # over all questions, as the benchmark reports it
    assert acc["category_mean"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    empty = category_accuracy([])
    assert math.isnan(empty["overall"]) and empty["categories"] == {}
    assert len(ALL_ANGLES_CATEGORIES) == 6 and "camera_pose_estimation" in ALL_ANGLES_CATEGORIES


def test_all_angles_task_scores_through_its_lmms_eval_hooks():
    """The task's utils (as lmms-eval calls them): prompt, per-record score, aggregations."""
    import importlib.util

    from gasp_plugin.eval.tasks import TASKS_DIR

    spec = importlib.util.spec_from_file_location("aab_utils", TASKS_DIR / "all_angles_bench" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"index": 3, "category": "counting", "question": "How many people?", "A": "2", "B": "3", "C": "4",
           "answer": "B", "image_path": []}
    text = utils.all_angles_doc_to_text(doc, {"post_prompt": "Answer with the letter."})
    assert text == "Question: How many people?\nOptions:\nA. 2\nB. 3\nC. 4\nAnswer with the letter."
    results = [utils.all_angles_process_results(dict(doc, category=c, answer=a), [r])["overall"]
               for c, a, r in [("counting", "B", "B"), ("counting", "A", "C"), ("manipulation", "C", "(C)")]]
    assert [r["score"] for r in results] == [1.0, 0.0, 1.0]
    assert utils.aggregate_overall(results) == pytest.approx(2 / 3)
    assert utils.aggregate_category_mean(results) == pytest.approx(0.75)
    assert utils.aggregate_counting(results) == 0.5 and utils.aggregate_manipulation(results) == 1.0
    assert math.isnan(utils.aggregate_camera_pose_estimation(results))
    with pytest.raises(ValueError, match="data_root"):
        utils.all_angles_doc_to_visual(doc, {})


def test_report_rows_and_differences():
    from gasp_plugin.eval.report import markdown, table_rows

    report = {"checkpoints": [{"label": "base", "path": "/b", "model_type": "qwen2_vl", "lmms_model": "qwen2_vl",
                               "model_args": "pretrained=/b"},
                              {"label": "gasp", "path": "/g", "model_type": "qwen2_vl", "lmms_model": "qwen2_vl",
                               "model_args": "pretrained=/g"}],
              "budgets": {"max_pixels": 1, "min_pixels": 1, "max_frames": 1}, "lmms_eval": {"version": "0.7.3"},
              "tasks": {"vsibench": {"base": {"status": "ok", "scores": {"overall": 0.25, "object_counting_mra": 0.1}},
                                     "gasp": {"status": "ok", "scores": {"overall": 0.54, "object_counting_mra": 0.4}}},
                        "blink": {"base": {"status": "ok", "scores": {"overall": 0.5}},
                                  "gasp": {"status": "failed: exit 1", "error": "boom", "log": "/l"}}}}
    rows = table_rows(report)
    assert rows[0] == {"task": "vsibench", "category": "overall", "base": 0.25, "gasp": 0.54,
                       "diff_gasp": pytest.approx(0.29)}
    assert rows[1]["diff_gasp"] == pytest.approx(0.3)
    assert rows[2] == {"task": "blink", "category": "overall", "base": 0.5, "gasp": None, "diff_gasp": None}
    report["rows"] = rows
    text = markdown(report)
    assert "| overall | 25.0 | 54.0 | +29.0 |" in text and "| overall | 50.0 | failed | n/a |" in text
    assert "gasp: failed: exit 1 (boom); log: /l" in text
