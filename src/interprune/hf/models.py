"""Hugging Face models: loading configs, model classes, building, loading, saving, detectors,
classification heads, parameter counts and fingerprints.

Everything that knows how transformers stores and restores a model lives here, so the rest of
interprune (the shrink, training, sweeps) works with model objects and one-line errors. Loading turns
every way a source can be broken (missing, truncated, unreachable) into an ``InterpruneError`` before
any long work starts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForObjectDetection, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as transformers_logging

from ..errors import InterpruneError, first_line
from .config import without_storage
from .processors import copy_processor_files, load_processor

# interprune loads and saves many small models in one run (sources, starts, fine-tuned runs, pictures); the
# per-load bars of transformers ("Loading weights", "Writing model shards") would bury our own progress lines,
# so they are off. Hub downloads keep their bars: those take long enough to be worth watching.
transformers_logging.disable_progress_bar()
try:
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    if are_progress_bars_disabled() and not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        enable_progress_bars()
except ImportError:  # an older huggingface_hub: leave its bars as they are
    pass

__all__ = ["class_names", "load_config", "fingerprint", "model_class", "build_model", "load_model", "save", "check_writable",
           "is_detector", "check_detector", "load_for_inference", "load_detector", "head_tensors", "recreate_head", "count_parameters"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HEAD_SEED_OFFSET = 7919



def class_names(config: Any) -> list[str | None]:
    """The model's class names in class order (``None`` where ``id2label`` names none)."""
    return [config.id2label.get(i) for i in range(config.num_labels)]

def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights once), the number people quote for a model's size."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look before asking the Hub: without network, transformers retries for ~30 s.

    It asks through ``huggingface_hub``'s own HTTP session, the one downloads will use, so what it sees is what
    they will see: ``HF_ENDPOINT`` (a mirror), the ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` variables and
    ``HF_HUB_OFFLINE`` all count. Any HTTP answer, even an error status, means the endpoint is there."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if _offline():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # httpx's connect, proxy and timeout errors, and OfflineModeIsEnabled: all say "not reachable"
        return False


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub read it at import, or as set since."""
    from huggingface_hub import constants

    later = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or later.upper() in ("1", "ON", "YES", "TRUE")


def _hub_where() -> str:
    """Which Hub was tried, and why not, in words for an error line."""
    from huggingface_hub import constants

    if _offline():
        return "the Hugging Face Hub (HF_HUB_OFFLINE is set)"
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                          "all_proxy") if os.environ.get(v)), None)
    if proxy and "@" in proxy:  # never print a proxy's user name and password
        proxy = proxy[:proxy.find("://") + 3] + proxy.rsplit("@", 1)[1] if "://" in proxy else proxy.rsplit("@", 1)[1]
    return f"the Hugging Face Hub at {constants.ENDPOINT}" + (f" (through the proxy {proxy})" if proxy else "")


def load_config(source: str | os.PathLike) -> PretrainedConfig:
    """The source's config, with a one-line error when the source does not exist or cannot be reached."""
    folder = Path(source)
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise InterpruneError(f"{source} has no config.json; give a model folder written by save_pretrained "
                                  f"or 'interprune shrink'")
        try:
            return AutoConfig.from_pretrained(str(source))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise InterpruneError(f"cannot read {folder / 'config.json'}: {first_line(err)}") from None
    try:  # a Hub id already in the local cache needs no network
        return AutoConfig.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise InterpruneError(
            f"cannot load model {str(source)!r}: it is not a local folder and {_hub_where()} cannot be reached; "
            f"check the path, or download the model where there is network")
    try:
        return AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError):
        raise InterpruneError(
            f"cannot load model {str(source)!r}: it is neither a folder with a config.json nor a Hugging Face "
            f"Hub id that can be reached; check the path or the name (Hub ids need network access)"
        ) from None


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class the source was saved as (``architectures``), else the Auto class for its type."""
    for name in config.architectures or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for auto in (transformers.AutoModelForObjectDetection, transformers.AutoModel):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise InterpruneError(f"transformers has no model class for config type {type(config).__name__}")


def build_model(config: PretrainedConfig, seed: int = 0, *, meta: bool = False,
                initialise: bool = True) -> PreTrainedModel:
    """A freshly initialised float32 model for ``config``; the seed makes its initial values reproducible.
    ``meta=True`` builds shapes only (no memory, no initialisation): enough for a plan. ``initialise=False``
    builds a model that runs without its initial values: every parameter is a zero that takes no memory
    (``_zero_parameters``), buffers are real."""
    torch.manual_seed(seed)
    try:
        if meta:
            with torch.device("meta"):
                model = model_class(config)(config)
        elif not initialise:
            from transformers.initialization import no_init_weights

            with no_init_weights():
                model = model_class(config)(config).float()
            _zero_parameters(model)
        else:  # float32 throughout: built from a half-precision config, timm backbones come out mixed
            model = model_class(config)(config).float()
    except InterpruneError:
        raise
    except Exception as err:
        raise InterpruneError(f"the target configuration cannot be built: {_build_error(err)}; change the --set "
                              f"values") from None
    return model.eval()


def _zero_parameters(model: torch.nn.Module) -> None:
    """Every parameter becomes one zero expanded to its shape (stride 0): the model runs (a dummy forward to
    check a target), but its parameters hold no memory and the untouched pages of the empty tensors they
    replace are freed unread. Zeroing them in place wrote every page: DETR-R50's target, 113 MB."""
    for module in model.modules():
        for name, value in module._parameters.items():
            if value is not None:
                zero = torch.zeros((), dtype=value.dtype).expand(value.shape)
                module._parameters[name] = torch.nn.Parameter(zero, requires_grad=False)


def _build_error(err: BaseException) -> str:
    """transformers' reason, said in a line; a weight tie that finds no layers to tie (D-FINE's box heads
    with one decoder layer) would otherwise be a 300-character cut of a list of tensor names."""
    text = first_line(err)
    tie = re.search(r"tie_weights_keys` for (\S+?):(\S+?)\. ", text)
    if tie:
        return (f"transformers ties {tie.group(1)} to the layers matching {tie.group(2)} and this target has none "
                f"of them; too few layers for this family (keep at least two)")
    return text


