"""The Keras-faithful ResNet50V2 and the DeFakeNet head: parameter counts, freezing, shapes, the stem pooling,
the fixed input filters (NPR, SRM) against hand-computed values, truncated backbones and the saved-model round trip."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from defakenet.artifact import WEIGHTS_FILE, load_model, save_model
from defakenet.config import Config
from defakenet.engine import build_model
from defakenet.errors import ConfigError
from defakenet.model import (
    INPUT_FILTERS,
    DeFakeNet,
    NPRFilter,
    ResNet50V2Backbone,
    SRMFilter,
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


# ---- input filters, against values worked out by hand


def test_npr_is_x_minus_its_nearest_down_up_copy():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # kept pixels [[0, 2], [8, 10]], repeated 2x2: [[0,0,2,2],[0,0,2,2],[8,8,10,10],[8,8,10,10]]
    expected = torch.tensor([[0.0, 1, 0, 1], [4, 5, 4, 5], [0, 1, 0, 1], [4, 5, 4, 5]])
    torch.testing.assert_close(NPRFilter()(x)[0, 0], expected, rtol=0, atol=0)


def test_npr_handles_odd_sizes_per_channel():
    # channel c is (c + 1) * arange(25): each channel filtered on its own, linearly
    base = torch.arange(25.0).view(5, 5)
    x = torch.stack([base, 2 * base, 3 * base]).unsqueeze(0)
    # kept pixels rows/cols 0, 2, 4; the up-sampled copy is cropped from 6x6 back to 5x5
    expected = torch.tensor([[0.0, 1, 0, 1, 0], [5, 6, 5, 6, 5], [0, 1, 0, 1, 0], [5, 6, 5, 6, 5], [0, 1, 0, 1, 0]])
    out = NPRFilter()(x)
    assert out.shape == (1, 3, 5, 5)
    for c in range(3):
        torch.testing.assert_close(out[0, c], (c + 1) * expected, rtol=0, atol=0)


def test_npr_equals_the_papers_interpolate_for_even_sizes():
    x = torch.randn(2, 3, 8, 6)
    paper = x - F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2, mode="nearest")
    torch.testing.assert_close(NPRFilter()(x), paper, rtol=0, atol=0)


def test_srm_corner_impulse_shows_zero_padding_and_the_sum_over_channels():
    # 0.5 at (0, 0) in all three channels: output k at (i, j) is 3 * 0.5 * kernel_k[2 + i, 2 + j] for i, j <= 2,
    # the kernel's bottom-right quarter (the rest falls on the zero padding), zero further away
    x = torch.zeros(1, 3, 5, 5)
    x[0, :, 0, 0] = 0.5
    kb = [[-1.5, 0.75, 0, 0, 0], [0.75, -0.375, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    kv = [[-1.5, 1, -0.25, 0, 0], [1, -0.75, 0.25, 0, 0], [-0.25, 0.25, -0.125, 0, 0], [0, 0, 0, 0, 0],
          [0, 0, 0, 0, 0]]
    hor = [[-1.5, 0.75, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    torch.testing.assert_close(SRMFilter()(x)[0], torch.tensor([kb, kv, hor]), rtol=0, atol=1e-6)


def test_srm_centre_impulse_is_clipped_to_three():
    # 8 at the centre of channel 0 only: output k is 8 * kernel_k (all three are symmetric), then clipped to [-3, 3]
    x = torch.zeros(1, 3, 5, 5)
    x[0, 0, 2, 2] = 8.0
    kb = [[0, 0, 0, 0, 0], [0, -2, 3, -2, 0], [0, 3, -3, 3, 0], [0, -2, 3, -2, 0], [0, 0, 0, 0, 0]]  # 4 and -8 clip
    kv = torch.tensor([[-2, 4, -4, 4, -2], [4, -9, 9, -9, 4], [-4, 9, -9, 9, -4], [4, -9, 9, -9, 4],
                       [-2, 4, -4, 4, -2]]) / 3  # 8/12 * kernel: 16/3, -4 and -8 clip
    hor = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 3, -3, 3, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]  # 4 and -8 clip
    out = SRMFilter()(x)[0]
    torch.testing.assert_close(out, torch.stack([torch.tensor(kb, dtype=torch.float32), kv.float(),
                                                 torch.tensor(hor, dtype=torch.float32)]), rtol=0, atol=1e-6)
    assert out.abs().max() == 3.0


def test_srm_kernel_is_a_saved_buffer_and_none_npr_add_no_state():
    reference = set(DeFakeNet(stages=1).state_dict())
    srm = DeFakeNet(stages=1, input_filter="srm")
    assert set(srm.state_dict()) == reference | {"input_filter.kernel"}
    assert srm.state_dict()["input_filter.kernel"].shape == (3, 3, 5, 5)
    assert not any(n.startswith("input_filter") for n, _ in srm.named_parameters())
    # every input channel gets the same kernel: KB, KV, horizontal 2nd order, each summing to zero
    kernel = srm.input_filter.kernel
    assert torch.equal(kernel, kernel[:, :1].expand_as(kernel))
    assert kernel[0, 0, 2, 2] == -1.0 and kernel[1, 0, 0, 0] == -1 / 12 and kernel[2, 0, 2].tolist() == [0, 0.5, -1, 0.5, 0]
    torch.testing.assert_close(kernel.sum(dim=(2, 3)), torch.zeros(3, 3), rtol=0, atol=1e-6)
    for name in ("none", "npr"):
        assert set(DeFakeNet(stages=1, input_filter=name).state_dict()) == reference


@pytest.mark.parametrize("name", INPUT_FILTERS)
def test_forward_features_applies_the_filter_first(name):
    torch.manual_seed(0)
    model = DeFakeNet(stages=1, input_filter=name).eval()
    x = torch.randn(2, 3, 32, 32)
    filtered = {"none": x, "npr": NPRFilter()(x), "srm": SRMFilter()(x)}[name]
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), model.backbone(filtered), rtol=0, atol=0)
        assert model(x).shape == (2,)


@pytest.mark.parametrize("name", INPUT_FILTERS)
def test_filters_leave_the_full_parameter_count_unchanged(name):
    model = DeFakeNet(input_filter=name)
    assert count_parameters(model) == 23_519_360 + 2049
    assert keras_parameter_count(model.backbone) == 23_564_800


def test_bad_input_filter_is_a_config_error():
    with pytest.raises(ConfigError, match=r"input_filter 'dct'.*none, npr and srm"):
        create_defakenet(input_filter="dct")


# ---- truncated backbones


@pytest.mark.parametrize(("stages", "width", "side", "params", "layers"), [
    # backbone parameters by hand: stem 9,472; conv2 215,936; conv3 1,220,608; conv4 7,102,464; + post_bn 2 * width
    (1, 256, 4, 225_920, 1 + 19 + 1),
    (2, 512, 2, 1_447_040, 1 + 19 + 25 + 1),
    (3, 1024, 1, 8_550_528, 1 + 19 + 25 + 37 + 1),
])
def test_truncated_backbone_shapes_and_counts(stages, width, side, params, layers):
    model = create_defakenet(stages=stages, input_filter="srm").eval()
    backbone = model.backbone
    assert backbone.stage_names == ("conv2", "conv3", "conv4")[:stages]
    assert not hasattr(backbone, ("conv2", "conv3", "conv4", "conv5")[stages])
    assert model.num_features == backbone.num_features == width == backbone.post_bn.num_features
    assert model.head.in_features == width
    assert count_parameters(backbone) == params
    assert count_parameters(model) == params + width + 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, width, side, side) and (features >= 0).all()
        assert model.forward_head(features, pre_logits=True).shape == (2, width)
        assert model(x).shape == (2,)
    # keras names stay valid for the layers kept; the stride still sits on the last block
    paths = keras_layer_paths(backbone)
    assert len(paths) == layers
    assert set(paths.items()) <= set(keras_layer_paths(ResNet50V2Backbone()).items())
    last = getattr(backbone, backbone.stage_names[-1])
    assert getattr(last[-1], "2_conv").stride == (2, 2) and backbone.reduction == 32 // side


@pytest.mark.parametrize("stages", [0, 5, 2.0, True, "3"])
def test_bad_stages_is_a_config_error(stages):
    with pytest.raises(ConfigError, match=r"stages .*1\.\.4.*conv2, conv3, conv4, conv5"):
        DeFakeNet(stages=stages)


def test_freeze_depth_over_a_truncated_backbone():
    model = DeFakeNet(stages=2)
    backbone = model.backbone
    assert [len(g) for g in backbone.groups()] == [1, 1, 2]
    assert backbone.groups()[-1] == [backbone.conv3, backbone.post_bn]
    stem, conv2, conv3, post = 9_472, 215_936, 1_220_608, 2 * 512
    expected = {0: stem + conv2 + conv3 + post + 513, 1: conv2 + conv3 + post + 513, 2: conv3 + post + 513, 3: 513}
    for depth, trainable in expected.items():
        model.set_freeze_depth(depth)
        assert count_parameters(model, trainable_only=True) == trainable, depth
    model.set_freeze_depth(2)
    assert not backbone.conv2.block1.preact_bn.weight.requires_grad
    assert backbone.conv3.block1.preact_bn.weight.requires_grad and backbone.post_bn.weight.requires_grad
    model = DeFakeNet(stages=2, freeze_depth=3).train()  # post_bn is frozen with conv3 and stays in eval mode
    assert not model.backbone.post_bn.training and not model.backbone.conv3.block4.preact_bn.training
    assert model.head.training and model.head.weight.requires_grad
    with pytest.raises(ConfigError, match=r"freeze_depth 4.*0\.\.3.*stem, conv2, conv3\)"):
        DeFakeNet(stages=2, freeze_depth=4)


# ---- one constructor from config, and the saved model


def test_save_load_round_trip_with_a_filter_and_fewer_stages(tmp_path):
    cfg = Config.from_dict({"model": {"input_filter": "srm", "stages": 2, "freeze_depth": 1}})
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.input_filter, SRMFilter) and model.backbone.stages == 2 and model.freeze_depth == 1
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))  # batchnorm running stats away from their defaults
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    out = save_model(tmp_path / "model", model, cfg, {"threshold": 0.5})
    assert json.loads((out / "config.json").read_text())["model"]["stages"] == 2
    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
        assert "input_filter.kernel" in f.keys()
        torch.testing.assert_close(f.get_tensor("input_filter.kernel"), SRMFilter().kernel, rtol=0, atol=0)
        assert f.get_tensor("backbone.post_bn.weight").shape == (512,)
        assert not any(k.startswith("backbone.conv4.") for k in f.keys())
    saved = load_model(out)
    loaded = saved.model
    assert isinstance(loaded.input_filter, SRMFilter) and loaded.backbone.stages == 2 and loaded.num_features == 512
    assert not loaded.training and loaded.freeze_depth == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-6)
