"""The experiment schema: every section and key a config may hold, its type, range and default, and
the one-line messages for a config that breaks them (unknown keys with a close match, wrong types,
missing keys). Validation runs before any data is read or any training starts; config.py loads
recipes and files and applies overrides onto this schema."""
from __future__ import annotations

import difflib
import importlib.metadata
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cifarlab.errors import UserError, short

# The registries are torch-free (their entries import torch when they build), so checking names is cheap.
from cifarlab.registry import DATASETS, OPTIMIZERS, SCHEDULES, Registry


def _registered(registry: Registry) -> AfterValidator:
    """A name that must be in `registry` when the config is validated (so entries added later count)."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(registry.unknown(name))
        return name
    return AfterValidator(check)


# Upper bounds of the numbers a user gives: far beyond any sane run, low enough that nothing downstream
# (torch, numpy, the OS) crashes, hangs or allocates without end on them. One place, so every path in
# (YAML, --set, flags, study spaces) is checked the same way.
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_THREADS = 256  # torch.set_num_threads(100000) segfaults
MAX_EPOCHS = 100_000
MAX_BATCH = 2**20
MAX_IMAGES = 10**9


class _Section(BaseModel):
    # extra="forbid": a misspelt key must fail loudly, not be silently ignored.
    # allow_inf_nan=False: no float option is meaningful at nan or infinity (lr: inf passed gt=0).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name: str = Field("tutorial_cnn", max_length=100)
    options: dict[str, Any] = Field(default_factory=dict)


class ColorJitterConfig(_Section):
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=10)
    saturation: float = Field(0.0, ge=0, le=10)
    hue: float = Field(0.0, ge=0, le=0.5)


class ProgressiveResizeConfig(_Section):
    """Train on downscaled images early, full size by the end (fastai's progressive resizing)."""
    start_size: int = Field(ge=4, le=4096, description="side in pixels the training images are shrunk to at the start")
    full_at: float = Field(0.5, gt=0, le=1, description="fraction of training (of the time limit, if set; else of the "
                                                         "epochs) from which images keep their full size")


class AugmentConfig(_Section):
    crop_padding: int = Field(0, ge=0, le=32, description="random crop after zero-padding by this many pixels; 0 = off")
    flip: Literal[False, True, "alternate"] = Field(
        False, description="random horizontal flip with probability 0.5; alternate: each image mirrored every other "
                           "epoch, its first-epoch choice drawn from train.seed (airbench)")
    autoaugment: bool = Field(False, description="AutoAugment with the CIFAR-10 policy")
    color_jitter: ColorJitterConfig | None = None
    rotation: float = Field(0.0, ge=0, le=180, description="random rotation within +-degrees")
    cutout: int = Field(0, ge=0, le=1024, description="zero a random square of this side; 0 = off")
    concat_original: bool = Field(False, description="each epoch sees every original image and an augmented copy")
    crop_mode: Literal["zeros", "reflect"] = Field(
        "zeros", description="how the random crop pads: zeros (black border) or reflect (a translation, as airbench)")
    progressive_resize: ProgressiveResizeConfig | None = Field(
        None, description="training images downscaled early, growing linearly to full size; needs a model that "
                          "pools adaptively (speedrun_net, resnet); validation and test always see full size")

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.autoaugment or self.color_jitter or self.rotation or self.cutout)


class MixConfig(_Section):
    """Mixup / CutMix on each training batch (timm's names); both alphas 0 = off."""
    mixup_alpha: float = Field(0.0, ge=0, description="Mixup's Beta(alpha, alpha); 0 = no Mixup")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix's Beta(alpha, alpha); 0 = no CutMix")
    prob: float = Field(1.0, ge=0, le=1, description="chance that a batch is mixed at all")
    switch_prob: float = Field(0.5, ge=0, le=1, description="with both alphas > 0: chance of CutMix rather than Mixup")


