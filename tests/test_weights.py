"""Backbone weights: Keras .h5 parity with Keras itself, timm and safetensors loading, unreadable files, and full
files loaded into truncated backbones."""

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported anywhere; keras is used offline, weights=None

import h5py
import numpy as np
import pytest
import torch

from defakenet.errors import DataError
from defakenet.model import DeFakeNet, ResNet50V2Backbone, create_defakenet
from defakenet.weights import (
    import_keras_cli,
    import_keras_h5,
    load_backbone_weights,
    load_safetensors,
    save_safetensors,
)

keras = pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def keras_reference(tmp_path_factory):
    """A random-weight Keras ResNet50V2 saved as a legacy .h5, an NHWC input and Keras' pooled features for it."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50V2(weights=None, include_top=False, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            # random gamma, beta and moving stats, so every BN tensor and its mapping matters
            c = weights[0].shape[0]
            layer.set_weights([rng.uniform(0.8, 1.2, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 2.0, c)])
        elif isinstance(layer, keras.layers.Conv2D) and len(weights) == 2:
            layer.set_weights([weights[0], rng.normal(0, 0.05, weights[1].shape)])  # keras zero-inits biases
    path = tmp_path_factory.mktemp("keras") / "resnet50v2_random.h5"
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)
    x = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    pooled = keras.ops.convert_to_numpy(model(x, training=False)).mean(axis=(1, 2))
    torch.set_num_threads(threads)
    return path, x, pooled


def _rewrite(src, dst, *, suffix="", as_str=False, nest=False, drop=None, add_predictions=False):
    """Copy a legacy Keras .h5 with weight names ending in `suffix`, str or bytes attributes, optionally nested
    under `model_weights` (full-model file), without layer `drop`, or with an extra `predictions` layer."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        root = fout.create_group("model_weights") if nest else fout
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in fin.attrs["layer_names"]]
        names = [n for n in names if n != drop]
        layers = {}
        for name in names:
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in fin[name].attrs["weight_names"]]
            layers[name] = {w + suffix: fin[name][w][()] for w in weight_names}
        if add_predictions:
            names.append("predictions")
            layers["predictions"] = {"predictions/kernel" + suffix: np.zeros((2048, 1000), np.float32),
                                     "predictions/bias" + suffix: np.zeros(1000, np.float32)}
        encode = (lambda items: list(items)) if as_str else (lambda items: [i.encode() for i in items])
        root.attrs["layer_names"] = encode(names)
        for name, weights in layers.items():
            group = root.create_group(name)
            group.attrs["weight_names"] = encode(weights)
            for weight_name, value in weights.items():
                group.create_dataset(weight_name, data=value)
    return dst


