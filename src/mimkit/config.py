"""Configuration: dataclass schema <- preset YAML <- ``key=value`` overrides.

Only the CLI and this module read configuration; everything below takes explicit,
typed arguments. The resolved config is saved in the run folder.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError

log = logging.getLogger("mimkit")


class Choice(str, Enum):
    """A config value from a fixed set. Members are named by their value and behave as
    that string everywhere (comparison, formatting, JSON); OmegaConf validates them, so
    each choice is checked in one place, with the key named in the error."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


Precision = Choice("Precision", {v: v for v in ("auto", "fp32", "bf16", "fp16")})
Pipeline = Choice(
    "Pipeline", {v: v for v in ("auto", "files", "tensor_cache", "gpu_jpeg", "shards")}
)
Pool = Choice("Pool", {v: v for v in ("cls", "avg")})
GlobalPool = Choice("GlobalPool", {v: v for v in ("avg", "token")})
ProbeOptimizer = Choice("ProbeOptimizer", {v: v for v in ("lars", "sgd")})
Network = Choice("Network", {v: v for v in ("teacher", "student")})
Schedule = Choice("Schedule", {v: v for v in ("cosine", "onecycle", "cosine_iter")})


@dataclass
class ModelConfig:
    name: str = "mae_vit_base_patch16"
    # weights to start from (evaluation, fine-tuning, detection): a mimkit, official MAE /
    # iBOT, timm or Hugging Face checkpoint; 'none' = random init (for comparison)
    checkpoint: str | None = None
    # which network of a student/teacher checkpoint (iBOT) a backbone takes
    checkpoint_network: Network = Network.teacher
    # continued pretraining: start from these weights (an official MAE / iBOT / SimMIM
    # file, a Hugging Face folder, a mimkit run or checkpoint) with a fresh optimizer and
    # schedule; what the file lacks (e.g. a decoder) is initialised as usual
    init: str | None = None
    mask_ratio: float | None = None  # null: the method's own (MAE 0.75, LoMaR 0.8, SimMIM 0.6)
    norm_pix_loss: bool = True
    drop_path: float = 0.0
    args: dict[str, Any] = field(default_factory=dict)  # extra create_model(...) overrides


@dataclass
class DataConfig:
    path: str | None = None  # folder of images (searched recursively), or root of file_list
    file_list: str | None = None  # text file of paths relative to `path` (EasyCV style)
    val_list: str | None = None  # labeled evaluation: `path label` lines for the val split
    img_size: int | None = None  # default: the model's input size
    crop_min_scale: float = 0.2
    hflip: bool = True
    batch_size: int = 64  # per process
    num_workers: int = 8
    # auto: tensor_cache for small inputs (<= 64 px) where the method allows it, shards for
    # shard data, else files | files | tensor_cache | gpu_jpeg | shards
    pipeline: Pipeline = Pipeline.auto
    cache_dir: str | None = None  # tensor cache; default ~/.cache/mimkit/tensors
    cache_size: int | None = None  # stored image size for tensor_cache; default img_size
    num_samples: int | None = None  # samples in shard URLs without a shards.json (required)
    image_key: str | None = None  # hf: image column; default: found (Image feature, bytes)
    label_key: str | None = None  # hf: label column; default: the ClassLabel column


@dataclass
class OptimConfig:
    blr: float = 1.5e-4  # lr = blr * effective batch / 256
    lr: float | None = None  # absolute lr; overrides blr when set
    min_lr: float = 0.0
    warmup_lr: float = 0.0  # lr at the start of the warm-up (a method that uses one: SimMIM)
    # scale min_lr and warmup_lr like the lr (x effective batch / the method's batch) when
    # blr sets it, as SimMIM's official code does; MAE's min_lr is absolute
    scale_min_lr: bool = False
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 40.0
    clip_grad: float | None = None
    accum_iter: int = 1
    # cosine: warmup + half-cosine (MAE) | onecycle: ConvMixer's CIFAR schedule |
    # cosine_iter: DINO/iBOT per-iteration arrays (warmup reaches the lr at its last step)
    schedule: Schedule = Schedule.cosine