class DataConfig(_Section):
    dataset: str = Field("sample", max_length=4096, description=DATASETS.listing(" | "))
    val_size: float = Field(0.1, gt=0, le=MAX_IMAGES, description="validation images carved from train: a count, or a fraction < 1")
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    train_limit: int | None = Field(None, ge=1, le=MAX_IMAGES, description="train on a stratified subset of this many images")
    image_size: int | None = Field(None, ge=4, le=1024, description="fit each image to this square size as it is read "
                                   "(shorter side resized, centre cropped): folders of photos of any size and shape; "
                                   "default: the dataset's own size, one square size for all")
    normalize: Literal["none", "half", "dataset"] | list[list[float]] = Field(
        "dataset", description="none, half (0.5/0.5), dataset (its mean/std), or [[means], [stds]]")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    mix: MixConfig = Field(default_factory=MixConfig)

    @field_validator("normalize")
    @classmethod
    def _two_lists(cls, v):
        if isinstance(v, list):
            if len(v) != 2 or len(v[0]) != len(v[1]) or not 1 <= len(v[0]) <= 4 or any(s <= 0 for s in v[1]):
                raise ValueError("give [[mean per channel], [std per channel]] with positive stds")
        return v


class OptimizerConfig(_Section):
    name: Annotated[str, _registered(OPTIMIZERS)] = Field("sgd", description=OPTIMIZERS.listing(" | "))
    lr: float = Field(0.01, gt=0, le=1e10)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and RMSprop only")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, le=100)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1)
    alpha: float = Field(0.99, gt=0, lt=1, description="RMSprop smoothing constant")
    no_decay_norm_and_bias: bool = Field(False, description="no weight decay on biases and normalisation weights")
    norm_bias_lr_mult: float = Field(1.0, gt=0, description="normalisation biases learn at lr times this (airbench: 64)")
    reference_batch_size: int | None = Field(
        None, ge=1, description="the LRs are stated for this many images per step and scale linearly with the real one")
    muon_aux: Literal["sgd", "adamw"] = Field("sgd", description="muon: the optimizer of biases, norms and the head")
    muon_lr: float | None = Field(None, gt=0, description="muon: the LR of the matrices; default: lr")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="muon: momentum of the matrices (Nesterov)")
    muon_fixed_norm: bool = Field(
        False, description="muon: rescale each matrix to norm sqrt(rows) before every step, in place of weight decay "
                           "on it (airbench94_muon; for nets with a normalisation after every matrix)")
    muon_ns_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="muon: the precision of its orthogonalisation; auto: bf16 (torch's) on a GPU or a CPU "
                            "with native bf16, fp32 where bf16 is emulated (25x faster there)")


class ScheduleConfig(_Section):
    name: Annotated[str, _registered(SCHEDULES)] = Field("constant", description=SCHEDULES.listing(" | "))
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS, description="linear warm-up from 0 to lr over this many epochs")
    step_size: int = Field(30, ge=1, le=MAX_EPOCHS, description="step: multiply by gamma every step_size epochs")
    gamma: float = Field(0.1, gt=0, le=100)
    milestones: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        default_factory=list, max_length=1000, description="multistep: epochs at which lr *= gamma")
    min_lr: float = Field(0.0, ge=0, le=1000, description="cosine: the lr reached at the end")
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle, triangle: fraction of training spent rising")
    start_factor: float = Field(0.2, ge=0, le=1, description="triangle: the LR at the start, as a fraction of lr")
    end_factor: float = Field(0.07, ge=0, le=1, description="triangle: the LR at the end, as a fraction of lr")
    fit_time_limit: bool = Field(False, description="progress = training time spent / train.time_limit_minutes, so the "
                                                    "schedule ends at the budget (not bit-reproducible: depends on speed)")


