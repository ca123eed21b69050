"""Official PTQ code bases run beside ours by tools/compare_official.py, one module per peer (how it is recognised,
imported, shimmed for current timm and run) on a shared harness (harness.py) and table writer (tables.py).

No official code is part of this project: each peer imports a checkout that whoever runs the tool fetched.
"""
from .aphq import APHQ
from .fimaq import FIMAQ
from .ptq4vit import PTQ4VIT
from .repq_isvit import ISVIT, REPQ, isvit_iters  # noqa: F401

OFFICIAL = {"repq": REPQ, "isvit": ISVIT, "ptq4vit": PTQ4VIT, "aphq": APHQ, "fimaq": FIMAQ}
# Our recipe that each official code base is compared with (`--ours METHOD=RECIPE` replaces it).
OURS = {method: code.ours for method, code in OFFICIAL.items()}
# Official options that have the same knob in our recipe's passes (given to both sides): option -> pass field.
OURS_KNOBS = {"iters": "iters", "batch": "batch_size"}
