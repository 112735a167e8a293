"""Library noise, filtered at its source, and the one switch for progress output.

The libraries under `dlma` print things a user can do nothing about: bitsandbytes logs a warning at import
on CPUs with AVX-512 BF16 (an optional kernel package is missing), transformers and TRL warn that
`gradient_checkpointing` will be renamed, torch warns that `pin_memory` needs an accelerator, tqdm warns
that ipywidgets is missing in a notebook. Each is silenced here by its logger's level or by a warnings filter
on its exact message, never by redirecting stderr: anything else a library says still reaches the user.

`progress()` says whether to draw progress bars and print timings. `dlma run` turns both off in the
notebooks it executes (`DLMA_PROGRESS=0`), so an executed notebook holds results only, and reruns of the
same seed publish the same bytes. Under a launch only the main process draws them (and the CLI prints its
summary there alone).
"""

from __future__ import annotations

import builtins
import logging
import os
import warnings

from .distributed import rank

# (category name, message regex): warnings about library internals, not about the user's run.
KNOWN_WARNINGS = (
    ("FutureWarning", r"`(is_)?gradient_checkpointing(_enable|_disable|_kwargs)?` is deprecated"),
    ("UserWarning", r"'pin_memory' argument is set as true but no accelerator is found"),
    ("Warning", r"IProgress not found"),  # tqdm.auto in a kernel without ipywidgets (TqdmWarning)
)
# Loggers whose warnings are about optional speed-ups the user did not ask for.
QUIET_LOGGERS = {"bitsandbytes": logging.ERROR}


def quiet_libraries() -> None:
    """Install the filters (cheap, imports nothing; idempotent). Called when `dlma` is imported."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=getattr(builtins, category))
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def quiet_transformers() -> None:
    """transformers' and datasets' own bars and advisory logs (weights loading, TRL's tokenising passes)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from datasets.utils import logging as ds_logging

        ds_logging.disable_progress_bar()
        ds_logging.set_verbosity_error()
    except ImportError:  # datasets is only needed for training
        pass


def progress() -> bool:
    """Draw progress bars and print timings? Off when DLMA_PROGRESS=0 (set by `dlma run` for its notebooks),
    and on all but the main process of a launch (one bar per launch, not one per GPU)."""
    return os.environ.get("DLMA_PROGRESS", "1") != "0" and rank() == 0
