"""The Keras-faithful ResNet50V2 and the DeFakeNet head: parameter counts, freezing, shapes, the stem pooling."""

import pytest
import torch
import torch.nn as nn

from defakenet.errors import ConfigError
from defakenet.model import (
    DeFakeNet,
    ResNet50V2Backbone,
    ZeroPadMaxPool2d,
    count_parameters,
    create_defakenet,
    create_resnet50v2_classifier,
    keras_layer_paths,
    keras_parameter_count,
)


@pytest.fixture(autouse=True)
def one_thread():
    # 2 shared cores: one thread per test, restored afterwards
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ResNet50V2Backbone().eval()


def test_backbone_parameter_counts_match_keras(backbone):
    # keras ResNet50V2(include_top=False).count_params(); torch leaves BN moving stats out of parameters()
    assert keras_parameter_count(backbone) == 23_564_800
    assert count_parameters(backbone) == 23_519_360


def test_classifier_parameter_count_matches_keras_include_top():
    assert keras_parameter_count(create_resnet50v2_classifier(1000)) == 25_613_800


def test_keras_layer_names_map_one_to_one(backbone):
    paths = keras_layer_paths(backbone)
    assert len(paths) == 102  # 53 convs + 49 batchnorms
    assert paths["conv1_conv"] == "conv1_conv"
    assert paths["conv2_block1_preact_bn"] == "conv2.block1.preact_bn"
    assert paths["conv4_block1_0_conv"] == "conv4.block1.0_conv"
    assert paths["post_bn"] == "post_bn"
    assert "conv2_block2_0_conv" not in paths  # only block1 has a conv shortcut


def test_stride_sits_on_last_block_like_keras(backbone):
    for stack, last in (("conv2", 3), ("conv3", 4), ("conv4", 6)):
        blocks = getattr(backbone, stack)
        assert getattr(getattr(blocks, f"block{last}"), "2_conv").stride == (2, 2)
        assert getattr(blocks.block1, "2_conv").stride == (1, 1)
    assert all(getattr(b, "2_conv").stride == (1, 1) for b in backbone.conv5)
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(1.001e-5, 0.1)}  # torch default momentum, see BN_MOMENTUM


@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes(backbone, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = backbone(x)
        assert features.shape == (2, 2048, size // 32, size // 32)
        assert (features >= 0).all()  # post_bn + relu
        model = DeFakeNet().eval()
        assert model(x).shape == (2,)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 2048)


def test_channels_last_input_gives_the_same_logits():
    model = create_defakenet().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_stem_pool_pads_with_zeros_not_minus_infinity():
    # the stem pool sees the raw conv output (no relu): negative borders show which padding is used
    x = -torch.rand(1, 1, 8, 8) - 1.0
    keras_pool = ZeroPadMaxPool2d(3, 2, padding=1)(x)
    torch_pool = nn.MaxPool2d(3, 2, padding=1)(x)
    assert keras_pool.shape == torch_pool.shape == (1, 1, 4, 4)
    assert keras_pool[0, 0, 0, 0] == 0.0  # the top-left window touches the zero padding
    assert torch_pool[0, 0, 0, 0] < 0.0
    assert isinstance(ResNet50V2Backbone().pool1_pool, ZeroPadMaxPool2d)


def test_freeze_depth_trainable_counts_strictly_decrease():
    model = DeFakeNet()
    counts = []
    for depth in range(6):
        model.set_freeze_depth(depth)
        counts.append(count_parameters(model, trainable_only=True))
    assert counts[0] == count_parameters(model) == 23_519_360 + 2049
    assert all(a > b for a, b in zip(counts, counts[1:])), counts
    assert counts[5] == 2049  # the head only
    assert DeFakeNet(freeze_depth=5).head.weight.requires_grad
    model.set_freeze_depth(0)  # unfreezing in stages works
    assert count_parameters(model, trainable_only=True) == counts[0]


def test_frozen_batchnorm_stays_in_eval_mode_in_train():
    model = DeFakeNet(freeze_depth=3).train()
    frozen_bn = model.backbone.conv3.block2.preact_bn
    live_bn = model.backbone.conv4.block2.preact_bn
    assert not frozen_bn.training and live_bn.training and model.head.training
    assert not frozen_bn.weight.requires_grad and live_bn.weight.requires_grad
    frozen_before = frozen_bn.running_mean.clone()
    live_before = live_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert not torch.equal(live_bn.running_mean, live_before)
    assert model.backbone.conv1_conv.weight.grad is None
    assert model.backbone.conv4.block1.preact_bn.weight.grad is not None
    model.set_freeze_depth(0)  # unfrozen while training: the batchnorm trains again
    assert frozen_bn.training and frozen_bn.weight.requires_grad


@pytest.mark.parametrize("depth", [-1, 6, 2.0, True, "3"])
def test_bad_freeze_depth_is_a_config_error(depth):
    with pytest.raises(ConfigError, match=r"freeze_depth.*0\.\.5"):
        DeFakeNet(freeze_depth=depth)


def test_bad_dropout_is_a_config_error():
    with pytest.raises(ConfigError, match="dropout"):
        create_defakenet(dropout=1.5)
