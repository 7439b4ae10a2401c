"""The glue the repository patches call (gasp_plugin.integrations), exercised for real on tiny models.

The upstream repositories are not available here; what their scripts do around the glue is
reproduced with the same library calls (HfArgumentParser, get_peft_model, a map-style dataset of
tokenised samples with its own collator, a Trainer subclass with extra constructor arguments).
"""

import os
import types
from dataclasses import dataclass

import pytest
import torch
from transformers import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.integrations import common, llamafactory, qwen_vl_finetune  # noqa: E402
from gasp_plugin.integrations.common import GaspArguments, parse_layers, plan_steps  # noqa: E402

SMALL = dict(gasp_min_frames=2, gasp_max_frames=3, gasp_window=3, gasp_grid=6, gasp_keep=1.0, gasp_embed_dim=16)


# ---- arguments -------------------------------------------------------------------------------


def test_arguments_parse_from_command_line():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser((GaspArguments,)).parse_args_into_dataclasses(
        ["--gasp_geometry_data", "/a, /b", "--gasp_ratio", "0.25", "--gasp_layers", "1:3"])
    assert args.gasp_enabled and args.gasp_scene_paths() == ["/a", "/b"]
    cfg = args.gasp_config()
    assert cfg.layers == [1, 2] and cfg.embed_dim == 256 and cfg.corr_weight == 0.3 and cfg.depth_weight == 1.0
    assert cfg.qk_weight == 0.0
    (args,) = HfArgumentParser((GaspArguments,)).parse_args_into_dataclasses(["--gasp_qk_weight", "0.5"])
    assert args.gasp_config().qk_weight == 0.5
    assert not GaspArguments().gasp_enabled and not GaspArguments(gasp_geometry_data="  ").gasp_enabled


def test_grid_argument_takes_one_or_several_grids():
    assert GaspArguments(gasp_grid="8,24").gasp_clip_sampling().grid == (8, 24)
    assert GaspArguments(gasp_grid=6).gasp_clip_sampling().grid == (6,)
    for bad in ("8,x", "8,8", "0"):
        with pytest.raises(ValueError, match="--gasp_grid must be"):
            GaspArguments(gasp_grid=bad)


@pytest.mark.parametrize("text, expected", [("all", "all"), ("0,4,-1", [0, 4, -1]), (" 3 ", [3]), ("2:5", [2, 3, 4])])
def test_parse_layers(text, expected):
    assert parse_layers(text) == expected


@pytest.mark.parametrize("text", ["", "a,b", "5:2", "1:2:3", "first"])
def test_parse_layers_rejects(text):
    with pytest.raises(ValueError, match="--gasp_layers"):
        parse_layers(text)


@pytest.mark.parametrize("field, value", [("gasp_ratio", 1.5), ("gasp_ratio", -0.1), ("gasp_tau", 0.0),
                                          ("gasp_keep", 0.0), ("gasp_min_frames", 1), ("gasp_head_lr_scale", 0),
                                          ("gasp_qk_weight", -1.0)])
def test_bad_arguments_name_the_flag(field, value):
    with pytest.raises(ValueError, match=f"--{field} must be .*got {value!r}"):
        GaspArguments(**{field: value})
    with pytest.raises(ValueError, match="--gasp_max_frames"):
        GaspArguments(gasp_min_frames=8, gasp_max_frames=4)


def test_plan_steps():
    kw = dict(num_train_epochs=1.0, num_instruct=100, world_size=2, batch_size=5, accumulation=3, ratio=0.5)
    assert plan_steps(max_steps=7, **kw) == (21, 7)
    # 100 samples / (2 x 5) = 10 instruction steps; at ratio 0.5: 20 micro steps -> 7 optimizer steps of 3
    assert plan_steps(max_steps=-1, **kw) == (21, 7)
    assert plan_steps(max_steps=-1, **{**kw, "num_train_epochs": 0.5, "ratio": 0.0, "accumulation": 1}) == (5, 5)
    assert plan_steps(max_steps=-1, **{**kw, "num_instruct": 101, "ratio": 0.75, "accumulation": 1}) == (44, 44)
    with pytest.raises(ValueError, match="--max_steps"):
        plan_steps(max_steps=-1, **{**kw, "ratio": 1.0})
    with pytest.raises(ValueError, match="--max_steps"):
        plan_steps(max_steps=0, **{**kw, "num_instruct": 0})


