import copy

import pytest
import torch

from src.learners.cooperative_step import (
    CooperativeConfig,
    add_input_noise,
    build_optimizer,
    cooperative_step,
    generate_hard_examples,
    hard_example_losses,
    standard_losses,
)
from src.models.cooperative_net import PART_NAMES, CooperativeNet
from src.models.freezable_batchnorm import FreezableBatchNorm2d

SIZE = 32


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny convolutions run fastest on one thread, and much slower when threads fight a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _batch(seed: int = 0, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, SIZE, SIZE, generator=g)
    label = torch.randint(0, 4, (b, SIZE, SIZE), generator=g)
    return image, label


def _net(seed: int = 0) -> CooperativeNet:
    torch.manual_seed(seed)
    return CooperativeNet().train()


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def _codes(net, image, label, cfg):
    noisy = add_input_noise(image, cfg.input_noise_std, generator=torch.Generator().manual_seed(0))
    _, z_i, z_s = standard_losses(net, image, noisy, label, cfg)
    return z_i, z_s


@pytest.mark.parametrize("scheme", ["dropout", "channel", "spatial"])
def test_hard_example_generation_freezes_decoders_and_bn_stats(scheme):
    net = _net()
    image, label = _batch()
    cfg = CooperativeConfig(image_code_scheme=scheme, shape_code_scheme=scheme)
    z_i, z_s = _codes(net, image, label, cfg)
    net.zero_grad(set_to_none=True)
    before = _buffers(net)
    hard = generate_hard_examples(net, z_i, z_s, image, label, cfg, torch.Generator().manual_seed(1))

    after = _buffers(net)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"buffer {key} changed"
    for part in ("image_decoder", "segmentation_decoder"):
        for name, p in getattr(net, part).named_parameters():
            assert p.grad is None, f"{part}.{name} got a gradient"
            assert p.requires_grad, f"{part}.{name} left frozen"
    assert not any(isinstance(m, FreezableBatchNorm2d) and m.frozen for m in net.modules())
    assert hard.image.shape == image.shape and hard.segmentation_logits.shape == (2, 4, SIZE, SIZE)
    assert not hard.image.requires_grad and not hard.segmentation_logits.requires_grad
    assert (hard.image_code_scheme, hard.shape_code_scheme) == (scheme, scheme)


def test_hard_examples_differ_from_plain_decoding():
    net = _net()
    image, label = _batch()
    cfg = CooperativeConfig(image_code_scheme="channel", shape_code_scheme="spatial", max_mask_fraction=1.0)
    z_i, z_s = _codes(net, image, label, cfg)
    hard = generate_hard_examples(net, z_i, z_s, image, label, cfg, torch.Generator().manual_seed(5))
    assert (hard.masks["image_code"] < 1).any() and (hard.masks["shape_code"] < 1).any()
    with torch.no_grad():
        plain = net.image_decoder(z_i)
    assert not torch.allclose(hard.image, plain)


def test_hard_losses_with_all_bn_frozen_leave_bn_affine_and_stats_alone():
    net = _net()
    image, label = _batch()
    cfg = CooperativeConfig(hard_example_bn="all")
    z_i, z_s = _codes(net, image, label, cfg)
    hard = generate_hard_examples(net, z_i, z_s, image, label, cfg, torch.Generator().manual_seed(2))
    net.zero_grad(set_to_none=True)
    before = _buffers(net)
    sum(hard_example_losses(net, hard, image, label, cfg).values()).backward()
    for key, value in _buffers(net).items():
        assert torch.equal(before[key], value), key
    bn = [m for m in net.modules() if isinstance(m, FreezableBatchNorm2d)]
    assert all(m.weight.grad is None and m.bias.grad is None for m in bn)
    for part in PART_NAMES:  # but every part's convolutions learn from the hard examples
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(net, part).parameters()), part


def test_hard_losses_unfrozen_mode_trains_bn():
    net = _net()
    image, label = _batch()
    cfg = CooperativeConfig(hard_example_bn="none")
    z_i, z_s = _codes(net, image, label, cfg)
    hard = generate_hard_examples(net, z_i, z_s, image, label, cfg, torch.Generator().manual_seed(2))
    before = _buffers(net)
    sum(hard_example_losses(net, hard, image, label, cfg).values()).backward()
    assert not torch.equal(before["encoder.input_block.1.running_mean"], net.encoder.input_block[1].running_mean)
    assert net.encoder.input_block[1].weight.grad is not None


def test_hard_losses_reference_mode_freezes_bn_except_the_image_decoder():
    """The reference: BN of encoder, code filter, segmentation decoder and STN frozen on hard-example passes
    (no running-statistics update, no affine gradient); only the image decoder's pass tracks and trains BN."""
    assert CooperativeConfig().hard_example_bn == "reference"  # the default is the reference
    net = _net()
    image, label = _batch()
    cfg = CooperativeConfig()
    z_i, z_s = _codes(net, image, label, cfg)
    hard = generate_hard_examples(net, z_i, z_s, image, label, cfg, torch.Generator().manual_seed(2))
    net.zero_grad(set_to_none=True)
    before = _buffers(net)
    sum(hard_example_losses(net, hard, image, label, cfg).values()).backward()
    after = _buffers(net)
    for part in ("encoder", "code_filter", "segmentation_decoder", "stn"):
        for key in (k for k in before if k.startswith(part + ".")):
            assert torch.equal(before[key], after[key]), key
        bn = [m for m in getattr(net, part).modules() if isinstance(m, FreezableBatchNorm2d)]
        assert bn and all(m.weight.grad is None and m.bias.grad is None for m in bn), part
    decoder_bn = [m for m in net.image_decoder.modules() if isinstance(m, FreezableBatchNorm2d)]
    running = [k for k in before if k.startswith("image_decoder.") and k.endswith("running_mean")]
    assert running and all(not torch.equal(before[k], after[k]) for k in running)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in decoder_bn)
    for part in PART_NAMES:  # every part's convolutions learn from the hard examples
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(net, part).parameters()), part


