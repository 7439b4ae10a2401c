"""ms-swift's sft pipeline in-process (``sft_main``, what ``swift sft`` runs), for the options
the GASP plugin refuses: ``python swift_refuse.py SWIFT_SFT_ARGS...``.

``--packing`` / ``--padding_free`` need a flash-attention kernel, and ms-swift refuses both at
argument parsing when ``--attn_impl`` names none; this CPU machine has none, so that one check
(``SftArguments._check_padding_free``) is lifted here and the run goes on with SDPA attention,
through model loading, dataset encoding (and packing), to the trainer, where the plugin refuses.
Prints ``REFUSED: <message>`` and exits 3 on a ValueError; any other outcome is a failure.
"""

import sys

from swift.arguments import SftArguments
from swift.pipelines import sft_main

SftArguments._check_padding_free = lambda self: None

if __name__ == "__main__":
    try:
        sft_main(sys.argv[1:])
    except ValueError as err:
        print(f"REFUSED: {err}")
        sys.exit(3)
    print("TRAINED")
