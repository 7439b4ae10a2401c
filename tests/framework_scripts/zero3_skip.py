"""One `gasp train` run per rank (torchrun, 2 processes), DeepSpeed ZeRO-3 on CPU, where rank 1's
language-model logits turn NaN at one training step; ZeRO-3 saves without a gathered state dict.

    python -m torch.distributed.run --nproc_per_node 2 zero3_skip.py DS_JSON OUT [recipe overrides...]

Each rank writes OUT/rank{r}.json with its counters; the heads are saved by the trainer.
"""

import json
import os
import sys
from pathlib import Path

from gasp_plugin.recipe import load_recipe
from gasp_plugin.train.assemble import build_run
from gasp_plugin.train.launch import setup_process

POISON_STEP = 1


def main(ds_json: str, out: str, *overrides: str) -> None:
    setup_process(deepspeed=True)
    recipe = load_recipe("tiny_cpu", [f"training.output_dir={out}", f"training.deepspeed={ds_json}", *overrides])
    run = build_run(recipe, deepspeed_json=ds_json, progress=False)
    trainer, rank = run.trainer, int(os.environ["RANK"])

    def poison(module, _args, output):
        if rank == 1 and module.training and trainer.state.global_step == POISON_STEP:
            return output * float("nan")

    trainer.model.get_output_embeddings().register_forward_hook(poison)
    trainer.train()
    trainer.save_model(out)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"counters": dict(trainer.gasp_counters),
                                                         "step": trainer.state.global_step}))
    import torch.distributed as dist

    dist.barrier()  # both ranks done before either tears down its communication threads
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
