"""Plain transformers + PEFT, no gasp code: load a base model and a saved adapter and report the
adapter's effect. ``python peft_check.py BASE ADAPTER OUT_JSON``."""

import json
import sys

sys.modules["gasp_plugin"] = None  # any import of gasp code fails: the adapter must load without it

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForImageTextToText  # noqa: E402


def main(base: str, adapter: str, out: str) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    plain = AutoModelForImageTextToText.from_pretrained(base).eval()
    with torch.no_grad():
        before = plain(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter).eval()
        after = tuned(input_ids=ids).logits
    weights = load_file(f"{adapter}/adapter_model.safetensors")
    lora_b = {k: float(v.abs().max()) for k, v in weights.items() if "lora_B" in k}
    json.dump({"finite": bool(torch.isfinite(after).all()), "max_logit_change": float((after - before).abs().max()),
               "lora_b_nonzero": sum(v > 0 for v in lora_b.values()), "lora_b": len(lora_b),
               "gasp_keys": [k for k in weights if "gasp" in k]}, open(out, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])