@dataclass
class TrainConfig:
    epochs: int = 800
    precision: Precision = Precision.auto  # auto | fp32 | bf16 | fp16
    # written by the run, never read: what `precision` became on this machine (fp32 | bf16
    # | fp16), so config.yaml shows it next to the setting; the run's log says why
    precision_resolved: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 50  # steps between loss logs (the only host-device sync)
    save_every: int = 20  # epochs between numbered checkpoints (last is saved each epoch)
    eval_every: int = 1  # epochs between validations (fine-tune / probe); the last always
    compile: bool = False
    grad_checkpointing: bool = False  # recompute block activations in backward (large models)
    fsdp: bool = False  # shard parameters/gradients/optimizer per block (FSDP2; torchrun)
    tensorboard: bool = True  # false removes tensorboard from train.loggers (older key)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # + wandb mlflow csv
    run_name: str | None = None  # tracker run name; default: the run folder's name
    tags: list[str] = field(default_factory=list)  # W&B tags, MLflow tags
    wandb_project: str | None = None  # W&B project; default WANDB_PROJECT, else 'mimkit'
    mlflow_uri: str | None = None  # default: sqlite database in <run>/mlruns
    mlflow_experiment: str | None = None  # default MLFLOW_EXPERIMENT_NAME, else 'mimkit'
    max_steps: int | None = None  # stop early (smoke runs)
    # a wall-clock budget ('15m', '2h', '90s' or seconds): the run times its first steps
    # and sizes every schedule to end at the budget (epochs become a consequence)
    time_budget: str | None = None
    # written by the run, never read from a preset: the plan a budget became (optimizer
    # steps in all, measured s/step); a resumed run continues it
    planned_steps: int | None = None
    step_time: float | None = None
    dist_timeout_min: float = 10.0  # a collective waiting longer fails instead of hanging
    max_abs_weight: float | None = 1e4  # weights beyond count as diverged and are not saved


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # deprecated alias of model.checkpoint
    pool: Pool = Pool.cls  # cls | avg: which features kNN / probe / Q-score read
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 200])
    knn_temperature: float = 0.07
    # features of this block (0-based; -1 the last) instead of the last one's output, for
    # every frozen-feature protocol; pick it on a split of train (`mimkit blocks`)
    block: int | None = None
    # the raw-pixel floor and the random-init encoder under the same protocol, beside
    # every frozen-feature result (knn, linprobe, attnprobe): 'baselines' in metrics.json
    baselines: bool = True
    cache_dir: str | None = None  # feature cache; default ~/.cache/mimkit/features, 'none' = off
    # online kNN while pretraining (log.jsonl 'monitor' records, monitor.png), with the
    # raw-pixel and random-init floors; on in the small presets
    monitor: bool = False
    monitor_data: str | None = None  # labeled ROOT (train/ + val/ or class folders)
    monitor_holdout: float = 0.1  # else: this share of a labeled --data, never trained on
    monitor_evals: int = 5  # evenly spaced over the run (the last at its end)
    monitor_references: int = 5000  # labeled images the kNN votes with (a seeded draw)
    monitor_queries: int = 1000  # images it scores
    batch_size: int = 256  # per process, for feature extraction and validation


@dataclass
class Config:
    task: str = "pretrain"
    name: str | None = None  # run name; default: preset name
    out: str | None = None  # run folder; default: runs/<name>
    trust_checkpoint: bool = False  # load pickled objects beyond plain types (files you trust)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# The jobs register here (``recipes.registry.register`` calls ``register_job``): their
# config section and defaults. This module never imports the jobs; importing ``mimkit``
# imports them all, so every section is known before any config is read.
_JOBS: dict[str, tuple[tuple[str, type] | None, dict]] = {}
_SCHEMAS: dict[tuple, type] = {}


def register_job(name: str, section: tuple[str, type] | None, defaults: dict) -> None:
    _JOBS[name] = (section, defaults)


def job_names() -> list[str]:
    return sorted(_JOBS)