def test_one_cooperative_step_changes_every_part():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    image, label = _batch()
    report = cooperative_step(net, build_optimizer(net), image, label, generator=torch.Generator().manual_seed(0))
    after = net.state_dict()
    for part in PART_NAMES:
        params = [k for k, _ in getattr(net, part).named_parameters()]
        changed = [k for k in params if not torch.equal(before[f"{part}.{k}"], after[f"{part}.{k}"])]
        assert len(changed) == len(params), f"{part}: unchanged {set(params) - set(changed)}"
    expected_terms = {"standard/seg", "standard/image", "standard/gt_shape", "standard/pred_shape",
                      "hard/seg", "hard/image", "hard/pred_shape", "hard/masked_shape"}
    assert expected_terms <= report.keys()
    assert report["loss"] == pytest.approx(sum(report[k] for k in expected_terms), rel=1e-5)


def test_all_frozen_bn_mode_keeps_running_stats_equal_to_the_standard_step():
    image, label = _batch()
    nets = {}
    for latent_da in (False, True):
        net = _net()
        cfg = CooperativeConfig(latent_da=latent_da, hard_example_bn="all")
        cooperative_step(net, build_optimizer(net), image, label, cfg, torch.Generator().manual_seed(0))
        nets[latent_da] = net
    standard, cooperative = _buffers(nets[False]), _buffers(nets[True])
    for key in standard:
        assert torch.equal(standard[key], cooperative[key]), key
    # the parameters, however, differ: the hard examples contributed to the update
    assert not torch.equal(nets[False].encoder.input_block[0].weight, nets[True].encoder.input_block[0].weight)


def test_step_is_reproducible_by_seed():
    image, label = _batch()
    reports, states = [], []
    for _ in range(2):
        net = _net()
        opt = build_optimizer(net)
        g = torch.Generator().manual_seed(11)
        reports.append([cooperative_step(net, opt, image, label, generator=g) for _ in range(2)])
        states.append(net.state_dict())
    assert reports[0] == reports[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_steps_reduce_the_loss_on_a_fixed_batch():
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    image, label = _batch()
    label = (image[:, 0] > 0.5).long() * 2  # learnable: class from intensity
    cfg = CooperativeConfig()
    g = torch.Generator().manual_seed(0)
    first = cooperative_step(net, opt, image, label, cfg, g)
    for _ in range(6):
        last = cooperative_step(net, opt, image, label, cfg, g)
    assert last["standard/seg"] < 0.8 * first["standard/seg"]


def test_bad_inputs():
    net = _net()
    opt = build_optimizer(net)
    image, label = _batch()
    with pytest.raises(ValueError, match=r"label shape \(2, 16, 16\) does not match image shape \(2, 1, 32, 32\)"):
        cooperative_step(net, opt, image, label[:, :16, :16])
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 3\], got range \[0, 7\]"):
        cooperative_step(net, opt, image, label * 7 // 3)
    with pytest.raises(ValueError, match="image contains NaN"):
        cooperative_step(net, opt, image * float("nan"), label)
    with pytest.raises(ValueError, match="multiples of 16, got 30x30"):
        cooperative_step(net, opt, image[..., :30, :30], label[..., :30, :30])
    with pytest.raises(ValueError, match="image_code_scheme must be one of .* got 'mixup'"):
        CooperativeConfig(image_code_scheme="mixup")
    with pytest.raises(ValueError, match="hard_example_bn must be one of .* got 'digest'"):
        CooperativeConfig(hard_example_bn="digest")
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got 1.0"):
        CooperativeConfig(dropout_p=1.0)
    with pytest.raises(ValueError, match=r"max_mask_fraction must be in \[0, 1\], got 2"):
        CooperativeConfig(max_mask_fraction=2)
    with pytest.raises(ValueError, match="learning_rate must be > 0, got 0"):
        CooperativeConfig(learning_rate=0)


def test_plain_training_uses_only_the_segmentation_path():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    image, label = _batch()
    cfg = CooperativeConfig(latent_da=False, cooperative=False)
    report = cooperative_step(net, build_optimizer(net), image, label, cfg, torch.Generator().manual_seed(0))
    assert {k for k in report if k.startswith(("standard/", "hard/"))} == {"standard/seg"}
    after = net.state_dict()
    for part in ("image_decoder", "stn"):  # unused: no gradient, so Adam leaves them exactly as they were
        assert all(torch.equal(before[k], after[k]) for k in after if k.startswith(part + ".")
                   and "running" not in k and "num_batches" not in k), part
    assert not torch.equal(before["encoder.input_block.0.weight"], after["encoder.input_block.0.weight"])
    with pytest.raises(ValueError, match="latent_da=True needs cooperative=True"):
        CooperativeConfig(cooperative=False)
