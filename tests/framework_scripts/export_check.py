"""Plain transformers + PEFT, no gasp code: the exported checkpoint against the adapter on its base.

``python export_check.py EXPORT BASE ADAPTER REFERENCE_PT OUT_JSON``: logits of the export, of the
base with the adapter (PEFT, not merged) and of the bare base on the trained run's reference batch
(``reference_outputs.pt``: inputs and the trained model's logits)."""

import json
import sys

sys.modules["gasp_plugin"] = None  # any import of gasp code fails: the export must load without it

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoTokenizer  # noqa: E402


def main(export: str, base: str, adapter: str, reference: str, out: str) -> None:
    ref = torch.load(reference)
    inputs = ref["inputs"]
    with torch.no_grad():
        exported = AutoModelForImageTextToText.from_pretrained(export, local_files_only=True).eval()
        merged = exported(**inputs).logits.float()
        peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter).eval()
        adapted = peft(**inputs).logits.float()
        bare = AutoModelForImageTextToText.from_pretrained(base).eval()(**inputs).logits.float()
    tokenizer = AutoTokenizer.from_pretrained(export, local_files_only=True)
    json.dump({"export_vs_adapter": float((merged - adapted).abs().max()),
               "export_vs_trained": float((merged - ref["logits"]).abs().max()),
               "export_vs_base": float((merged - bare).abs().max()),
               "export_class": type(exported).__name__,
               "param_names_with_gasp": [n for n, _ in exported.named_parameters() if "gasp" in n],
               "chat_template": bool(tokenizer.chat_template)}, open(out, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])