def test_qwen_check_arguments_rejects_flattening_keeps_lr_groups():
    on = GaspArguments(gasp_geometry_data="/scenes")
    plain_data = types.SimpleNamespace(data_flatten=False, data_packing=False)
    plain_train = types.SimpleNamespace(mm_projector_lr=None, vision_tower_lr=None)
    for flag in ("data_flatten", "data_packing"):
        data_args = types.SimpleNamespace(**{**vars(plain_data), flag: True})
        with pytest.raises(ValueError, match=f"--{flag} True cannot be combined"):
            qwen_vl_finetune.check_arguments(on, data_args, plain_train)
        qwen_vl_finetune.check_arguments(GaspArguments(), data_args, plain_train)  # GASP off: upstream behaviour
    for flag in ("mm_projector_lr", "vision_tower_lr"):  # the mixin delegates to the script's optimizer
        qwen_vl_finetune.check_arguments(on, plain_data, types.SimpleNamespace(**{**vars(plain_train), flag: 1e-5}))
    qwen_vl_finetune.check_arguments(on, plain_data, plain_train)


def _finetuning_args(**kw):
    @dataclass
    class FinetuningArguments(GaspArguments):  # what the LLaMA-Factory patch does: GaspArguments as a mixin
        stage: str = "sft"
        use_dft_loss: bool = False
        use_galore: bool = False
        galore_layerwise: bool = False
        use_badam: bool = False
        loraplus_lr_ratio: float = None

        def __post_init__(self):  # shadows GaspArguments.__post_init__, like upstream's
            pass

    return FinetuningArguments(**kw)


def test_llamafactory_check_arguments():
    model_args, data_args = types.SimpleNamespace(use_unsloth=False), types.SimpleNamespace(streaming=False)
    reentrant = types.SimpleNamespace(use_reentrant_gc=True)  # LLaMA-Factory's default: turned off with GASP on
    llamafactory.check_arguments(reentrant, data_args, _finetuning_args(gasp_geometry_data="/scenes"))
    assert reentrant.use_reentrant_gc is False
    on = dict(gasp_geometry_data="/scenes")
    llamafactory.check_arguments(model_args, data_args, _finetuning_args(**on))
    llamafactory.check_arguments(model_args, data_args, _finetuning_args(stage="dpo"))  # off: nothing checked
    for composes in (dict(use_dft_loss=True), dict(use_galore=True), dict(loraplus_lr_ratio=16.0)):
        llamafactory.check_arguments(model_args, data_args, _finetuning_args(**on, **composes))
    cases = [(dict(stage="dpo"), "stage: sft only"), (dict(use_badam=True), "use_badam cannot"),
             (dict(use_galore=True, galore_layerwise=True), "galore_layerwise cannot"),
             (dict(gasp_ratio=3.0), "--gasp_ratio must be")]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            llamafactory.check_arguments(model_args, data_args, _finetuning_args(**on, **extra))
    with pytest.raises(ValueError, match="streaming: false"):
        llamafactory.check_arguments(model_args, types.SimpleNamespace(streaming=True), _finetuning_args(**on))
    with pytest.raises(ValueError, match="use_unsloth: false"):
        llamafactory.check_arguments(types.SimpleNamespace(use_unsloth=True), data_args, _finetuning_args(**on))


