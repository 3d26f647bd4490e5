"""Semantic segmentation on plain ViTs: the BEiT / MAE / iBOT ADE20K protocol (4-level
pyramid from 4 blocks, UperNet + FCN auxiliary head, mmsegmentation's pipeline, sliding
windows, mIoU) and the frozen linear probe of DINOv2 / iBOT, with a raw-pixel floor.

Everything takes explicit arguments; a recipe wires them like this::

    from mimkit import segmentation as seg
    from mimkit.data.loader import eval_loader, train_loader

    # data: one of three layouts, scanned before training (one-line UserError on bad input)
    train_src = seg.ade20k(root, "training")              # or seg.mask_folder(images, masks,
    val_src = seg.ade20k(root, "validation")              #   classes, ignore_index) or
    seg.scan(train_src); seg.scan(val_src)                #   seg.CocoSemantic(images, json)
    train = seg.SegmentationDataset(train_src, seg.TrainTransform(crop=(512, 512)))
    loader = train_loader(train, batch_size, seed, workers, collate_fn=seg.train_collate)
    val = eval_loader(seg.EvalDataset(val_src), 1, workers, collate_fn=seg.eval_collate)

    # model: a timm ViT (mimkit's ViT, timm's VisionTransformer or Beit), weights loaded
    model = seg.upernet(vit, num_classes=len(train_src.classes))    # fine-tuning protocol
    model = seg.linear_probe(vit, num_classes, last_blocks=1)       # frozen probe
    model = seg.linear_probe(None, num_classes, patch_size=16)      # raw-pixel floor
    # under DDP: torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) (mmseg's SyncBN)

    # train on the engine: AdamW on seg.param_groups(model, weight_decay, layer_decay)
    # (BEiT-B ADE20K: lr 3e-5, weight decay 0.05, layer decay 0.9, 160k iterations of
    # batch 16, linear warmup 1500 then poly decay; MAE used layer decay 0.65)
    task = seg.SegmentTask(val, num_classes, device, classes, crop=(512, 512), stride=(341, 341))
    # Trainer(model, optimizer, loader, task, ...).fit()

    # evaluate: mIoU / mAcc / aAcc / per-class lists from one confusion matrix over all ranks
    scores = seg.evaluate(model, val, num_classes, device, classes, ratios=(1.0,), flip=False)
    seg.plot_class_iou(scores["IoU"], scores["classes"], "class_iou.png")

    # predict: palette PNG masks (pixel = class id) and overlay pictures
    seg.predict_files(model, paths, out_dir, device, seg.palette(num_classes), classes)

Defaults are the ADE20K 512 x 512 protocol: training scale (2048, 512) x 0.5-2.0, crop 512,
``cat_max_ratio`` 0.75, flip, photometric distortion, ImageNet mean/std in 0..255, ignore
index 255; testing scale (2048, 512), sliding windows 512 / stride 341. Module docstrings
(``backbone``, ``heads``, ``transforms``, ``inference``, ``metrics``, ``data``) list where
this differs from mmsegmentation.
"""

from .backbone import (
    BlockFeatures,
    PixelPatches,
    ViTPyramid,
    ViTTokens,
    default_block_indices,
    enable_dynamic_size,
)
from .data import (
    ADE20K_CLASSES,
    CocoSemantic,
    EvalDataset,
    MaskPairs,
    SegmentationDataset,
    ade20k,
    coco_semantic_mask,
    eval_collate,
    mask_folder,
    read_class_names,
    read_mask,
    scan,
    train_collate,
)
from .heads import FCNHead, LinearHead, UperNetHead
from .inference import (
    SegmentTask,
    evaluate,
    predict_files,
    predict_probs,
    slide_logits,
    window_boxes,
)
from .metrics import ConfusionMatrix, scores
from .model import SegmentationModel, cross_entropy, linear_probe, param_groups, upernet
from .pictures import colorize, overlay, palette, plot_class_iou, prediction_figure, save_mask
from .transforms import MEAN, STD, TrainTransform, photometric_distortion, rescale_size

__all__ = [
    "ADE20K_CLASSES",
    "MEAN",
    "STD",
    "BlockFeatures",
    "CocoSemantic",
    "ConfusionMatrix",
    "EvalDataset",
    "FCNHead",
    "LinearHead",
    "MaskPairs",
    "PixelPatches",
    "SegmentTask",
    "SegmentationDataset",
    "SegmentationModel",
    "TrainTransform",
    "UperNetHead",
    "ViTPyramid",
    "ViTTokens",
    "ade20k",
    "coco_semantic_mask",
    "colorize",
    "cross_entropy",
    "default_block_indices",
    "enable_dynamic_size",
    "eval_collate",
    "evaluate",
    "linear_probe",
    "mask_folder",
    "overlay",
    "palette",
    "param_groups",
    "photometric_distortion",
    "plot_class_iou",
    "predict_files",
    "predict_probs",
    "prediction_figure",
    "read_class_names",
    "read_mask",
    "rescale_size",
    "save_mask",
    "scan",
    "scores",
    "slide_logits",
    "train_collate",
    "upernet",
    "window_boxes",
]
