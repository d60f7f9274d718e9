"""The regularised refit as pure math, against direct computations (oracles)."""

import math

import pytest
import torch

from interprune.preserve.compensate import held_out_rows
from interprune.preserve.refit import channel_moments, choose_strength, held_out_error, moments, ridge_towards


def _data(n=64, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 10, d, dtype=torch.float64)
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    return x, w, g


def test_ridge_towards_the_prior_is_the_augmented_least_squares_solution():
    x, w, g = _data()
    y = x @ w + 0.1 * torch.randn(64, 3, generator=g, dtype=torch.float64)
    w0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    lam = 0.3
    d = (x * x).sum(0) * lam  # the penalty is each feature's own energy times the strength
    design = torch.cat([x, torch.diag(d.sqrt())])
    target = torch.cat([y, d.sqrt()[:, None] * w0])
    oracle = torch.linalg.lstsq(design, target).solution
    assert torch.allclose(ridge_towards(moments(x, y), w0, lam), oracle, atol=1e-10)
    assert torch.equal(ridge_towards(moments(x, y), w0, math.inf), w0)
    assert torch.allclose(ridge_towards(moments(x, y), w0, 0.0), torch.linalg.lstsq(x, y).solution, atol=1e-10)


def test_held_out_error_from_statistics_equals_the_residual_norm():
    x, w, g = _data()
    y = torch.randn(64, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(held_out_error(moments(x, y), w), ((x @ w - y) ** 2).sum(), rtol=1e-10)


def test_statistics_add_over_mini_batches():
    x, w, g = _data()
    y = x @ w
    whole, parts = moments(x, y), moments(x[:20], y[:20]) + moments(x[20:], y[20:])
    assert whole.n == parts.n == 64
    for a, b in ((whole.xx, parts.xx), (whole.xy, parts.xy), (whole.yy, parts.yy)):
        assert torch.allclose(a, b)


def test_channel_moments_are_one_gain_and_shift_problem_per_channel():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    stats = channel_moments(x, y)
    for c in range(4):
        design = torch.stack([x[:, c], torch.ones(50)], 1)
        oracle = moments(design, y[:, c:c + 1])
        assert torch.allclose(stats.xx[c], oracle.xx) and torch.allclose(stats.xy[c], oracle.xy)
        assert torch.allclose(stats.yy[c], oracle.yy)


def test_held_out_rows_are_whole_examples():
    held = held_out_rows(torch.Size([8, 3, 5]), 8)
    assert held.tolist() == [i % 4 == 3 for i in range(8) for _ in range(3)]
    assert not held_out_rows(torch.Size([3, 2, 5]), 3).any()  # too few examples: nothing held out


def test_strength_follows_the_held_out_error():
    """A refit that only fits noise loses to the prior on held-out rows; one that finds a real relation wins."""
    x, w, g = _data(n=40, d=30, k=2)
    noise = lambda n: torch.randn(n, 2, generator=g, dtype=torch.float64)  # noqa: E731
    x_h = torch.randn(40, 30, generator=g, dtype=torch.float64)
    # the prior is the truth and the fit rows are noisy: keep the prior (or nearly)
    fit, held = moments(x, x @ w + 3 * noise(40)), moments(x_h, x_h @ w + 3 * noise(40))
    choice = choose_strength(fit, held, w)
    assert choice.strength >= 1 and choice.errors[math.inf] == 1.0
    # the prior is wrong and the data clean: a weak pull, and a refit far better than the prior
    wrong = torch.zeros_like(w)
    choice = choose_strength(moments(x, x @ w), moments(x_h, x_h @ w), wrong)
    assert choice.strength <= 1e-2 and min(choice.errors.values()) < 1e-3
    # never worse than the prior on the held-out rows: the prior is a candidate
    choice = choose_strength(fit, held, wrong)
    assert min(choice.errors.values()) <= choice.errors[math.inf]


def test_choosing_by_blocks_of_columns_equals_choosing_at_once():
    x, w, g = _data(n=96, d=6, k=40)
    y = x @ w + 0.5 * torch.randn(96, 40, generator=g, dtype=torch.float64)
    w0 = w + 0.3 * torch.randn(6, 40, generator=g, dtype=torch.float64)
    fit, held = moments(x[:72], y[:72]), moments(x[72:], y[72:])
    whole = choose_strength(fit, held, w0)
    blocks = choose_strength(fit, held, w0, block_bytes=8 * 6 * 7)  # 7 columns a block: 6 blocks, the last short
    assert blocks.strength == whole.strength and 0 < whole.strength < math.inf
    assert torch.allclose(blocks.weight, whole.weight, atol=1e-12)
    assert all(abs(blocks.errors[s] - whole.errors[s]) < 1e-12 for s in whole.errors)
    assert whole.errors[whole.strength] < 1  # the refit helps on these held-out rows


def test_a_float32_prior_gives_the_float64_refit_rounded_once():
    """A layer's chosen weights are kept in its own dtype and widened a block of columns at a time (an output
    layer over 30,000 words held 125 MB more as a float64 prior): the refit is the float64 one, rounded to float32."""
    x, w, g = _data(n=96, d=6, k=40)
    y = x @ w + 0.5 * torch.randn(96, 40, generator=g, dtype=torch.float64)
    w0 = (w + 0.3 * torch.randn(6, 40, generator=g, dtype=torch.float64)).float()
    fit, held = moments(x[:72], y[:72]), moments(x[72:], y[72:])
    wide = choose_strength(fit, held, w0.double())
    narrow = choose_strength(fit, held, w0, block_bytes=8 * 6 * 7)
    assert narrow.weight.dtype == torch.float32 and narrow.strength == wide.strength
    assert torch.equal(narrow.weight, wide.weight.float())
    assert narrow.errors == pytest.approx(wide.errors, rel=1e-12)


def test_strengths_from_one_decomposition_equal_a_solve_each():
    x, w, g = _data(n=80, d=6, k=9, seed=3)
    y = x @ w + 0.5 * torch.randn(80, 9, generator=g, dtype=torch.float64)
    w0 = w + 0.3 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    fit, held = moments(x[:60], y[:60]), moments(x[60:], y[60:])
    choice = choose_strength(fit, held, w0)
    base = float(held_out_error(held, w0).sum())
    for s, relative in choice.errors.items():  # the oracle: solve for each strength, error from the residuals
        direct = float(((x[60:] @ ridge_towards(fit, w0, s) - y[60:]) ** 2).sum()) / base
        assert abs(relative - direct) < 1e-9 * max(1.0, direct)
    # batched problems (a norm's channels) too
    xs = torch.randn(3, 50, 2, generator=g, dtype=torch.float64)
    ys = xs @ torch.randn(3, 2, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(3, 50, 1, generator=g,
                                                                                         dtype=torch.float64)
    fit, held = moments(xs[:, :40], ys[:, :40]), moments(xs[:, 40:], ys[:, 40:])
    w0 = torch.zeros(3, 2, 1, dtype=torch.float64)
    choice = choose_strength(fit, held, w0)
    base = float(held_out_error(held, w0).sum())
    for s, relative in choice.errors.items():
        direct = float(((xs[:, 40:] @ ridge_towards(fit, w0, s) - ys[:, 40:]) ** 2).sum()) / base
        assert abs(relative - direct) < 1e-9 * max(1.0, direct)


def test_layers_reading_one_input_share_x_t_x_and_one_decomposition():
    """Queries, keys and values read one input: their statistics hold one ``X^T X`` (summed once per
    mini-batch) and their refits one eigendecomposition, and each result equals its own separate refit."""
    from interprune.preserve.refit import Bases, add_shared, shared_moments

    g = torch.Generator().manual_seed(3)
    x, x_h = torch.randn(80, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64)
    ws = [torch.randn(6, k, generator=g, dtype=torch.float64) for k in (4, 2, 2)]
    ys = [x @ w + 0.3 * torch.randn(80, w.shape[1], generator=g, dtype=torch.float64) for w in ws]
    fit = add_shared(shared_moments(x[:40], [y[:40] for y in ys]), shared_moments(x[40:], [y[40:] for y in ys]))
    held = shared_moments(x_h, [x_h @ w for w in ws])
    assert fit[0].xx is fit[1].xx is fit[2].xx and held[0].xx is held[2].xx
    bases = Bases()
    for w, y, f, h in zip(ws, ys, fit, held):
        alone = choose_strength(moments(x, y), moments(x_h, x_h @ w), w * 0.5)
        together = choose_strength(f, h, w * 0.5, bases=bases)
        assert together.strength == alone.strength
        assert torch.allclose(together.weight, alone.weight, atol=1e-10)
    assert len(bases.made) == 1


def test_lifted_statistics_give_the_refit_of_the_outputs_they_stand_for_in_any_column_blocks():
    """``group_moments`` of a source layer's inputs, lifted through its map a block of columns at a time,
    choose the same strength and weights as the statistics of its outputs."""
    from interprune.preserve.refit import group_moments

    gen = torch.Generator().manual_seed(5)
    x, inputs = torch.randn(200, 6, generator=gen, dtype=torch.float64), torch.randn(200, 4, generator=gen,
                                                                                    dtype=torch.float64)
    through = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    x = x + inputs[:, :1]  # the small model's inputs relate to the source's, so the refit matters
    y = inputs @ through  # the source layer's outputs
    w0 = torch.randn(6, 30, generator=gen, dtype=torch.float64)
    fit, held = moments(x[:150], y[:150]), moments(x[150:], y[150:])
    (lift_fit,), (lift_held,) = group_moments(x[:150], [inputs[:150]], [True], held=False), \
        group_moments(x[150:], [inputs[150:]], [True], held=True)
    direct = choose_strength(fit, held, w0)
    for block in (8 * 6 * 7, 10**9):  # 7 columns a block, and all at once
        lifted = choose_strength(lift_fit, lift_held, w0, block_bytes=block, through=through)
        assert lifted.strength == direct.strength
        assert torch.allclose(lifted.weight, direct.weight, rtol=1e-8, atol=1e-10)
        assert all(abs(lifted.errors[s] - direct.errors[s]) < 1e-9 for s in direct.errors)
