"""Configuration: dataclass schema <- preset YAML <- ``key=value`` overrides.

Only the CLI and this module read configuration; everything below takes explicit,
typed arguments. The resolved config is saved in the run folder.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "mae_vit_base_patch16"
    mask_ratio: float = 0.75
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
    pipeline: str = "files"  # files | tensor_cache | gpu_jpeg | shards (pretraining)
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
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 40.0
    clip_grad: float | None = None
    accum_iter: int = 1
    schedule: str = "cosine"  # cosine: warmup + half-cosine | onecycle: ConvMixer's CIFAR schedule


@dataclass
class TrainConfig:
    epochs: int = 800
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
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
    wandb_project: str = "mimkit"  # W&B project (WANDB_MODE=offline is respected)
    mlflow_uri: str | None = None  # default: sqlite database in <run>/mlruns
    mlflow_experiment: str = "mimkit"
    max_steps: int | None = None  # stop early (smoke runs)
    dist_timeout_min: float = 10.0  # a collective waiting longer fails instead of hanging
    max_abs_weight: float | None = 1e4  # weights beyond count as diverged and are not saved


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # backbone weights; 'none' = random init (for comparison)
    pool: str = "cls"  # cls | avg: which features kNN / probe / Q-score read
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 200])
    knn_temperature: float = 0.07
    cache_dir: str | None = None  # feature cache; default ~/.cache/mimkit/features, 'none' = off
    batch_size: int = 256  # per process, for feature extraction and validation


@dataclass
class LinprobeConfig:
    optimizer: str = "lars"  # lars | sgd
    augment: bool = False  # random resized crop + flip; the frozen encoder then runs each step
    cache: bool = True  # without augmentation: train the head on features extracted once


@dataclass
class FinetuneConfig:
    layer_decay: float = 0.75  # lr scale decay^(depth + 1 - layer)
    trainable_blocks: int | None = None  # partial fine-tuning: train only the last k blocks
    global_pool: str = "avg"  # avg (fc_norm, as MAE) | token
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25  # random erasing probability
    head_init_std: float | None = 2e-5  # null: keep the layer's default init (from scratch)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])


@dataclass
class DetectConfig:
    train_ann: str | None = None  # COCO instances_*.json for data.path (the image folder)
    val_ann: str | None = None  # default: the last val_split images of train_ann
    val_images: str | None = None  # default: data.path
    val_split: int = 0  # hold out this many images of train_ann for validation (COCO128)
    masks: bool = True  # Mask R-CNN (true) or Faster R-CNN (false)
    window_size: int = 14
    global_blocks: list[int] | None = None  # default: the published ones for the depth
    residual_blocks: list[int] = field(default_factory=list)  # conv propagation after these
    rel_pos: bool = True
    layer_decay: float = 0.7  # ViT-B 0.7, L 0.8, H 0.9; pyramid and heads at full lr
    scale_range: list[float] = field(default_factory=lambda: [0.1, 2.0])  # large-scale jitter
    out_channels: int = 256
    score_threshold: float = 0.5  # predict: draw detections above this score


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
    linprobe: LinprobeConfig = field(default_factory=LinprobeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)


_CHOICES = {
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "task": ("pretrain", "knn", "linprobe", "finetune", "qscore", "detect"),
    "eval.pool": ("cls", "avg"),
    "data.pipeline": ("files", "tensor_cache", "gpu_jpeg", "shards"),
    "linprobe.optimizer": ("lars", "sgd"),
    "finetune.global_pool": ("avg", "token"),
    "optim.schedule": ("cosine", "onecycle"),
}

# Each command's defaults, layered between the schema and the preset (official recipes:
# MAE main_linprobe.py and main_finetune.py).
TASK_DEFAULTS = {
    "pretrain": {},
    "knn": {},
    "qscore": {},
    "linprobe": {
        "optim": {"blr": 0.1, "weight_decay": 0.0, "warmup_epochs": 10},
        "train": {"epochs": 90, "save_every": 10},
        "data": {"batch_size": 512},
    },
    "finetune": {
        "model": {"drop_path": 0.1},
        "optim": {
            "blr": 1e-3,
            "weight_decay": 0.05,
            "warmup_epochs": 5,
            "min_lr": 1e-6,
            "betas": [0.9, 0.999],
        },
        "train": {"epochs": 50, "save_every": 10},
    },
    # ViTDet's COCO recipe (detectron2 projects/ViTDet): AdamW (0.9, 0.999), lr 1e-4 at
    # batch 64 (blr 4e-4 = 1e-4 x 256 / 64), wd 0.1, drop path 0.1, 1024 px with large-scale jitter.
    "detect": {
        "model": {"name": "vit_base_patch16", "drop_path": 0.1},
        "data": {"img_size": 1024, "batch_size": 2},
        "optim": {"blr": 4e-4, "weight_decay": 0.1, "betas": [0.9, 0.999], "warmup_epochs": 0.25},
        "train": {"epochs": 100, "save_every": 10},
    },
}


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
    schema: type = Config,
    task: str | None = None,
) -> Config:
    """Resolve schema defaults <- task defaults <- base (a resumed run) <- preset <- overrides."""
    try:
        layers = [OmegaConf.structured(schema)]
        if task:
            layers.append(OmegaConf.create({"task": task, **TASK_DEFAULTS[task]}))
        if base is not None:
            layers.append(OmegaConf.create(base))
        if preset:
            layers.append(_load_yaml(preset_path(preset)))
        layers.append(_parse_overrides(overrides))
        cfg = OmegaConf.merge(*layers)
        if cfg.name is None and preset:
            cfg.name = Path(preset).stem
        obj = OmegaConf.to_object(cfg)
    except ConfigKeyError as e:
        raise UserError(_unknown_key_message(e, schema)) from None
    except ValidationError as e:
        raise UserError(_validation_message(e)) from None
    except OmegaConfBaseException as e:
        raise UserError(f"config error: {str(e).splitlines()[0]}") from None
    validate(obj)
    return obj


def _load_yaml(path: Path) -> DictConfig:
    """A preset file; a syntax error is one line with file, line and column."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {what}") from None


def _parse_overrides(overrides) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override '{item}' is not key=value (e.g. train.epochs=10)")
    return OmegaConf.from_dotlist(list(overrides))


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
    return f"config key '{e.full_key}': {first}"


def validate(cfg: Config) -> None:
    """Checks OmegaConf's types cannot express; each error names the key."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value not in choices:
            raise UserError(
                f"config key '{key}' must be one of {', '.join(choices)}, got '{value}'"
            )
    if not 0.0 < cfg.model.mask_ratio < 1.0:
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
    if cfg.train.epochs < 0 or cfg.data.num_workers < 0:
        raise UserError("config keys 'train.epochs' and 'data.num_workers' must not be negative")
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
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


__all__ = ["MISSING", "Config", "load_config", "list_presets", "to_yaml", "to_dict"]
