"""How many of the K prototypes the iBOT teacher uses: argmax of its centred, sharpened
output ([CLS] and patches) on 500 CIFAR-10 test images (every 20th file), the number of
distinct argmaxes, the perplexity of their histogram and the mean top probability."""

import glob

import numpy as np
import torch
from PIL import Image

from mimkit.interop.checkpoint import model_from_checkpoint

RUNS = {
    "212 steps (benchmark)": "/tmp/bench-cpu/pretrain-ibot/checkpoint-last.pth",
    "782 steps (2 epochs)": "/tmp/ibot-long/pretrain/checkpoint-last.pth",
}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(files: list[str]) -> torch.Tensor:
    arrays = [np.array(Image.open(f).convert("RGB")) for f in files]
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])
    return (x - MEAN) / STD


def main() -> None:
    files = sorted(glob.glob("/tmp/bench-cpu/cifar10/test/*/*.jpg"))[::20][:500]
    x = load(files)
    for name, path in RUNS.items():
        model, _ = model_from_checkpoint(path, kind="pretrain")
        with torch.no_grad():
            cls, patch = model.eval().teacher(x)
        for kind, logits, center in (
            ("cls", cls, model.center),
            ("patch", patch.reshape(-1, patch.shape[-1]), model.center2.reshape(1, -1)),
        ):
            p = torch.softmax((logits - center) / 0.04, -1)
            counts = torch.bincount(p.argmax(-1), minlength=p.shape[-1]).float()
            q = counts[counts > 0] / counts.sum()
            print(
                f"{name} {kind} distinct argmax {int((counts > 0).sum())} of {p.shape[-1]} "
                f"perplexity of usage {torch.exp(-(q * q.log()).sum()).item():.1f} "
                f"top share {q.max().item():.3f} "
                f"mean max prob {p.max(-1).values.mean().item():.3f}"
            )


if __name__ == "__main__":
    main()
