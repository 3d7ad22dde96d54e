"""ResNet50V2 as Keras builds it, and the DeFakeNet real/fake classifier on top.

Papers:
- Identity Mappings in Deep Residual Networks (He et al., ECCV 2016): https://arxiv.org/abs/1603.05027
- DeFakeNet (Samal et al., Journal of Innovative Image Processing 7(4), 2025): a Keras ResNet50V2 fine-tuned to
  classify faces as real or fake.
- Rethinking the Up-Sampling Operations in CNN-based Generative Network for Generalizable Deepfake Detection
  (Tan et al., CVPR 2024): https://arxiv.org/abs/2312.10461 — the `npr` input filter.
- Rich Models for Steganalysis of Digital Images (Fridrich & Kodovsky, IEEE TIFS 2012) and Learning Rich Features
  for Image Manipulation Detection (Zhou et al., CVPR 2018): https://arxiv.org/abs/1805.04953 — the `srm` filter,
  as DeepfakeBench's `SRMConv2d_simple` builds it.
- What Makes Fake Images Detectable? (Chai et al., ECCV 2020): https://arxiv.org/abs/2008.10588 — shallow
  truncated backbones that see local patches (`stages`).

An optional fixed input filter (`INPUT_FILTERS`: none, npr, srm; no learned weights) runs first in
`DeFakeNet.forward_features`, so training, evaluation, serving and Grad-CAM all see it. `stages` keeps the first
1..4 of conv2..conv5: with fewer, `post_bn` has the last kept stage's width and the head follows it.

The backbone is layer-for-layer `keras.applications.ResNet50V2(include_top=False)`, so the official Keras weights
load by name and give the same numbers. Where it differs from timm's `resnetv2_50`:
- the stem conv has a bias and no norm; the stem max-pool pads with zeros, not -inf (its input is not ReLU'd);
- a stack downsamples in its LAST block (3x3 conv stride 2, shortcut = 1x1 max-pool stride 2 i.e. subsampling),
  timm in its first;
- the `_0_conv` shortcut and `_3_conv` have biases; every BatchNorm has eps 1.001e-5 and Keras momentum 0.99.

Module paths map 1:1 to Keras layer names by swapping "." and "_" in the first two places:
`conv2.block1.preact_bn` <-> `conv2_block1_preact_bn`, `conv1_conv` and `post_bn` as they are
(see `keras_layer_paths`); a truncated backbone keeps the names of the layers it has.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from defakenet.errors import ConfigError

# keras BatchNormalization(epsilon=1.001e-5, momentum=0.99); torch momentum is 1 - keras momentum
BN_EPS = 1.001e-5
# keras trains with momentum 0.99 (torch 0.01); short fine-tuning runs need running stats that catch up
# within an epoch or two, so we use torch's 0.1. inference parity with keras is unaffected.
BN_MOMENTUM = 0.1

# (name, bottleneck filters, blocks, stride of the last block), as resnet_v2.ResNet50V2 stacks them
RESNET50V2_STACKS = (("conv2", 64, 3, 2), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 1))

# freeze depth k freezes the first k groups; post_bn belongs to the last kept stage (conv5 in the full network)
FREEZE_GROUPS = ("stem", *(name for name, *_ in RESNET50V2_STACKS))

# the whole network's width; a truncated backbone has `num_features` = 4 * filters of its last stage
NUM_FEATURES = 2048

INPUT_FILTERS = ("none", "npr", "srm")

# srm residual kernels, 5x5 (zero-padded) with their normalisers, in DeepfakeBench SRMConv2d_simple's order
_SRM_KB = ((0, 0, 0, 0, 0), (0, -1, 2, -1, 0), (0, 2, -4, 2, 0), (0, -1, 2, -1, 0), (0, 0, 0, 0, 0))
_SRM_KV = ((-1, 2, -2, 2, -1), (2, -6, 8, -6, 2), (-2, 8, -12, 8, -2), (2, -6, 8, -6, 2), (-1, 2, -2, 2, -1))
_SRM_HOR = ((0, 0, 0, 0, 0), (0, 0, 0, 0, 0), (0, 1, -2, 1, 0), (0, 0, 0, 0, 0), (0, 0, 0, 0, 0))
SRM_KERNELS = ((_SRM_KB, 4.0), (_SRM_KV, 12.0), (_SRM_HOR, 2.0))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class NPRFilter(nn.Module):
    """Neighbouring pixel relationships (Tan et al., CVPR 2024): x - nearest_up(nearest_down(x)), factor 2.

    The down step keeps the top-left pixel of each 2x2 block (`x[..., ::2, ::2]`), the up step repeats it 2x2 and
    crops back to H x W, so odd sizes work too. For even sizes this equals the paper's
    `x - F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2, mode="nearest")`.
    No state: nothing is added to the state dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        up = F.interpolate(x[..., ::2, ::2], scale_factor=2, mode="nearest")
        return x - up[..., :h, :w]


