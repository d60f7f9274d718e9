import pytest
import torch
import torch.nn.functional as F

from interprune.weights.resample import RESAMPLERS, resample, select_indices

SOURCE_ONLY = [m for m, fn in RESAMPLERS.items() if fn is not None]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", list(RESAMPLERS))
def test_same_shape_is_an_exact_copy(method):
    x = rand(6, 4)
    y = resample(x, (6, 4), method)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("shape,target", [((256,), (128,)), ((2048, 256), (1024, 128)), ((12, 9, 3), (4, 3, 3))])
def test_area_equals_avg_pool_for_integer_factors(shape, target):
    x = rand(*shape)
    assert torch.allclose(resample(x, target, "area"), resample(x, target, "avg-pool"), atol=1e-6)


def test_avg_pool_uses_equal_windows_for_fractional_factors():
    x = torch.arange(5.0)
    # stride 5//3 = 1, kernel 5 - 2*1 = 3: windows [0..2], [1..3], [2..4]
    assert resample(x, (3,), "avg-pool").tolist() == [1.0, 2.0, 3.0]
    assert resample(x, (3,), "max-pool").tolist() == [2.0, 3.0, 4.0]
    assert not torch.equal(resample(x, (3,), "area"), resample(x, (3,), "avg-pool"))


def test_nearest_exact_at_factor_two_keeps_odd_indices():
    x = torch.arange(16.0).reshape(4, 4)
    assert resample(torch.arange(8.0), (4,), "nearest-exact").tolist() == [1.0, 3.0, 5.0, 7.0]
    assert torch.equal(resample(x, (2, 2), "nearest-exact"), x[1::2, 1::2])


def test_nearest_keeps_even_indices_and_select_takes_every_kth():
    x = torch.arange(8.0)
    assert resample(x, (4,), "nearest").tolist() == [0.0, 2.0, 4.0, 6.0]
    assert resample(x, (4,), "select").tolist() == [0.0, 2.0, 4.0, 6.0]
    assert select_indices(10, 4).tolist() == [0, 3, 6, 9]


def test_axis_by_axis_equals_torch_2d_operators():
    x = rand(32, 24)
    img = x[None, None]
    assert torch.allclose(resample(x, (16, 12), "linear"), F.interpolate(img, (16, 12), mode="bilinear")[0, 0], atol=1e-6)
    assert torch.allclose(resample(x, (10, 7), "area"), F.adaptive_avg_pool2d(img, (10, 7))[0, 0], atol=1e-6)
    assert torch.equal(resample(x, (16, 12), "max-pool"), F.max_pool2d(img, 2)[0, 0])
    assert torch.equal(resample(x, (11, 5), "nearest-exact"), F.interpolate(img, (11, 5), mode="nearest-exact")[0, 0])


@pytest.mark.parametrize("n,m", [(5, 13), (7, 8), (4, 12), (3, 3), (128, 256), (9, 20)])
def test_select_grow_then_shrink_round_trips(n, m):
    x = rand(n, 3)
    assert torch.equal(resample(resample(x, (m, 3), "select"), (n, 3), "select"), x)


@pytest.mark.parametrize("n,factor", [(4, 3), (5, 2), (16, 4)])
def test_nearest_grow_then_shrink_round_trips_for_integer_factors(n, factor):
    x = rand(n, n)
    grown = resample(x, (n * factor, n), "nearest")
    assert torch.equal(resample(grown, (n, n), "nearest"), x)


@pytest.mark.parametrize("method", SOURCE_ONLY)
def test_every_method_shrinks_and_grows_any_rank(method):
    for shape, target in [((8,), (5,)), ((6, 8), (9, 4)), ((4, 6, 3, 3), (2, 6, 5, 3)), ((2, 3, 4, 5, 6), (1, 3, 2, 5, 9))]:
        y = resample(rand(*shape), target, method)
        assert tuple(y.shape) == target and torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_dtype_is_source_dtype(dtype):
    x = rand(8, 6).to(dtype)
    for method in RESAMPLERS:
        assert resample(x, (4, 3), method).dtype == dtype


def test_integer_tensors_are_selected_exactly():
    ids = torch.tensor([10**12 + 1, 3, 5, 7, 9, 11], dtype=torch.long)
    assert resample(ids, (3,), "area").tolist() == [10**12 + 1, 5, 9]


def test_random_and_first_use_the_targets_values():
    x, fill = rand(4, 4), rand(6, 2, seed=9)
    assert torch.equal(resample(x, (6, 2), "random", fill=fill), fill)
    grown = resample(x, (6, 2), "first", fill=fill)
    assert torch.equal(grown[:4], x[:, :2]) and torch.equal(grown[4:], fill[4:])


def test_without_fill_results_are_deterministic_for_a_seed():
    x = rand(4, 4)
    a = resample(x, (6, 6), "random", generator=torch.Generator().manual_seed(3))
    b = resample(x, (6, 6), "random", generator=torch.Generator().manual_seed(3))
    c = resample(x, (6, 6), "random", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.5 < a.std() / x.std() < 1.5


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        resample(rand(4), (2,), "bicubic-magic")
    with pytest.raises(ValueError, match="2-D"):
        resample(rand(4, 4), (2,), "area")


def test_every_per_tensor_or_structured_method_has_one_function_and_one_record():
    from interprune.methods import METHODS, Kind, names
    from interprune.plan import STRUCTURED

    assert set(RESAMPLERS) == set(names(Kind.PER_TENSOR, Kind.STRUCTURED))
    assert tuple(STRUCTURED) == names(Kind.STRUCTURED)  # the plan's copy of the list agrees with the registry
    assert [m for m, r in METHODS.items() if r.paper] == ["nearest-exact", "area", "avg-pool", "max-pool"]