class EMAConfig(_Section):
    decay: float = Field(0.999, gt=0, lt=1, description="weight of the old average at each update")
    warmup: bool = Field(True, description="a smaller decay early on, rising to `decay` (TF's num_updates)")
    every: int = Field(1, ge=1, description="update every this many optimizer steps (with decay**every)")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    eval_batch_size: int = Field(1000, ge=1, le=MAX_BATCH)
    val_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="validate after every Nth epoch and the last one "
                           "(Lightning's check_val_every_n_epoch); best.pt is chosen among the validated epochs")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    time_limit_minutes: float | None = Field(None, gt=0, le=10**7, description="stop when this much training time is spent")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="stop after this many epochs without a better val accuracy")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: each class's images weighted n / (classes x its count in the training split) "
                            "in the loss, so a rare class counts as much as a common one (sklearn's 'balanced')")
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="clip the gradient norm to this value")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the hardware runs it fast (CUDA, AVX-512-BF16/AMX CPUs), else fp32")
    channels_last: bool = True
    tta_flip: bool = Field(False, description="evaluate on each image and its mirror image, averaging the logits")
    tta_level: Literal[0, 1, 2] | None = Field(
        None, description="test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-pixel shifts; default: 1 if tta_flip")
    ema: EMAConfig | None = Field(None, description="evaluate and keep an exponential moving average of the weights")
    accumulate_steps: int = Field(1, ge=1, description="micro-batches of batch_size per optimizer step")
    compile: bool = False
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS, description="CPU threads for torch; default: all cores")

    @property
    def tta(self) -> int:
        """The TTA level in force: tta_level if given, else 1 for tta_flip (the older key), else 0."""
        return self.tta_level if self.tta_level is not None else int(self.tta_flip)


# The schemes MLflow has a tracking store for (mlflow 3); a database's may name a driver (postgresql+psycopg2).
MLFLOW_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def _plugin_schemes() -> set[str]:
    # an MLflow plugin package registers its tracking store's scheme under this entry-point group
    return {e.name.lower() for e in importlib.metadata.entry_points(group="mlflow.tracking_store")}


def check_tracking_uri(uri: str | None) -> str | None:
    """An MLflow tracking URI whose scheme MLflow can store to (a plain path is a file store), else ValueError:
    an unknown scheme would otherwise surface as a warning after the first epoch, with tracking off."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if uri and "://" in uri else ""
    if scheme and scheme not in MLFLOW_SCHEMES and scheme not in _plugin_schemes():
        raise ValueError(f"MLflow has no tracking store for '{short(scheme, 40, plain=True)}://' URIs: use "
                         "http(s)://HOST:PORT, file:///PATH, sqlite:///FILE, postgresql://..., mysql://... or a folder")
    return uri


class TrackConfig(_Section):
    """Experiment tracking outside the run directory (which stays the record either way)."""
    mlflow: Annotated[str | None, AfterValidator(check_tracking_uri)] = Field(
        None, description="an MLflow tracking URI (http://HOST:PORT, file:///PATH, sqlite:///...); "
                          "default: $MLFLOW_TRACKING_URI if set, else off")
    experiment: str | None = Field(None, description="the MLflow experiment (default: the config's name)")
    log_checkpoints: bool = Field(False, description="also upload best.pt and last.pt as artifacts")


class ReportedFigure(_Section):
    """What the seed report that a recipe reproduces said it reached (metadata only)."""
    accuracy: float | None = None
    epochs: int | None = None
    split: Literal["test", "validation"] = "test"  # where the figure was measured (the seeds: on test)
    source: str = ""
    note: str = ""


class ExperimentConfig(_Section):
    name: str = Field("run", max_length=200)
    description: str = Field("", max_length=10_000)
    reported: ReportedFigure | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)

    @model_validator(mode="after")
    def _val_size_is_count_or_fraction(self):
        v = self.data.val_size
        if v >= 1 and v != int(v):
            raise ValueError("data.val_size must be a whole count (e.g. 5000) or a fraction below 1 (e.g. 0.1)")
        return self

    @model_validator(mode="after")
    def _consistent_fast_options(self):
        t = self.train
        if t.tta_flip and t.tta_level == 0:
            raise ValueError("train.tta_flip: true asks for mirror TTA but train.tta_level is 0: set only one of them")
        if self.schedule.fit_time_limit and not t.time_limit_minutes:
            raise ValueError("schedule.fit_time_limit needs train.time_limit_minutes (the budget the schedule ends at)")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _sections_of(annotation) -> list[type[BaseModel]]:
    """The sections (model classes) a field's annotation holds: `EMAConfig | None` -> [EMAConfig]; a value: []."""
    return [a for a in get_args(annotation) or (annotation,) if isinstance(a, type) and issubclass(a, BaseModel)]


