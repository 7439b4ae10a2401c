"""Inside the ms-swift venv: what loading the GASP plugin file does to ms-swift's trainer registry.

    python swift_registry.py PLUGIN_FILE
loads the file the way ``--external_plugins`` does (``swift.utils.import_external_file``) and
prints one JSON object: the trainer classes ``TrainerFactory`` builds with GASP off and on, the
error a non-sft trainer gives with GASP on, and the import-time facts (sys.path, swift imported).
"""

import json
import os
import sys


def main(plugin: str) -> None:
    import gasp_plugin.integrations.swift  # noqa: F401  (the module alone)

    result = {"swift_imported_by_module": any(m == "swift" or m.startswith("swift.") for m in sys.modules)}
    from swift.trainers import TrainerFactory
    from swift.utils import import_external_file

    before = dict(TrainerFactory.TRAINER_MAPPING)
    import_external_file(plugin)  # puts the plugin's folder first on sys.path, then runs the file
    from gasp_plugin.integrations.swift import register

    register()  # idempotent
    folder = os.path.dirname(os.path.abspath(plugin))
    result["plugin_folder_on_sys_path"] = any(os.path.abspath(p or os.curdir) == folder for p in sys.path)
    result["mapping"] = {k: v for k, v in TrainerFactory.TRAINER_MAPPING.items()}
    result["mapping_keys_kept"] = sorted(before) == sorted(TrainerFactory.TRAINER_MAPPING)

    class Args:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    sft, dpo = Args(task_type="causal_lm"), Args(rlhf_type="dpo", task_type="causal_lm")
    os.environ.pop("GASP_GEOMETRY_DATA", None)
    result["off"] = {"sft": TrainerFactory.get_trainer_cls(sft).__qualname__,
                     "dpo": TrainerFactory.get_trainer_cls(dpo).__qualname__}
    os.environ["GASP_GEOMETRY_DATA"] = "/scenes"
    cls = TrainerFactory.get_trainer_cls(sft)
    result["on"] = {"sft": cls.__qualname__, "mro": [c.__qualname__ for c in cls.__mro__[:4]]}
    try:
        TrainerFactory.get_trainer_cls(dpo)
        result["on"]["dpo"] = "built"
    except ValueError as err:
        result["on"]["dpo"] = str(err)
    os.environ["GASP_RATIO"] = "2"
    try:
        TrainerFactory.get_trainer_cls(sft)
    except ValueError as err:
        result["bad_env"] = str(err)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
