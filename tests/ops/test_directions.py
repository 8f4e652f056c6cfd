"""Routes as data: permutations, inverses, VMamba's cross-scan order, gather/scatter round trips, caching."""
import pytest
import torch

from ssmzoo.ops import directions


def _all_routes():
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    per_sample = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    return [directions.forward(12), directions.reverse(12), directions.bidi(12), directions.cross2d(3, 4),
            directions.bidi2d(3, 4), directions.unidi2d(3, 4), directions.cross2d(1, 12), directions.cross2d(5, 1),
            directions.permutation(perm), directions.permutation(per_sample),
            directions.concat(directions.bidi(12), directions.permutation(per_sample))]


@pytest.mark.parametrize("routes", _all_routes(), ids=repr)
def test_maps_are_permutations_and_inverse(routes):
    steps = torch.arange(routes.L)
    assert routes.order.dtype == torch.int64
    assert torch.equal(routes.order.sort(-1).values, steps.expand_as(routes.order))
    assert torch.equal(torch.gather(routes.inverse, -1, routes.order), steps.expand_as(routes.order))
    assert torch.equal(torch.gather(routes.order, -1, routes.inverse), steps.expand_as(routes.order))


@pytest.mark.parametrize("routes", _all_routes(), ids=repr)
def test_route_round_trip(routes):
    x = torch.randn(3, 5, routes.L)
    for k in range(routes.K):
        r = routes.to_route(x, k)
        rows = routes.order[:, k] if routes.per_batch else routes.order[k].expand(3, -1)
        assert torch.equal(r, torch.stack([x[b][:, rows[b]] for b in range(3)]))
        assert torch.equal(routes.to_natural(r, k), x)
    y = torch.randn(3, routes.L, 2)
    assert torch.equal(routes.to_natural(routes.to_route(y, 0, dim=1), 0, dim=1), y)


def test_cross2d_is_vmamba_cross_scan():
    H, W = 3, 5
    x = torch.randn(2, 4, H, W)
    routes = directions.cross2d(H, W)
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    official = [rows, cols, rows.flip(-1), cols.flip(-1)]
    for k in range(4):
        assert torch.equal(routes.to_route(x.flatten(2), k), official[k])
    # merge rule y0 + flip(y2) + T(y1 + flip(y3)) == sum of the routes mapped back to natural order
    ys = torch.randn(2, 4, 4, H * W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    merged = ys[:, 0] + ys[:, 2].flip(-1) + (ys[:, 1] + ys[:, 3].flip(-1)).view(2, 4, W, H).transpose(2, 3).flatten(2)
    assert torch.allclose(sum(routes.to_natural(ys[:, k], k) for k in range(4)), merged)


def test_bidi_unidi_sets():
    assert directions.bidi(7).names == ("forward", "reverse")
    assert torch.equal(directions.bidi(7).order[1], torch.arange(6, -1, -1))
    assert directions.bidi2d(2, 3).names == ("row", "row", "row_rev", "row_rev")
    assert directions.unidi2d(2, 3).names == ("row",) * 4


def test_constructors_are_cached_and_index_maps_cached_per_device():
    assert directions.cross2d(56, 56) is directions.cross2d(56, 56)
    assert directions.bidi(197) is directions.bidi(197)
    routes = directions.cross2d(4, 4)
    order, inverse = routes.index("cpu")
    assert order.shape == (1, 4, 16) and routes.index("cpu")[0] is order


def test_bad_routes():
    with pytest.raises(ValueError, match="permutation"):
        directions.permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="grid route name"):
        directions.grid(2, 2, ("diagonal",))
    with pytest.raises(ValueError, match="different L"):
        directions.concat(directions.forward(3), directions.forward(4))
