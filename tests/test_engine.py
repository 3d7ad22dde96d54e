"""The plain-PyTorch steps on CPU: the mixed-precision (bf16 autocast) and channels_last code paths that the GPU
path takes, run for real on the CPU so that a mistake in them fails here, not first on a cluster."""

import pytest
import torch

from defakenet.engine import autocast, predict, train_one_epoch
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