def test_off_is_a_no_op():
    args = GaspArguments()
    model = torch.nn.Linear(2, 2)
    assert common.attach(model, args) is None and common.unfreeze_heads(None) == 0
    ds, collate = object(), object()
    assert common.interleave(ds, collate, None, None, None, args) == (ds, collate)
    assert qwen_vl_finetune.wrap_data_module({"train_dataset": ds}, None, None, None, None, args) == {"train_dataset": ds}
    assert llamafactory.interleave_data({"train_dataset": ds}, collate, None, None, None, None, None, args) == (
        {"train_dataset": ds}, collate)
    trainer_cls = type("T", (), {"__init__": lambda self, **kw: setattr(self, "kw", kw)})
    assert type(common.make_trainer(trainer_cls, None, args, a=1)) is trainer_cls


def test_train_eval_collator_dispatch():
    seen = []
    collator = common.TrainEvalCollator(train=lambda items: seen.append("train") or {}, plain=lambda items: seen.append("plain") or {})
    item = {"kind": "instruct", "sample": {}, "skipped": 0, "reasons": [], "trace": {}}
    collator([item, item])
    collator([{"input_ids": [1]}])
    assert seen == ["train", "plain"]


def test_instruction_errors_become_bad_samples():
    from gasp_plugin.data.instruct import BadSample

    class Broken:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise FileNotFoundError(f"image_{i}.jpg")

    with pytest.raises(BadSample, match="instruction sample 1: FileNotFoundError: image_1.jpg"):
        common._instruct_source(Broken())(1)


# ---- on a tiny model --------------------------------------------------------------------------


class TextSFT(torch.utils.data.Dataset):
    """An upstream-style map-style dataset: tokenised samples, labels on the answer only."""

    def __init__(self, tokenizer, n: int):
        self.items = []
        for i in range(n):
            prompt = tokenizer(f"Question {i}: how many chairs are there?")["input_ids"]
            answer = tokenizer(f" There are {i % 5} chairs.")["input_ids"]
            ids = torch.tensor(prompt + answer)
            labels = torch.tensor([-100] * len(prompt) + answer)
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


class PadCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        ids = torch.nn.utils.rnn.pad_sequence([it["input_ids"] for it in items], batch_first=True, padding_value=self.pad_id)
        labels = torch.nn.utils.rnn.pad_sequence([it["labels"] for it in items], batch_first=True, padding_value=-100)
        return {"input_ids": ids, "labels": labels, "attention_mask": (ids != self.pad_id).long()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from gasp_plugin.models.processing import load_processor
    from gasp_plugin.models.tiny import save_tiny_model

    path = save_tiny_model("qwen2_vl", tmp_path_factory.mktemp("tiny") / "qwen2-vl", image_size=112, num_layers=2)
    return path, load_processor(path)


def _load(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                            task_type="CAUSAL_LM"))


class UpstreamTrainer(Trainer):
    """Like LLaMA-Factory's CustomSeq2SeqTrainer: extra constructor arguments, own sampler hook."""

    def __init__(self, finetuning_args=None, **kwargs):
        super().__init__(**kwargs)
        self.finetuning_args = finetuning_args

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.RandomSampler(self.train_dataset)


