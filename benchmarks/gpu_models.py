"""The GPU suite's two models, written here (no torchvision, no downloads), built from fixed seeds.

* ``resnet50``: a ResNet-50-class conv net: bottleneck blocks [3, 4, 6, 3], widths 64-2048, input
  ``[-1, 3, 224, 224]`` FP32, 1000 logits.
* ``bert``: a BERT-base-class encoder: 12 post-LN layers, hidden 768, 12 heads, FFN 3072, vocab 30522,
  input ``[-1, 128]`` INT64 token ids, output the pooled ``[-1, 768]`` (tanh of the [CLS] state).

``tiny`` builds the same architectures far smaller (ResNet: one block per stage, width 8, 32x32 images,
10 classes; BERT: 2 layers, hidden 128, seq 16, vocab 1000) so that the whole pipeline runs on a CPU in
seconds. Outputs are kept O(1) (a small residual-branch gain, a scaled head) so that FP16 neither
overflows nor hides a mixed-up reply inside the tolerance. The classes are pickled by value, so neither
server needs this module to unpickle them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np
import torch
from models import Spec
from torch import nn

SCALES = ("full", "tiny")


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        last = nn.BatchNorm2d(cout)
        nn.init.constant_(last.weight, 0.2)  # keeps the residual sum O(1) through 16 blocks
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            last,
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        cin = width
        for stage, count in enumerate(blocks):
            w = width * 2**stage
            for i in range(count):
                layers.append(Bottleneck(cin, w, 2 if i == 0 and stage > 0 else 1))
                cin = w * Bottleneck.expansion
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class EncoderLayer(nn.Module):
    """BERT's post-LN layer, attention through scaled_dot_product_attention (exportable, fused on GPU)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        attn = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = self.norm1(x + self.out(attn))
        return self.norm2(x + self.ffn(x))


class Encoder(nn.Module):
    def __init__(
        self, layers: int = 12, hidden: int = 768, heads: int = 12, ffn: int = 3072, vocab: int = 30522
    ) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(512, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.layers = nn.Sequential(*(EncoderLayer(hidden, heads, ffn) for _ in range(layers)))
        self.pool = nn.Linear(hidden, hidden)
        for module in self.modules():  # BERT's initialiser: N(0, 0.02)
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.layers(self.norm(self.words(ids) + self.positions(positions)))
        return torch.tanh(self.pool(x[:, 0]))


cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class GpuSpec(Spec):
    """A `models.Spec` whose constructor takes `config`, and whose inputs may be token ids."""

    config: dict[str, Any] = field(default_factory=dict)
    vocab: int = 0  # > 0: the input is INT64 token ids below it
    outputs: int = 10  # width of the output

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        model = self.cls(**self.config).eval()
        if isinstance(model, ResNet):  # logits of unit spread on a fixed batch: O(1), and apart
            nn.init.zeros_(model.head.bias)
            with torch.no_grad():
                spread = model(torch.from_numpy(self.inputs(4, seed=7))).std()
                model.head.weight.div_(spread)
        return model

    def inputs(self, rows: int, seed: int) -> np.ndarray:
        if not self.vocab:
            return super().inputs(rows, seed)
        return np.random.default_rng(seed).integers(0, self.vocab, (rows, *self.row_shape), dtype=np.int64)


def specs(scale: str) -> dict[str, GpuSpec]:
    """Both models at `scale`; names carry the scale so that the two never share a saved folder."""
    if scale not in SCALES:
        raise ValueError(f"scale is one of {SCALES}, got {scale!r}")
    suffix = "" if scale == "full" else f"-{scale}"
    if scale == "full":
        resnet: dict[str, Any] = {}
        bert: dict[str, Any] = {}
        image, seq, vocab, classes, hidden = 224, 128, 30522, 1000, 768
    else:
        resnet = {"blocks": (1, 1, 1, 1), "width": 8, "classes": 10}
        bert = {"layers": 2, "hidden": 128, "heads": 2, "ffn": 512, "vocab": 1000}
        image, seq, vocab, classes, hidden = 32, 16, 1000, 10, 128
    return {
        "resnet50": GpuSpec(f"resnet50{suffix}", ResNet, (3, image, image), config=resnet, outputs=classes),
        "bert": GpuSpec(f"bert{suffix}", Encoder, (seq,), config=bert, vocab=vocab, outputs=hidden),
    }