def type_text(annotation) -> str:
    """A key's type as a user writes it: `none | balanced`, `int | null`, `list of int`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(a if isinstance(a, str) else yaml.safe_dump(a).split("\n")[0] for a in args)
    if origin is Annotated:
        return type_text(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in args if a is not type(None)) + (" | null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_text(args[0])}" if args else "list"
    return "mapping" if origin is dict else getattr(annotation, "__name__", str(annotation))


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[dict]:
    """Every settable key, in schema order: {"key", "type", "default", "description"} (a section's own
    keys follow it; a section that is off by default, such as train.ema, lists its keys as well)."""
    out = []
    for name, field in (model or ExperimentConfig).model_fields.items():
        key, sections = prefix + name, _sections_of(field.annotation)
        if sections:
            out += config_keys(sections[0], key + ".")
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        out.append({"key": key, "type": type_text(field.annotation), "description": field.description or "",
                    "required": field.is_required(), "default": list(default) if isinstance(default, tuple) else default})
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for sub in _sections_of(field.annotation):
            keys += _known_keys(sub, prefix + name + ".")
    return keys


def section_class(dotted: str) -> type[BaseModel] | None:
    """The section (a model class) that the config key `dotted` holds, or None where it holds a value."""
    model: type[BaseModel] | None = ExperimentConfig
    for part in dotted.split("."):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = next(iter(_sections_of(field.annotation)), None)
    return model


def not_a_mapping(dotted: str, value: Any) -> str:
    """The one-line message for a section (or model.options) that holds something other than a mapping."""
    leaf = dotted.rsplit(".", 1)[-1]
    section = section_class(dotted)
    if section is not None:
        keys = list(section.model_fields)
        what = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
        return (f"config key '{dotted}' must be a section, a mapping of its keys ({what}), got {short(value)}: "
                f"write those keys as indented 'key: value' lines under '{leaf}:' (the recipe files show the layout)")
    return (f"config key '{dotted}' must be a mapping of 'key: value' pairs, got {short(value)}: write them as "
            f"indented lines under '{leaf}:' or as {{key: value, ...}}")


def _explain(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, _known_keys(ExperimentConfig), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (`cifarlab keys` lists them)"
        return f"unknown config key '{where}'{hint}"
    if e["type"] in ("model_type", "dict_type", "model_attributes_type") and where:
        return not_a_mapping(where[:120], e.get("input"))
    if e["type"] == "missing" and where:
        above = where.rsplit(".", 1)[0] if "." in where else ""
        given = f" when '{above}' is given" if above else ""
        return (f"config key '{where[:120]}': Field required{given}: add it (in the config file, or "
                f"--set {where[:120]}=VALUE)")
    got = e.get("input")
    msg = e["msg"].removeprefix("Value error, ")
    said = isinstance(got, str) and repr(got) in msg  # e.g. "unknown optimizer 'adm'": once is enough
    got_s = "" if isinstance(got, dict) or said else f" (got {short(got)})"
    return f"config key '{where[:120]}': {short(msg, 300, plain=True)}{got_s}" if where else f"config: {short(msg, 300, plain=True)}"


def validate_config(raw: Any) -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a YAML mapping of sections (model, data, train, ...), got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_explain(err)) from None
