"""Masked updates: AND / PROB / focus / SalUn, applied after the optimiser's transform."""

import copy

import pytest
import torch
from torch import nn

from models.architectures import build_model
from models.datasets import SampleDataset
from models.unlearning import masks as M
from models.unlearning import run_method
from models.unlearning.engine import sgd
from models.unlearning.methods import salun_mask


def test_prob_with_zero_variance_equals_and_at_one_half() -> None:
    gen = torch.Generator().manual_seed(0)
    g_u, g_c = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    g_u[:50] = 0.0  # exact zeros follow the same tie rule in both
    zero = torch.zeros(1000)
    assert torch.equal(M.prob_mask(g_u, zero, g_c, zero, 0.5), M.and_mask(g_u, g_c))


def test_prob_mask_drops_coordinates_whose_sign_is_uncertain() -> None:
    mean_u, mean_c = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    se = torch.tensor([0.01, 100.0])  # second coordinate: agreement is a coin flip
    pi = M.agreement_probability(mean_u, se, mean_c, se)
    assert pi[0] > 0.99 and abs(float(pi[1]) - 0.5) < 0.01
    assert M.prob_mask(mean_u, se, mean_c, se, 0.7).tolist() == [True, False]


def test_masked_parameters_are_bit_identical_after_a_step_with_momentum_and_decay() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    x = torch.randn(8, 5)
    for _ in range(3):  # build up momentum on every coordinate
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        opt.step()
    ps = list(lin.parameters())
    masks = [torch.rand_like(p) > 0.5 for p in ps]
    opt.zero_grad()
    lin(x).pow(2).sum().backward()
    before = [p.detach().clone() for p in ps]
    opt.step()
    stepped = [p.detach().clone() for p in ps]
    M.apply_update_mask(ps, before, masks, binary=True)
    for p, b, s, m in zip(ps, before, stepped, masks, strict=True):
        assert torch.equal(p[~m], b[~m])  # frozen exactly, despite momentum and weight decay
        assert torch.equal(p[m], s[m])
        assert not torch.equal(s[~m], b[~m])  # the optimiser alone would have moved them


def test_focus_update_has_the_norm_of_the_masked_update() -> None:
    before = [torch.zeros(4)]
    params = [torch.tensor([1.0, 2.0, 3.0, 4.0])]
    weights = [torch.tensor([0.0, 0.5, 1.0, 0.25])]
    M.apply_update_mask(params, before, weights, binary=False)
    kept = torch.tensor([0.0, 2.0, 3.0, 4.0]).norm()
    torch.testing.assert_close(params[0].norm(), kept)
    assert params[0][0] == 0.0 and params[0][2] / params[0][1] == 3.0 / 1.0  # (1.0·3) / (0.5·2)


def test_salun_mask_keeps_the_requested_fraction() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", in_features=4, hidden=(8,), num_classes=3)
    data = SampleDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)), [str(i) for i in range(16)])
    mask = salun_mask(model, data, keep=0.3)
    kept = sum(int(m.sum()) for m in mask) / sum(m.numel() for m in mask)
    assert abs(kept - 0.3) < 0.02


def test_salun_masked_method_never_moves_unmasked_weights(digits_model, digits_random10) -> None:
    forget, retain = digits_random10
    model = copy.deepcopy(digits_model)
    mask = salun_mask(model, forget, keep=0.5)
    params = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01, "epochs": 2}
    run_method("random_label", model, forget, retain, {**params, "mask": "salun", "salun_keep": 0.5})
    moved = 0
    for p0, p1, m in zip(digits_model.parameters(), model.parameters(), mask, strict=True):
        assert torch.equal(p1[~m], p0[~m])
        moved += int((p1[m] != p0[m]).sum())
    assert moved > 0


def _repeated(x: torch.Tensor, y: int, n: int, prefix: str) -> SampleDataset:
    return SampleDataset(
        x.expand(n, *x.shape).clone(), torch.full((n,), y), [f"{prefix}{i}" for i in range(n)]
    )


