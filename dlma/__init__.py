"""DLMA: Direct Large Model Alignment through self-rewarding contrastive prompt distillation
(Liu et al., ACL 2024), offline on an embedded model. One module per stage of the method:

    prompts    contrastive prompt pairs (p+, p-) and their renderings
    data       one loader for HH-RLHF, PKU-SafeRLHF, TRL and query-only rows
    generate   o1 ~ pi(.|p+,q), o2 ~ pi(.|p-,q), resumable
    score      the self-rewarding score R
    preference preference accuracy against human labels (dlma, rlaif, loglik, random, implicit)
    study      the prompt-pair study: candidates selected on a slice, confirmed on the rest
    trainer    DLMATrainer: TRL's DPO with the clamped self-reward as a per-pair margin
    train      the hold-out split and QLoRA training with DLMATrainer
    alignment  base vs trained: refusals, contrastive score, perplexity
    baselines  the methods the paper compares with, on one budget, judged
    folder     the run-folder helper every stage writes through; `commands` lists the stages
    layout     a run folder's layout (`Run`): each stage's folder and the files later stages read

Imports sit at the top of each module, but for the heavy libraries (transformers, peft, trl, datasets,
accelerate, scipy, matplotlib, papermill, nbformat), imported in the functions that use them: `dlma --help`,
a command's checks of its input and the light modules (commands, params, data, artifacts) load in a fraction of
a second, before any of them. A deferred import of a module of the package says why where it is.
"""

import os

from .commands import run_stage
from .layout import Run as Run  # the notebooks read their run folder through dlma.Run
from .quiet import quiet_libraries, quiet_transformers

__version__ = "0.1.0"
# Whether HF_HUB_OFFLINE was set by `setup` (for the libraries in a notebook) rather than by the user: only the
# user's setting stops a dataset's file from being downloaded (dlma.selection).
OFFLINE_BY_SETUP = False
quiet_libraries()  # before torch, bitsandbytes or transformers are imported by any module of the package


def setup(seed: int = 0) -> None:
    """One line for notebooks: seeds, quiet logs, and a consistent plot style."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    global OFFLINE_BY_SETUP
    if "HF_HUB_OFFLINE" not in os.environ:
        os.environ["HF_HUB_OFFLINE"], OFFLINE_BY_SETUP = "1", True
    import matplotlib.pyplot as plt
    from transformers import set_seed


    quiet_transformers()
    plt.rcParams.update({"figure.dpi": 110, "figure.figsize": (7, 3.6), "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    set_seed(seed)


def stage(name: str, parameters: dict):
    """A notebook's one call: `dlma.stage("01_generate", globals())` parses the parameters the notebook declares
    as the CLI parses them and runs its stage in `run_dir` (see dlma.commands)."""
    return run_stage(name, parameters)
