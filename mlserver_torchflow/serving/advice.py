"""One log line at load for each MLServer default that hurts this model, and for a skipped warm-up.

MLServer's defaults suit CPU models in a sandbox, not a GPU model in a pod: `debug: true` logs at DEBUG and,
with `parallel_workers: 0`, returns Python tracebacks as the body of a 500; `parallel_workers: 1` runs the
model in a spawned worker process that holds its own copy (on a GPU, its own copy in device memory) and
pickles every request across. The runtime cannot change them; it says what they cost and what to set.
"""

from __future__ import annotations

import torch

from ..common import logger
from ..patches.internals import in_mlserver_worker, mlserver_debug


def advise(model: str, devices: list[torch.device], warmup: bool, warmed: bool) -> list[str]:
    """Log each piece of advice that applies, as a warning, and return them. `warmed`: whether any
    warm-up pass ran (the input example, or compile's batch sizes)."""
    lines = []
    if mlserver_debug():
        lines.append(
            f"model {model}: MLServer runs with debug: true, so it logs at DEBUG and, with "
            'parallel_workers 0, a 500\'s body carries a Python traceback. Set "debug": false in '
            "settings.json (or MLSERVER_DEBUG=false)."
        )
    if in_mlserver_worker() and any(d.type == "cuda" for d in devices):
        lines.append(
            f"model {model}: runs in an MLServer parallel worker on {', '.join(map(str, devices))}: each "
            "worker holds its own copy of the model in device memory and every request is pickled across "
            'processes. Set "parallel_workers": 0 in settings.json (or MLSERVER_PARALLEL_WORKERS=0); '
            "for several GPUs use the devices setting."
        )
    if warmup and not warmed:
        lines.append(
            f"model {model}: warm-up skipped: the model folder holds no input example "
            "(input_example.json). MLflow writes none for a model saved with a tuple of inputs; save "
            "with input_example= (one array, or a dict by input name) to warm up before ready."
        )
    for line in lines:
        logger.warning(line)
    if not warmup:  # the user's own choice: said once, not as a warning
        logger.info("model %s: warm-up skipped (warmup: false): the first requests pay for it", model)
    return lines