def test_prob_step_equals_and_step_when_micro_batches_are_identical() -> None:
    """Every micro-batch holds the same samples, so the gradients have zero variance: PROB(p=1/2) = AND."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=6, hidden=(16,), num_classes=3)
    x = torch.randn(2, 6)
    forget, retain = _repeated(x[0], 0, 8, "f"), _repeated(x[1], 1, 8, "r")
    common = {
        "epochs": 1,
        "batch_size": 8,
        "mask_groups": 4,
        "mask_p": 0.5,
        "momentum": 0.0,
        "bounded": False,
    }
    a = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, {**common, "mask": "and"})
    b = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, {**common, "mask": "prob"})
    changed = 0
    for pa, pb, p0 in zip(a.parameters(), b.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
        changed += int((pa != p0).sum())
    assert changed > 0


@pytest.mark.parametrize("fused", [False, True], ids=["per-tensor", "fused (the step loops')"])
def test_a_coordinate_masked_at_one_step_does_not_move_at_the_next_where_its_gradient_is_zero(fused) -> None:
    """SGD's momentum must not remember a vetoed gradient: masked at step 1 (gradient 5), kept at step 2
    with gradient 0, the coordinate stays where it was."""
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = sgd([w], 0.1, 0.9, 0.0) if fused else torch.optim.SGD([w], lr=0.1, momentum=0.9)
    assert bool(opt.defaults["fused"]) == fused
    w.grad = torch.tensor([5.0, 5.0])
    M.masked_step(opt, [w], [torch.tensor([False, True])], binary=True)
    assert w[0].item() == 1.0 and w[1].item() < 1.0
    w.grad = torch.tensor([0.0, 0.0])
    M.masked_step(opt, [w], [torch.tensor([True, True])], binary=True)
    assert w[0].item() == 1.0  # before the fix, momentum carried step 1's vetoed gradient: 1 - 0.1 * 4.5
    assert w[1].item() < 0.5  # the kept coordinate keeps its momentum


def test_prob_keeps_more_than_and_at_the_papers_default_p() -> None:
    """At the default p = 0.45, PROB keeps coordinates whose agreement is uncertain (pi near 1/2), which
    AND would drop when the noisy signs differ; at p = 0.5 it would be AND exactly."""
    from models.unlearning.params import parse_params

    assert parse_params("ugradsl_plus", {}).mask_p == 0.45
    mean_u, mean_c = torch.tensor([1.0, 1.0]), torch.tensor([-0.01, -1.0])
    se = torch.tensor([1.0, 0.01])
    assert M.prob_mask(mean_u, se, mean_c, se, 0.45).tolist() == [True, False]
    assert M.and_mask(mean_u, mean_c).tolist() == [False, False]


# -- Student's t for few micro-batch groups ---------------------------------------------------------------


def test_student_t_cdf_matches_scipy_for_every_small_dof() -> None:
    import scipy.stats

    from models.unlearning.masks import NORMAL_DOF, student_t_cdf

    t = torch.linspace(-12, 12, 241, dtype=torch.float64)
    for dof in range(1, NORMAL_DOF + 1):
        expected = torch.from_numpy(scipy.stats.t.cdf(t.numpy(), dof))
        assert torch.allclose(student_t_cdf(t, dof), expected, atol=1e-9), dof


def test_with_few_groups_the_agreement_is_less_certain_than_the_normal_claims() -> None:
    from models.unlearning.masks import agreement_probability, prob_mask

    mean_u, mean_c = torch.tensor([1.0, 2.0, -3.0]), torch.tensor([1.0, 2.0, -3.0])
    se = torch.ones(3)
    normal = agreement_probability(mean_u, se, mean_c, se)
    few = agreement_probability(mean_u, se, mean_c, se, dof=3)  # four groups
    assert torch.all(few < normal) and torch.all(few > 0.5)
    # A coordinate the normal keeps at p = 0.7 is vetoed once the standard error's own noise counts.
    assert prob_mask(mean_u, se, mean_c, se, 0.7).tolist() == [True, True, True]
    assert prob_mask(mean_u, se, mean_c, se, 0.7, dof=3).tolist() == [False, True, True]
    # Exact zeros of the standard error keep the noise-free limit.
    exact = agreement_probability(mean_u, torch.zeros(3), mean_c, torch.zeros(3), dof=3)
    assert exact.tolist() == [1.0, 1.0, 1.0]


def test_the_fused_step_agrees_with_the_per_tensor_one_to_float_rounding() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    opts = [torch.optim.SGD(nets[0].parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4),
            sgd(list(nets[1].parameters()), 0.05, 0.9, 5e-4)]  # fmt: skip
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for _ in range(50):
        for net, opt in zip(nets, opts, strict=True):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b, s in zip(nets[0].parameters(), nets[1].parameters(), start, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
        assert not torch.allclose(a, s, atol=1e-3, rtol=0)  # both moved well beyond the difference