@pytest.mark.parametrize("route", ["qwen_vl_finetune", "llamafactory"])
def test_patched_script_flow_trains_and_saves_a_plain_adapter(route, tiny, hololens_path, tmp_path):
    """The patched scripts' call sequence: arguments -> attach -> LoRA -> unfreeze -> interleave ->
    trainer -> train -> save; the adapter then loads with plain PEFT and reproduces the outputs."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import TrainingArguments

    from gasp_plugin.train.trainer import HEADS_FILE, GaspTrainerMixin

    path, processor = tiny
    options = dict(gasp_geometry_data=str(hololens_path), gasp_ratio=0.5, **SMALL)
    args = GaspArguments(**options) if route == "qwen_vl_finetune" else _finetuning_args(**options)
    model = _load(path)
    if route == "qwen_vl_finetune":  # attach, freeze everything, get_peft_model, unfreeze the heads
        handle = qwen_vl_finetune.attach(model, args)
        for p in model.parameters():
            p.requires_grad = False
        model = _lora(model)
        assert not any(p.requires_grad for p in handle.heads.parameters())
        assert qwen_vl_finetune.unfreeze_heads(handle) > 0
    else:  # LLaMA-Factory: load_model returns the PeftModel, the heads are attached to it
        model = _lora(model)
        handle = llamafactory.attach_model(model, types.SimpleNamespace(), types.SimpleNamespace(), args)
    assert all(p.requires_grad for p in handle.heads.parameters())
    heads_before = {k: v.clone() for k, v in handle.heads.state_dict().items()}

    tokenizer = processor.tokenizer
    train = TextSFT(tokenizer, 6)
    out_dir = tmp_path / "out"
    training_args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=1, per_device_train_batch_size=2,
                                      learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none",
                                      use_cpu=True, seed=3, disable_tqdm=True)
    data = {"train_dataset": train, "eval_dataset": None, "data_collator": PadCollator(tokenizer.pad_token_id)}
    if route == "qwen_vl_finetune":
        data_args = types.SimpleNamespace(min_pixels=None, max_pixels=112 * 112)  # the script's budget flags
        data = qwen_vl_finetune.wrap_data_module(data, processor, handle, data_args, training_args, args)
        trainer = qwen_vl_finetune.trainer_class(UpstreamTrainer)(
            **qwen_vl_finetune.trainer_kwargs(handle, args), model=model, args=training_args,
            processing_class=tokenizer, **data)
    else:
        model_args = types.SimpleNamespace(image_min_pixels=None, image_max_pixels=None)
        data, collator = llamafactory.interleave_data(data, data["data_collator"], handle, processor, model_args,
                                                      types.SimpleNamespace(cutoff_len=None), training_args, args)
        data = {**data, "data_collator": collator}
        trainer = llamafactory.trainer_class(UpstreamTrainer)(
            **llamafactory.trainer_kwargs(handle, args), model=model, args=training_args, finetuning_args="kept",
            processing_class=tokenizer, **data)
    # 6 samples / batch 2 = 3 instruction steps, at ratio 0.5 -> 6 steps
    assert training_args.max_steps == 6 and not training_args.remove_unused_columns
    assert isinstance(trainer, GaspTrainerMixin) and isinstance(trainer, UpstreamTrainer)
    assert type(trainer).__name__ == "GaspUpstreamTrainer" and trainer.finetuning_args == (
        None if route == "qwen_vl_finetune" else "kept")
    assert isinstance(trainer._get_train_sampler(), torch.utils.data.SequentialSampler)
    groups = trainer.create_optimizer().param_groups
    assert groups[-1]["lr"] == pytest.approx(4 * 1e-2) and len(groups[-1]["params"]) == len(heads_before)
    assert all(g["lr"] == pytest.approx(1e-2) for g in groups[:-1])

    trainer.train()
    counters = trainer.gasp_counters
    assert counters["geometry_batches"] + counters["instruct_batches"] == 6
    assert counters["geometry_batches"] >= 1 and counters["instruct_batches"] >= 1
    logged = [h for h in trainer.state.log_history if "corr" in h]
    assert logged and all(torch.isfinite(torch.tensor([h["corr"], h["depth"]])).all() for h in logged)
    assert any(not torch.equal(heads_before[k], v) for k, v in handle.heads.state_dict().items())

    trainer.save_model(str(out_dir))
    heads = load_file(str(out_dir / HEADS_FILE))
    assert set(heads) == set(handle.heads.state_dict())
    adapter = load_file(str(out_dir / "adapter_model.safetensors"))
    assert adapter and not any("gasp" in k for k in adapter) and any("lora_A" in k for k in adapter)

    ids = torch.tensor([tokenizer("How many chairs?")["input_ids"]])
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        plain = PeftModel.from_pretrained(_load(path), str(out_dir)).eval()  # no gasp code involved
        torch.testing.assert_close(plain(input_ids=ids).logits, expected)
