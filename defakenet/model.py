"""ResNet50V2 as Keras builds it, and the DeFakeNet real/fake classifier on top.

Papers:
- Identity Mappings in Deep Residual Networks (He et al., ECCV 2016): https://arxiv.org/abs/1603.05027
- DeFakeNet (Samal et al., Journal of Innovative Image Processing 7(4), 2025): a Keras ResNet50V2 fine-tuned to
  classify faces as real or fake.

The backbone is layer-for-layer `keras.applications.ResNet50V2(include_top=False)`, so the official Keras weights
load by name and give the same numbers. Where it differs from timm's `resnetv2_50`:
- the stem conv has a bias and no norm; the stem max-pool pads with zeros, not -inf (its input is not ReLU'd);
- a stack downsamples in its LAST block (3x3 conv stride 2, shortcut = 1x1 max-pool stride 2 i.e. subsampling),
  timm in its first;
- the `_0_conv` shortcut and `_3_conv` have biases; every BatchNorm has eps 1.001e-5 and Keras momentum 0.99.

Module paths map 1:1 to Keras layer names by swapping "." and "_" in the first two places:
`conv2.block1.preact_bn` <-> `conv2_block1_preact_bn`, `conv1_conv` and `post_bn` as they are
(see `keras_layer_paths`).
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

# freeze depth k freezes the first k groups; post_bn belongs to conv5
FREEZE_GROUPS = ("stem", "conv2", "conv3", "conv4", "conv5")

NUM_FEATURES = 2048


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


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
    """`keras.applications.ResNet50V2(include_top=False)`: NCHW float -> (N, 2048, H/32, W/32) after post_bn + ReLU."""

    def __init__(self):
        super().__init__()
        self.num_features = NUM_FEATURES
        # keras conv1_pad (zero pad 3) + 7x7/2 conv with bias, no norm or activation after it
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
        self.pool1_pool = ZeroPadMaxPool2d(3, 2, padding=1)
        in_chs = 64
        for name, filters, blocks, stride in RESNET50V2_STACKS:
            stack = OrderedDict()
            for i in range(1, blocks + 1):
                stack[f"block{i}"] = PreActBottleneck(
                    in_chs, filters, stride=stride if i == blocks else 1, conv_shortcut=i == 1
                )
                in_chs = 4 * filters
            self.add_module(name, nn.Sequential(stack))
        self.post_bn = _bn(in_chs)
        _init_keras(self)

    def groups(self) -> list[list[nn.Module]]:
        """The freeze groups in order: stem, conv2, conv3, conv4, conv5 (+ post_bn)."""
        return [[self.conv1_conv], [self.conv2], [self.conv3], [self.conv4], [self.conv5, self.post_bn]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_pool(self.conv1_conv(x))
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        return F.relu(self.post_bn(x))


class DeFakeNet(nn.Module):
    """ResNet50V2 backbone -> global average pool -> dropout -> Linear(2048, num_classes) `head`.

    With `num_classes=1` (the default) forward returns logits of shape (N,): p(fake) = sigmoid(logit).
    `freeze_depth` k freezes the first k of [stem, conv2, conv3, conv4, conv5]: 0 trains everything, 5 the head
    only. Frozen BatchNorms stay in eval mode (running stats fixed) when the model is put in train mode.
    """

    def __init__(self, dropout: float = 0.2, freeze_depth: int = 0, num_classes: int = 1):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"Invalid dropout {dropout!r}. Expected a float in [0, 1).")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"Invalid num_classes {num_classes!r}. Expected a positive int.")
        self.num_classes = num_classes
        self.backbone = ResNet50V2Backbone()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(NUM_FEATURES, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.freeze_depth = 0
        self.set_freeze_depth(freeze_depth)

    def set_freeze_depth(self, depth: int) -> None:
        """Freeze the first `depth` backbone groups and unfreeze the rest (training may unfreeze in stages)."""
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= len(FREEZE_GROUPS):
            raise ConfigError(
                f"Invalid freeze_depth {depth!r}. Expected an int in 0..{len(FREEZE_GROUPS)} "
                f"(0 trains everything, {len(FREEZE_GROUPS)} the head only; groups: {', '.join(FREEZE_GROUPS)})."
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
        """The backbone feature map, (N, 2048, H/32, W/32)."""
        return self.backbone(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a feature map; return the pooled (N, 2048) features if `pre_logits`, else the logits."""
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


def _create_defakenet(weights: str | Path | None, **kwargs) -> DeFakeNet:
    model = DeFakeNet(**kwargs)
    if weights is not None:
        # weights imports this module: import here, not at the top
        from defakenet.weights import load_backbone_weights

        load_backbone_weights(model.backbone, weights)
    return model


def create_defakenet(
    *, dropout: float = 0.2, freeze_depth: int = 0, weights: str | Path | None = None
) -> DeFakeNet:
    """DeFakeNet with a single-logit head; `weights` is an optional backbone file (Keras .h5, safetensors, .pt)."""
    return _create_defakenet(weights, dropout=dropout, freeze_depth=freeze_depth)


def create_resnet50v2_classifier(num_classes: int = 1000) -> DeFakeNet:
    """The full Keras `ResNet50V2(include_top=True)` shape (no dropout), e.g. to compare parameter counts."""
    return _create_defakenet(None, dropout=0.0, num_classes=num_classes)