def _pooled(model: DeFakeNet, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def test_keras_h5_import_matches_keras_features(keras_reference):
    path, x, keras_pooled = keras_reference
    state = import_keras_h5(path)
    assert list(state) == list(ResNet50V2Backbone().state_dict())
    model = create_defakenet(weights=path).eval()
    assert np.abs(_pooled(model, x) - keras_pooled).max() < 1e-4
    # channels_last gives the same numbers
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        pooled = model.forward_head(model.forward_features(xt), pre_logits=True).numpy()
    assert np.abs(pooled - keras_pooled).max() < 1e-4


@pytest.mark.parametrize("layout", [
    {"suffix": ":0"},  # the official keras-applications files
    {"suffix": ":0", "as_str": True},
    {"suffix": ":0", "nest": True},  # full-model file
    {"as_str": True, "nest": True},
])
def test_keras_h5_layout_variants_give_the_same_tensors(keras_reference, tmp_path, layout):
    path = keras_reference[0]
    expected = import_keras_h5(path)
    got = import_keras_h5(_rewrite(path, tmp_path / "variant.h5", **layout))
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize(("change", "named"), [
    ({"drop": "conv4_block3_2_bn"}, "conv4_block3_2_bn"),
    ({"add_predictions": True}, "predictions"),
])
def test_keras_h5_missing_or_extra_layer_is_a_data_error(keras_reference, tmp_path, change, named):
    bad = _rewrite(keras_reference[0], tmp_path / "bad.h5", suffix=":0", **change)
    with pytest.raises(DataError, match=named):
        import_keras_h5(bad)


def test_import_keras_cli_writes_loadable_safetensors(keras_reference, tmp_path):
    path, x, keras_pooled = keras_reference
    out = tmp_path / "out" / "backbone.safetensors"
    summary = import_keras_cli(path, out)
    assert summary["keras_params"] == 23_564_800
    assert summary["layers"] == 102
    assert summary["tensors"] == len(load_safetensors(out)) == len(ResNet50V2Backbone().state_dict())
    model = create_defakenet(weights=out).eval()
    assert np.abs(_pooled(model, x) - keras_pooled).max() < 1e-4


def test_timm_resnetv2_checkpoint_loads_as_initialisation(tmp_path):
    timm = pytest.importorskip("timm")
    timm_state = timm.create_model("resnetv2_50", pretrained=False).state_dict()
    torch.save(timm_state, tmp_path / "timm.pth")
    backbone = load_backbone_weights(ResNet50V2Backbone(), tmp_path / "timm.pth")
    ours = backbone.state_dict()
    parts = {"norm1": "preact_bn", "conv1": "1_conv", "norm2": "1_bn", "conv2": "2_conv", "norm3": "2_bn",
             "conv3": "3_conv", "downsample.conv": "0_conv"}
    compared = 0
    for key, value in timm_state.items():
        if key.startswith("head.") or key.endswith("num_batches_tracked"):
            continue
        if key.startswith("stages."):
            _, stage, _, block, rest = key.split(".", 4)
            part, param = rest.rsplit(".", 1)
            our_key = f"conv{int(stage) + 2}.block{int(block) + 1}.{parts[part]}.{param}"
        else:
            our_key = key.replace("stem.conv.", "conv1_conv.").replace("norm.", "post_bn.")
        assert torch.equal(ours[our_key], value), key
        compared += 1
    assert compared == 270 - 21  # every keras weight except the 21 conv biases timm lacks
    assert not ours["conv1_conv.bias"].any() and not ours["conv3.block1.3_conv.bias"].any()


def test_safetensors_and_torch_state_dicts_round_trip(tmp_path):
    torch.manual_seed(0)
    source = DeFakeNet()
    expected = source.backbone.state_dict()
    save_safetensors(expected, tmp_path / "b.safetensors")
    assert all(torch.equal(v, expected[k]) for k, v in load_safetensors(tmp_path / "b.safetensors").items())
    loaded = load_backbone_weights(ResNet50V2Backbone(), tmp_path / "b.safetensors").state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # a whole DeFakeNet state dict in torch format: the backbone. keys are picked, the head is ignored
    torch.save(source.state_dict(), tmp_path / "model.pt")
    loaded = load_backbone_weights(ResNet50V2Backbone(), tmp_path / "model.pt").state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    state = ResNet50V2Backbone().state_dict()
    state["conv2.block1.1_conv.weight"] = torch.zeros(64, 64, 3, 3)
    save_safetensors(state, tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match=r"conv2\.block1\.1_conv\.weight.*\(64, 64, 3, 3\).*\(64, 64, 1, 1\)"):
        load_backbone_weights(ResNet50V2Backbone(), tmp_path / "bad.safetensors")


class _NotATensor:
    pass


def test_unreadable_files_are_data_errors_naming_the_path(tmp_path):
    garbage = tmp_path / "weights.h5"
    garbage.write_bytes(b"this is not hdf5" * 8)
    with pytest.raises(DataError, match="weights.h5.*not an HDF5 file"):
        import_keras_h5(garbage)
    with pytest.raises(DataError, match="weights.h5.*unrecognised"):
        load_backbone_weights(ResNet50V2Backbone(), garbage)
    with pytest.raises(DataError, match="missing.h5.*no such file"):
        import_keras_h5(tmp_path / "missing.h5")
    # a pickle with code in it is refused, never unpickled
    torch.save({"x": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="evil.pt.*weights_only"):
        load_backbone_weights(ResNet50V2Backbone(), tmp_path / "evil.pt")


def _random_full_state(seed: int) -> dict[str, torch.Tensor]:
    # a full backbone with random weights and random BN running stats, so every tensor tells the copies apart
    torch.manual_seed(seed)
    state = ResNet50V2Backbone().state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", ".bias")):
            state[key] = torch.rand_like(value) + 0.5
    return state


def test_full_backbone_file_loads_into_a_truncated_backbone(tmp_path):
    source = _random_full_state(0)
    save_safetensors(source, tmp_path / "full.safetensors")
    torch.manual_seed(1)
    backbone = ResNet50V2Backbone(stages=2)
    post_before = {k: v.clone() for k, v in backbone.state_dict().items() if k.startswith("post_bn.")}
    load_backbone_weights(backbone, tmp_path / "full.safetensors")
    loaded = backbone.state_dict()
    assert not any(k.startswith(("conv4.", "conv5.")) for k in loaded)
    kept = [k for k in loaded if not k.startswith("post_bn.")]
    assert len(kept) == len([k for k in source if k.startswith(("conv1_conv.", "conv2.", "conv3."))])
    assert all(torch.equal(loaded[k], source[k]) for k in kept)
    # post_bn is 512 wide here, 2048 in the file: skipped, its own initialisation kept
    assert all(torch.equal(loaded[k], v) for k, v in post_before.items())
    assert source["post_bn.weight"].shape == (2048,) and loaded["post_bn.weight"].shape == (512,)
    # the same through the constructor, with a filter in front: a whole DeFakeNet state dict in torch format
    torch.save({f"backbone.{k}": v for k, v in source.items()}, tmp_path / "model.pt")
    model = create_defakenet(weights=tmp_path / "model.pt", stages=2, input_filter="srm")
    state = model.backbone.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in kept)
    assert "input_filter.kernel" in model.state_dict()


def test_truncated_backbone_still_checks_the_layers_it_keeps(tmp_path):
    source = _random_full_state(0)
    bad = dict(source)
    bad["conv3.block2.1_conv.weight"] = torch.zeros(128, 512, 3, 3)
    save_safetensors(bad, tmp_path / "shape.safetensors")
    with pytest.raises(DataError, match=r"conv3\.block2\.1_conv\.weight.*\(128, 512, 3, 3\).*\(128, 512, 1, 1\)"):
        load_backbone_weights(ResNet50V2Backbone(stages=2), tmp_path / "shape.safetensors")
    missing = {k: v for k, v in source.items() if not k.startswith("conv3.block4.")}
    save_safetensors(missing, tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match=r"missing \d+ \[conv3\.block4\."):
        load_backbone_weights(ResNet50V2Backbone(stages=2), tmp_path / "missing.safetensors")
    extra = dict(source, **{"conv2.block9.1_conv.weight": torch.zeros(1)})
    save_safetensors(extra, tmp_path / "extra.safetensors")
    with pytest.raises(DataError, match=r"unexpected 1 \[conv2\.block9\.1_conv\.weight\]"):
        load_backbone_weights(ResNet50V2Backbone(stages=3), tmp_path / "extra.safetensors")
    # the full network is as strict as before: a file without conv5 does not load
    save_safetensors({k: v for k, v in source.items() if not k.startswith("conv5.")}, tmp_path / "no5.safetensors")
    with pytest.raises(DataError, match=r"missing \d+ \[conv5\."):
        load_backbone_weights(ResNet50V2Backbone(), tmp_path / "no5.safetensors")


def test_truncated_backbone_from_a_truncated_file_keeps_post_bn(tmp_path):
    torch.manual_seed(0)
    source = ResNet50V2Backbone(stages=2)
    source.post_bn.running_mean.uniform_(-1, 1)
    expected = source.state_dict()
    save_safetensors(expected, tmp_path / "s2.safetensors")
    # same depth: post_bn has the same width and is loaded too
    loaded = load_backbone_weights(ResNet50V2Backbone(stages=2), tmp_path / "s2.safetensors").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    # into a shallower one: conv3 dropped, post_bn (512 in the file, 256 here) skipped
    one = load_backbone_weights(ResNet50V2Backbone(stages=1), tmp_path / "s2.safetensors").state_dict()
    assert all(torch.equal(one[k], expected[k]) for k in one if not k.startswith("post_bn."))
    # and not into a deeper one: conv4 and conv5 are missing
    with pytest.raises(DataError, match=r"missing \d+ \[conv4\."):
        load_backbone_weights(ResNet50V2Backbone(stages=3), tmp_path / "s2.safetensors")


def test_keras_h5_loads_into_a_truncated_backbone(keras_reference):
    path = keras_reference[0]
    full = import_keras_h5(path)
    model = create_defakenet(weights=path, stages=3, input_filter="npr")
    state = model.backbone.state_dict()
    kept = [k for k in state if not k.startswith("post_bn.")]
    assert all(torch.equal(state[k], full[k]) for k in kept)
    assert not any(k.startswith("conv5.") for k in state) and state["post_bn.weight"].shape == (1024,)