class SRMFilter(nn.Module):
    """The three SRM high-pass residuals (KB 3x3, KV 5x5, horizontal 2nd order), clipped to [-3, 3].

    As DeepfakeBench's `SRMConv2d_simple`: output channel k is kernel k (see `SRM_KERNELS`: KB, KV, horizontal)
    applied to every input channel and summed, zero padding 2, then Hardtanh(-3, 3). The kernel is a fixed,
    persistent buffer `kernel` of shape (3, 3, 5, 5), saved with the weights and never trained.
    """

    def __init__(self, in_chs: int = 3):
        super().__init__()
        kernels = torch.tensor([k for k, _ in SRM_KERNELS], dtype=torch.float32)
        kernels = kernels / torch.tensor([n for _, n in SRM_KERNELS]).view(-1, 1, 1)
        self.register_buffer("kernel", kernels.unsqueeze(1).repeat(1, in_chs, 1, 1).contiguous(), persistent=True)
        self.clip = nn.Hardtanh(-3.0, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip(F.conv2d(x, self.kernel, padding=2))


class ZeroPadMaxPool2d(nn.Module):
    """Keras `ZeroPadding2D(p)` + `MaxPooling2D(k, s)`: pads with zeros, unlike `nn.MaxPool2d(padding=p)` (-inf)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.pool = nn.MaxPool2d(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, (self.padding,) * 4))


class PreActBottleneck(nn.Module):
    """Keras `residual_block_v2`: BN-ReLU pre-activation, then 1x1 -> 3x3 (stride here) -> 1x1.

    Children carry the Keras layer suffixes (`preact_bn`, `0_conv`, `1_conv`, `1_bn`, `2_conv`, `2_bn`, `3_conv`);
    they are not identifiers, so forward reaches them through getattr.
    """

    def __init__(self, in_chs: int, filters: int, stride: int = 1, conv_shortcut: bool = False):
        super().__init__()
        out_chs = 4 * filters
        self.stride = stride
        self.conv_shortcut = conv_shortcut
        self.preact_bn = _bn(in_chs)
        if conv_shortcut:
            # keras block1: 1x1 conv with bias on the pre-activation, stride 1
            self.add_module("0_conv", nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=True))
        self.add_module("1_conv", nn.Conv2d(in_chs, filters, 1, bias=False))
        self.add_module("1_bn", _bn(filters))
        # keras _2_pad is a symmetric zero pad of 1, the same as padding=1 here
        self.add_module("2_conv", nn.Conv2d(filters, filters, 3, stride=stride, padding=1, bias=False))
        self.add_module("2_bn", _bn(filters))
        self.add_module("3_conv", nn.Conv2d(filters, out_chs, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.preact_bn(x))
        if self.conv_shortcut:
            shortcut = getattr(self, "0_conv")(preact)
        elif self.stride > 1:
            # keras MaxPooling2D(1, strides=stride) on the block input
            shortcut = x[:, :, :: self.stride, :: self.stride]
        else:
            shortcut = x
        x = F.relu(getattr(self, "1_bn")(getattr(self, "1_conv")(preact)))
        x = F.relu(getattr(self, "2_bn")(getattr(self, "2_conv")(x)))
        return shortcut + getattr(self, "3_conv")(x)


class ResNet50V2Backbone(nn.Module):
    """`keras.applications.ResNet50V2(include_top=False)`: NCHW float -> (N, 2048, H/32, W/32) after post_bn + ReLU.

    `stages` keeps the first 1..4 of conv2..conv5 (4 = the whole network). Keras strides in the last block of
    conv2..conv4, so the output is (N, num_features, H/r, W/r) with num_features 256 / 512 / 1024 / 2048 and
    `reduction` r 8 / 16 / 32 / 32 for 1..4 stages.
    """

    def __init__(self, stages: int = len(RESNET50V2_STACKS)):
        super().__init__()
        if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= len(RESNET50V2_STACKS):
            raise ConfigError(
                f"Invalid stages {stages!r}. Expected an int in 1..{len(RESNET50V2_STACKS)} "
                f"(how many of {', '.join(name for name, *_ in RESNET50V2_STACKS)} to keep)."
            )
        self.stages = stages
        self.stage_names = tuple(name for name, *_ in RESNET50V2_STACKS[:stages])
        # keras conv1_pad (zero pad 3) + 7x7/2 conv with bias, no norm or activation after it
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
        self.pool1_pool = ZeroPadMaxPool2d(3, 2, padding=1)
        in_chs, self.reduction = 64, 4
        for name, filters, blocks, stride in RESNET50V2_STACKS[:stages]:
            stack = OrderedDict()
            for i in range(1, blocks + 1):
                stack[f"block{i}"] = PreActBottleneck(
                    in_chs, filters, stride=stride if i == blocks else 1, conv_shortcut=i == 1
                )
                in_chs = 4 * filters
            self.add_module(name, nn.Sequential(stack))
            self.reduction *= stride
        self.num_features = in_chs
        self.post_bn = _bn(in_chs)
        _init_keras(self)

    @property
    def group_names(self) -> tuple[str, ...]:
        """The freeze group names in order: stem, then the kept stages."""
        return ("stem", *self.stage_names)

    def groups(self) -> list[list[nn.Module]]:
        """The freeze groups in order: stem, conv2, ..., the last kept stage (+ post_bn)."""
        stacks = [[getattr(self, name)] for name in self.stage_names]
        stacks[-1].append(self.post_bn)
        return [[self.conv1_conv], *stacks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_pool(self.conv1_conv(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return F.relu(self.post_bn(x))


class DeFakeNet(nn.Module):
    """Input filter -> ResNet50V2 backbone -> global average pool -> dropout -> Linear(num_features, num_classes).

    With `num_classes=1` (the default) forward returns logits of shape (N,): p(fake) = sigmoid(logit).
    `input_filter` is a fixed high-pass filter on the normalised input (none, npr or srm; see `INPUT_FILTERS`),
    `stages` how many of conv2..conv5 the backbone keeps (num_features 256 / 512 / 1024 / 2048 for 1..4).
    `freeze_depth` k freezes the first k of [stem, conv2, ..., the last kept stage]: 0 trains everything,
    stages + 1 the head only. Frozen BatchNorms stay in eval mode (running stats fixed) in train mode.
    """

    def __init__(
        self,
        dropout: float = 0.2,
        freeze_depth: int = 0,
        num_classes: int = 1,
        input_filter: str = "none",
        stages: int = len(RESNET50V2_STACKS),
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"Invalid dropout {dropout!r}. Expected a float in [0, 1).")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"Invalid num_classes {num_classes!r}. Expected a positive int.")
        self.num_classes = num_classes
        self.input_filter_name = input_filter
        self.input_filter = _create_input_filter(input_filter)
        self.backbone = ResNet50V2Backbone(stages)
        self.num_features = self.backbone.num_features
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.freeze_depth = 0
        self.set_freeze_depth(freeze_depth)

    def set_freeze_depth(self, depth: int) -> None:
        """Freeze the first `depth` backbone groups and unfreeze the rest (training may unfreeze in stages)."""
        names = self.backbone.group_names
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= len(names):
            raise ConfigError(
                f"Invalid freeze_depth {depth!r}. Expected an int in 0..{len(names)} "
                f"(0 trains everything, {len(names)} the head only; groups: {', '.join(names)})."
            )
        self.freeze_depth = depth
        for i, group in enumerate(self.backbone.groups()):
            for module in group:
                module.requires_grad_(i >= depth)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        """The backbone modules frozen by the current freeze depth."""
        return [m for group in self.backbone.groups()[: self.freeze_depth] for m in group]

    def train(self, mode: bool = True) -> DeFakeNet:
        super().train(mode)
        if mode:
            # frozen batchnorms keep their running stats
            for frozen in self.frozen_modules():
                for m in frozen.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input filter, then the backbone feature map (N, num_features, H/r, W/r), r = backbone.reduction."""
        return self.backbone(self.input_filter(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a feature map; return the pooled (N, num_features) features if `pre_logits`, else the logits."""
        x = x.mean(dim=(2, 3))
        if pre_logits:
            return x
        x = self.head(self.drop(x))
        return x.squeeze(1) if self.num_classes == 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in `module`, only those with requires_grad if `trainable_only`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def keras_parameter_count(module: nn.Module) -> int:
    """The count Keras' `model.count_params()` gives: parameters plus BN moving mean/variance (not num_batches)."""
    stats = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return count_parameters(module) + stats


def keras_layer_paths(backbone: ResNet50V2Backbone) -> dict[str, str]:
    """Keras layer name -> torch module path for every layer with weights, e.g.
    `conv2_block1_preact_bn` -> `conv2.block1.preact_bn`."""
    return {
        path.replace(".", "_"): path
        for path, m in backbone.named_modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    }


def _init_keras(module: nn.Module) -> None:
    # keras defaults: glorot-uniform kernels, zero biases, BN gamma 1 / beta 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _create_input_filter(name: str) -> nn.Module:
    # none is an Identity: no state, so models saved before the filters existed load unchanged
    if name == "none":
        return nn.Identity()
    if name == "npr":
        return NPRFilter()
    if name == "srm":
        return SRMFilter()
    allowed = ", ".join(INPUT_FILTERS[:-1]) + f" and {INPUT_FILTERS[-1]}"
    raise ConfigError(f"Invalid input_filter {name!r}. Only {allowed} are supported.")


def _create_defakenet(weights: str | Path | None, **kwargs) -> DeFakeNet:
    model = DeFakeNet(**kwargs)
    if weights is not None:
        # weights imports this module: import here, not at the top
        from defakenet.weights import load_backbone_weights

        load_backbone_weights(model.backbone, weights)
    return model


def create_defakenet(
    *,
    dropout: float = 0.2,
    freeze_depth: int = 0,
    weights: str | Path | None = None,
    input_filter: str = "none",
    stages: int = len(RESNET50V2_STACKS),
) -> DeFakeNet:
    """DeFakeNet with a single-logit head, the one constructor every config path uses.

    `weights` is an optional backbone file (Keras .h5, safetensors, .pt); a full-network file also initialises a
    truncated backbone (`stages` < 4) from the layers it keeps. `input_filter` and `stages` as in `DeFakeNet`.
    """
    return _create_defakenet(
        weights, dropout=dropout, freeze_depth=freeze_depth, input_filter=input_filter, stages=stages
    )


def create_resnet50v2_classifier(num_classes: int = 1000) -> DeFakeNet:
    """The full Keras `ResNet50V2(include_top=True)` shape (no dropout), e.g. to compare parameter counts."""
    return _create_defakenet(None, dropout=0.0, num_classes=num_classes)