def load_model(source: str | os.PathLike, config: PretrainedConfig | None = None,
               dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a pretrained model with the class it was saved as, in the dtype it was saved in (or ``dtype``)."""
    config = config or load_config(source)
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise InterpruneError(f"{source} has a config.json but no weights (model.safetensors); copy the weights "
                              f"into it or give another source")
    extra = {"dtype": dtype} if dtype is not None else {}
    return _from_pretrained(model_class(config), source, **extra).eval()


def _from_pretrained(cls: type[PreTrainedModel], source: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """``cls.from_pretrained`` with damaged weights as one line: safetensors and torch raise many types for
    truncated or foreign files, and every load (source, fine-tuning start, teacher) must say the same."""
    try:
        return cls.from_pretrained(str(source), **kwargs)
    except InterpruneError:
        raise
    except Exception as err:
        raise InterpruneError(f"cannot read the weights of {source}: {first_line(err)}; the file is truncated "
                              f"or not a model file: save or download it again") from None


def save(
    model: PreTrainedModel,
    out: str | os.PathLike,
    *,
    report: Any = None,
    source: str | os.PathLike | None = None,
    processor: Any = None,
    overwrite: bool = False,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write ``out`` atomically: a temporary sibling folder that is renamed only once complete.

    Besides ``config.json`` and ``model.safetensors``, it gets ``interprune.json`` (the report) and
    the source's processor files (or ``processor`` itself), so processor settings travel with the weights.
    """
    from ..atomic import atomic_folder

    out = Path(out)
    check_writable(out)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        if report is not None:
            (tmp / "interprune.json").write_text(json.dumps(report.to_dict(), indent=1))
        if source is not None:
            copy_processor_files(source, tmp)
        if processor is not None:  # the processor actually used (its settings may differ from the source's)
            processor.save_pretrained(tmp)
    return out


def fingerprint(folder: str | os.PathLike) -> str | None:
    """A digest of what a saved model folder computes: its config as its class reads it (defaults filled
    in, paths and versions left out) and every tensor's name, dtype, shape and bytes. Two folders with the
    same fingerprint hold the same model bit for bit, so a sweep trains it once (``area`` and ``avg-pool``
    give identical tensors at a factor of 2; ``transfer`` reproduces the source). ``None`` for anything that
    is not a local folder of safetensors files (a Hub id): those are simply never matched."""
    from hashlib import sha256

    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not folder.is_dir() or not files:
        return None
    digest = sha256()
    config = without_storage(AutoConfig.from_pretrained(str(folder)).to_dict())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for name in sorted(handle.keys()):
                tensor = handle.get_tensor(name).contiguous()
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_writable(out: str | os.PathLike) -> None:
    """Refuse an output folder that cannot be written before any work (read-only place, under a file)."""
    out = Path(out).absolute()
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InterpruneError(f"cannot write {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InterpruneError(f"cannot write {out}: {parent} is not writable; choose another --out")


def is_detector(config: PretrainedConfig) -> bool:
    """Whether transformers has an object-detection model for this config (DETR family, YOLOS, ...)."""
    return type(config) in AutoModelForObjectDetection._model_mapping


def check_detector(config: PretrainedConfig, source: str, role: str = "") -> None:
    """Refuse a model that is not a detector before any work; ``role`` names the option (``--teacher ``)."""
    if not is_detector(config):
        raise InterpruneError(
            f"{role}{source} is a {config.model_type} model, not an object-detection model; give a DETR-family "
            f"model (e.g. a folder written by 'interprune shrink facebook/detr-resnet-50 ...')"
        )


def load_for_inference(source: str | os.PathLike) -> tuple[PretrainedConfig, Any, Any]:
    """Config, image processor and detector (float32, eval mode) of a saved detection model."""
    config = load_config(source)
    check_detector(config, str(source))
    detector = load_model(source, config, dtype=torch.float32)
    return config, load_processor(source, config), detector


def head_tensors(config: PretrainedConfig) -> list[str]:
    """The tensors whose shape follows the number of classes: the classification head(s), found by
    building the model's shapes (no memory) for one more class, whatever the heads are called
    (DETR's ``class_labels_classifier``, Deformable DETR's ``class_embed.N``, a YOLOS MLP's last layer)."""
    one_more = config.__class__.from_dict({**config.to_dict(), "id2label": {i: str(i) for i in range(config.num_labels + 1)}})
    one_more.label2id = {v: k for k, v in one_more.id2label.items()}
    base = build_model(config, meta=True).state_dict()
    other = build_model(one_more, meta=True).state_dict()
    return [name for name, value in base.items() if name in other and other[name].shape != value.shape]


@torch.no_grad()
def recreate_head(model: PreTrainedModel, seed: int = 0) -> list[str]:
    """Give ``model`` a fresh classification head initialised exactly as the model itself initialises one
    (its own ``_init_weights``, focal-loss bias priors, every copy in a list of heads); returns the names."""
    names = head_tensors(model.config)
    # a stream of its own: an untrained source built with the same seed must not get its old head back
    fresh = build_model(model.config, seed + HEAD_SEED_OFFSET).state_dict()
    state = model.state_dict()
    for name in names:
        state[name].copy_(fresh[name].to(state[name].dtype))
    return names


def load_detector(source: str | os.PathLike, names: list[str], seed: int = 0,
                  config: PretrainedConfig | None = None) -> Any:
    """Load ``source`` for the dataset's classes; the classification head is re-created when the
    model's classes are not the dataset's, and every other tensor keeps its (transferred) value."""
    if config is None:
        config = load_config(source)
        check_detector(config, str(source))
    if class_names(config) == names:
        return load_model(source, config, dtype=torch.float32)  # train in fp32; --precision for mixed
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report would only announce the head we re-create
    try:
        model = _from_pretrained(
            model_class(config), source, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
            ignore_mismatched_sizes=True, dtype=torch.float32)
    finally:
        transformers_logging.set_verbosity(verbosity)
    recreate_head(model, seed)  # same-size heads were loaded with the old classes' weights: re-create them too
    return model.train(False)
