"""DLMA: Direct Large Model Alignment through self-rewarding contrastive prompt distillation
(Liu et al., ACL 2024), offline on an embedded model. One module per stage of the method:

    prompts    contrastive prompt pairs (p+, p-) and their renderings
    data       one loader for HH-RLHF, PKU-SafeRLHF, TRL and query-only rows
    generate   o1 ~ pi(.|p+,q), o2 ~ pi(.|p-,q), resumable
    score      the self-rewarding score R
    preference preference accuracy against human labels (dlma, rlaif, loglik, random, implicit)
    train      DLMATrainer: TRL's DPO with the clamped self-reward as a per-pair margin, QLoRA
    alignment  base vs trained: refusals, contrastive score, perplexity
    stages     each stage as a function writing a run folder; `cli` and `pipeline` call these
"""

from .quiet import quiet_libraries

__version__ = "0.1.0"
quiet_libraries()  # before torch, bitsandbytes or transformers are imported by any module of the package


def setup(seed: int = 0) -> None:
    """One line for notebooks: seeds, quiet logs, and a consistent plot style."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import matplotlib.pyplot as plt

    from .quiet import quiet_transformers
    from .stages import seed_everything

    quiet_transformers()
    plt.rcParams.update({"figure.dpi": 110, "figure.figsize": (7, 3.6), "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    seed_everything(seed)