def schema() -> type:
    """``Config`` plus each registered job's section (``detect: DetectConfig``...)."""
    sections = dict(s for s, _ in _JOBS.values() if s)
    key = tuple(sorted(sections.items(), key=lambda kv: kv[0]))
    if key not in _SCHEMAS:
        fields = [(n, cls, field(default_factory=cls)) for n, cls in key]
        _SCHEMAS[key] = make_dataclass("JobConfig", fields, bases=(Config,))
    return _SCHEMAS[key]


def preset_dir():
    return resources.files("mimkit") / "configs"


def list_presets() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in preset_dir().iterdir() if p.name.endswith(".yaml")
    )


def preset_path(name: str) -> Path:
    """A packaged preset name or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"config file not found: {name}")
        return p
    candidate = preset_dir() / f"{name}.yaml"
    if not candidate.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `mimkit configs`"
        raise UserError(f"unknown preset '{name}': {hint}")
    return Path(str(candidate))


def load_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: DictConfig | dict | None = None,
    schema_cls: type | None = None,
    task: str | None = None,
    values: dict | None = None,
):
    """Resolve schema defaults <- the task's defaults (its job's) <- base (a resumed run)
    <- preset <- ``key=value`` overrides <- ``values`` ({'optim.blr': 1e-3} or nested:
    the Python API's keyword arguments). The schema is ``Config`` plus every registered
    job's section."""
    schema_cls = schema_cls or schema()
    try:
        layers = [OmegaConf.structured(schema_cls)]
        if task:
            layers.append(OmegaConf.create({"task": task, **task_defaults(task)}))
        if base is not None:
            layers.append(OmegaConf.create(base))
        if preset:
            layers.append(_load_yaml(preset_path(preset)))
        layers.append(_parse_overrides(overrides))
        if values:
            layers.append(OmegaConf.create(nest(values)))
        cfg = OmegaConf.merge(*layers)
        _refuse_env_interpolations(cfg)
        if cfg.name is None and preset:
            cfg.name = Path(preset).stem
        obj = OmegaConf.to_object(cfg)
    except ConfigKeyError as e:
        raise UserError(_unknown_key_message(e, schema_cls)) from None
    except ValidationError as e:
        raise UserError(_validation_message(e)) from None
    except OmegaConfBaseException as e:
        raise UserError(f"config error: {str(e).splitlines()[0]}") from None
    _alias_eval_checkpoint(obj)
    validate(obj)
    return obj


def task_defaults(task: str) -> dict:
    """A job's defaults, layered between the schema and the preset."""
    if task not in _JOBS:
        raise UserError(f"config key 'task' must be one of {', '.join(job_names())}, got '{task}'")
    return _JOBS[task][1]


def _refuse_env_interpolations(node, key: str = "") -> None:
    """``${oc.env:VAR}`` would be resolved into config.yaml and every checkpoint, where a
    secret (a token, a password in a URL) does not belong: refused, naming the key. Other
    interpolations (``${train.epochs}``) hold no outside value and are fine."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_env_interpolations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for v in node:
            _refuse_env_interpolations(v, key)
    elif isinstance(node, str) and re.search(r"\$\{\s*(oc\.)?env:", node):
        raise UserError(_env_message(key))


def _env_message(key: str) -> str:
    return (
        f"config key '{key}' reads an environment variable (${{oc.env:...}}): mimkit saves "
        "the resolved config in config.yaml and every checkpoint, so it would write the "
        "value there; pass the value itself, or keep secrets in the tool's own variables "
        "(WANDB_API_KEY, MLFLOW_TRACKING_URI)"
    )


def nest(values: dict) -> dict:
    """{'optim.blr': 1e-3, 'data': {'path': 'x'}} -> nested dicts for OmegaConf."""
    out: dict = {}
    for key, value in values.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(nest(value))
        else:
            node[parts[-1]] = nest(value) if isinstance(value, dict) else value
    return out


def _alias_eval_checkpoint(cfg: Config) -> None:
    if cfg.eval.checkpoint is not None:
        if cfg.model.checkpoint is None:
            cfg.model.checkpoint = cfg.eval.checkpoint
        log.warning("config key 'eval.checkpoint' is deprecated: use 'model.checkpoint'")
        cfg.eval.checkpoint = None


def _load_yaml(path: Path) -> DictConfig:
    """A preset file; a syntax error is one line with file, line and column."""
    import yaml

    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {what}") from None
    if not isinstance(cfg, DictConfig):  # a list, or a scalar, at the top
        raise UserError(f"{path}: a preset must be a mapping of keys (e.g. 'train:'), not a list")
    return cfg


def _parse_overrides(overrides) -> DictConfig:
    import yaml

    layers = []
    for item in overrides:  # one at a time, so an error names the override
        if "=" not in item or item.startswith("="):
            raise UserError(f"override '{item}' is not key=value (e.g. train.epochs=10)")
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as e:
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"override '{item}': the value is not valid YAML ({what})") from None
    return OmegaConf.merge(*layers) if layers else OmegaConf.create({})


def _unknown_key_message(e: ConfigKeyError, schema: type) -> str:
    key = e.full_key or str(e.key)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.structured(schema)
    if parent:
        node = OmegaConf.select(node, parent)
    valid = list(node.keys()) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
    return f"unknown config key '{key}' {hint}".strip() + (
        f" (valid under '{parent or 'top level'}': {', '.join(valid)})" if not close else ""
    )


def _validation_message(e: ValidationError) -> str:
    first = str(e).splitlines()[0]
    choice = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", first)
    if choice:  # an Enum key: say it like the other choice errors
        value, allowed = choice.groups()
        return f"config key '{e.full_key}' must be one of {allowed}, got '{value}'"
    return f"config key '{e.full_key}': {first}"


def validate(cfg: Config) -> None:
    """Checks OmegaConf's types cannot express; each error names the key."""
    if _JOBS and cfg.task not in _JOBS:
        raise UserError(
            f"config key 'task' must be one of {', '.join(job_names())}, got '{cfg.task}'"
        )
    if cfg.model.mask_ratio is not None and not 0.0 < cfg.model.mask_ratio < 1.0:
        raise UserError(
            f"config key 'model.mask_ratio' must be between 0 and 1 (exclusive: the loss is "
            f"taken on the masked patches), got {cfg.model.mask_ratio}"
        )
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "data.img_size": cfg.data.img_size or 1,
        "eval.batch_size": cfg.eval.batch_size,
        "optim.accum_iter": cfg.optim.accum_iter,
        "train.log_every": cfg.train.log_every,
        "train.save_every": cfg.train.save_every,
        "train.eval_every": cfg.train.eval_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"config key '{key}' must be at least 1, got {value}")
    if not cfg.train.dist_timeout_min > 0:
        raise UserError(
            f"config key 'train.dist_timeout_min' must be above 0, got {cfg.train.dist_timeout_min}"
        )
    if cfg.train.max_abs_weight is not None and not cfg.train.max_abs_weight > 0:
        raise UserError(
            f"config key 'train.max_abs_weight' must be above 0 (null turns the check off), "
            f"got {cfg.train.max_abs_weight}"
        )
    for key, value in (
        ("train.epochs", cfg.train.epochs),
        ("data.num_workers", cfg.data.num_workers),
    ):
        if value < 0:
            raise UserError(f"config key '{key}' must not be negative, got {value}")
    for key, value in (("optim.lr", cfg.optim.lr), ("optim.blr", cfg.optim.blr)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"config key '{key}' must be a finite number >= 0, got {value}")
    if any(k < 1 for k in cfg.eval.knn_k):
        raise UserError(
            f"config key 'eval.knn_k' must hold positive integers, got {cfg.eval.knn_k}"
        )
    if not 0.0 < cfg.data.crop_min_scale <= 1.0:
        raise UserError(
            f"config key 'data.crop_min_scale' must be in (0, 1], got {cfg.data.crop_min_scale}"
        )


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg) -> dict:
    """Plain dicts, lists, numbers and strings (choices as their values): safe to save in
    checkpoints that load with ``weights_only=True``."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


__all__ = ["MISSING", "Config", "load_config", "list_presets", "to_yaml", "to_dict"]
