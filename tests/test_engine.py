"""The plain-PyTorch steps on CPU: the mixed-precision (bf16 autocast) and channels_last code paths that the GPU
path takes, run for real on the CPU so that a mistake in them fails here, not first on a cluster."""

import pytest
import torch

from defakenet.engine import predict, train_one_epoch
from defakenet.inference import autocast
from defakenet.model import create_defakenet


def _batches(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(4, 3, size, size, generator=g) * 2 - 1, torch.tensor([0.0, 1.0, 0.0, 1.0])) for _ in range(n)]


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # a CUDA autocast object is still built and read
def test_autocast_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not isinstance(autocast(cpu, "auto"), torch.autocast)  # auto = no autocast on CPU
    assert autocast(cuda, "auto").fast_dtype == torch.bfloat16
    assert autocast(cuda, "fp16").fast_dtype == torch.float16
    assert autocast(cpu, "bf16").fast_dtype == torch.bfloat16
    assert not isinstance(autocast(cuda, "off"), torch.autocast)


def test_bf16_autocast_and_channels_last_train_and_predict_like_fp32():
    torch.manual_seed(0)
    ref = create_defakenet(dropout=0.0, freeze_depth=3)
    mixed = create_defakenet(dropout=0.0, freeze_depth=3)
    mixed.load_state_dict(ref.state_dict())
    mixed = mixed.to(memory_format=torch.channels_last)
    data = _batches()
    # predictions: bf16 autocast + channels_last agree with fp32 contiguous to bf16 precision
    _, p_ref = predict(ref, data, device=torch.device("cpu"), amp="off")
    _, p_mix = predict(mixed, data, device=torch.device("cpu"), amp="bf16", channels_last=True)
    assert p_mix.dtype == p_ref.dtype and p_mix.shape == (8,)
    assert abs(p_mix - p_ref).max() < 0.05
    # one training pass under bf16 autocast + channels_last moves the trainable weights, keeps them fp32 and finite
    before = mixed.head.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in mixed.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = train_one_epoch(mixed, data, opt, sched, device=torch.device("cpu"), amp="bf16", channels_last=True,
                            grad_clip=1.0)
    assert stats["images"] == 8 and torch.isfinite(torch.tensor(stats["loss"]))
    assert mixed.head.weight.dtype == torch.float32 and not torch.equal(mixed.head.weight, before)
    frozen = dict(mixed.named_parameters())["backbone.conv1_conv.weight"]
    assert torch.equal(frozen, dict(ref.named_parameters())["backbone.conv1_conv.weight"])  # frozen stem untouched


class _Seen(torch.nn.Module):
    """A linear classifier that keeps the images it was shown (to see what mixup feeds the network)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.fc(x.flatten(1)).squeeze(1)


def test_mixup_blends_each_batch_with_a_shuffled_copy_of_itself():
    data = _batches(n=3, size=8, seed=1)
    for alpha, mixed in ((0.0, False), (0.4, True)):
        torch.manual_seed(0)
        model = _Seen()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        train_one_epoch(model, data, opt, sched, device=torch.device("cpu"), mixup_alpha=alpha)
        for (x, _), seen in zip(data, model.inputs):
            assert torch.allclose(seen.mean(0), x.mean(0), atol=1e-6)  # a permutation keeps the batch mean
            assert torch.equal(seen, x) is not mixed
            if mixed:  # row i is lam * x_i + (1 - lam) * x_j for one lam of the batch and some j
                lams = {round(_blend(s, x[i], x), 4) for i, s in enumerate(seen) if not torch.equal(s, x[i])}
                assert len(lams) == 1 and 0 < lams.pop() < 1


def _blend(s, xi, x) -> float:
    """The lam with s = lam * xi + (1 - lam) * x_j for some row x_j of x (an assertion error if there is none)."""
    for xj in x:
        d = (xi - xj).flatten()
        if d.abs().max() == 0:
            continue
        lam = torch.dot((s - xj).flatten(), d) / d.square().sum()
        if (s - xj - lam * (xi - xj)).abs().max() < 1e-5:
            return float(lam)
    raise AssertionError("not a blend of two rows of the batch")


def test_random_erasing_zeroes_holes():
    import numpy as np

    from defakenet.config import AugmentConfig, DataConfig
    from defakenet.data.augment import Preprocess

    img = np.random.default_rng(0).integers(1, 256, (64, 64, 3), dtype=np.uint8)  # no zero pixel anywhere
    data = DataConfig(image_size=64, input_policy="crop")
    plain = AugmentConfig(flip_p=0, jitter_p=0, jpeg_p=0, blur_p=0, noise_p=0)
    assert (Preprocess(data, plain, "tf", seed=0)(img) > -1).all()
    erased = Preprocess(data, AugmentConfig(**{**plain.__dict__, "erase_p": 1.0}), "tf", seed=0)(img)
    holes = (erased == -1).all(axis=0)  # a zero pixel is -1 in tf mode, in every channel
    assert 0.01 < holes.mean() < 0.2
