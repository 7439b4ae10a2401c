"""Probe metrics against hand-computed cases and independent references (numpy, enumeration)."""

import math

import numpy as np
import pytest
import torch

from gasp_plugin.probe.metrics import (
    MatchStats,
    cell_distance,
    cells_within_fraction,
    chance_pck,
    cosine_similarity,
    match,
    pck,
    pearson,
    temporal_robustness,
)


_DIST = {"chebyshev": lambda dr, dc: max(abs(dr), abs(dc)), "euclidean": lambda dr, dc: math.hypot(dr, dc)}


def _brute_force_chance(gh, gw, delta, metric="chebyshev"):
    """Independent reference: enumerate every (true, predicted) cell pair."""
    hits = 0
    for tr in range(gh):
        for tc in range(gw):
            for pr in range(gh):
                for pc in range(gw):
                    hits += _DIST[metric](tr - pr, tc - pc) <= delta
    return hits / (gh * gw) ** 2


def test_chance_hand_computed_3x3():
    # delta 1 on 3x3: 4 corners see 4 cells, 4 edges see 6, the centre sees 9.
    assert chance_pck((3, 3), 1, metric="chebyshev") == pytest.approx((4 * 4 + 4 * 6 + 9) / 81)
    assert chance_pck((3, 3), 0, metric="chebyshev") == pytest.approx(1 / 9)
    assert chance_pck((3, 3), 2, metric="chebyshev") == pytest.approx(1.0)


@pytest.mark.parametrize("grid", [(8, 8), (4, 6), (1, 5), (7, 3)])
@pytest.mark.parametrize("delta", [0, 1, 2, 3])
@pytest.mark.parametrize("metric", ["chebyshev", "euclidean"])
def test_chance_matches_enumeration(grid, delta, metric):
    assert chance_pck(grid, delta, metric=metric) == pytest.approx(_brute_force_chance(*grid, delta, metric))


def test_euclidean_hand_computed_3x3():
    # delta 1, Euclidean: a plus shape; corners see 3 cells, edges 4, the centre 5
    assert chance_pck((3, 3), 1, metric="euclidean") == pytest.approx((4 * 3 + 4 * 4 + 5) / 81)
    # (0,0) -> (1,1) is sqrt(2): within 1 for Chebyshev, not for Euclidean
    assert pck(torch.tensor([4]), torch.tensor([0]), (3, 3), 1, metric="chebyshev") == 1.0
    assert pck(torch.tensor([4]), torch.tensor([0]), (3, 3), 1, metric="euclidean") == 0.0


def test_cell_distance_registry():
    from gasp_plugin.probe.metrics import CELL_DISTANCES, register_cell_distance

    with pytest.raises(ValueError, match="already registered"):
        register_cell_distance("chebyshev", lambda dr, dc: dr)
    with pytest.raises(ValueError, match="known: \\['chebyshev', 'euclidean'"):
        cell_distance(torch.tensor([0]), torch.tensor([0]), (2, 2), metric="manhattan")
    assert set(CELL_DISTANCES) >= {"chebyshev", "euclidean"}


def test_chance_for_given_true_cells():
    # true cell = corner (0) and centre (4) of a 3x3 grid, delta 1: (4/9 + 9/9) / 2
    assert chance_pck((3, 3), 1, torch.tensor([0, 4]), metric="chebyshev") == pytest.approx((4 / 9 + 1) / 2)
    assert cells_within_fraction(torch.tensor([0, 4]), (3, 3), 1, metric="chebyshev").tolist() == pytest.approx([4 / 9, 1])


def test_default_cell_distance_is_euclidean():
    # (0,0) -> (1,1): sqrt(2) cells
    assert cell_distance(torch.tensor([4]), torch.tensor([0]), (3, 3)).tolist() == pytest.approx([2**0.5])


def test_cell_distance_chebyshev():
    grid = (4, 5)  # token k -> (k // 5, k % 5)
    pred = torch.tensor([0, 6, 19, 3])
    true = torch.tensor([0, 0, 0, 15])  # (0,0),(0,0),(0,0),(3,0)
    # (0,0)->0; (1,1)->1; (3,4)->4; (0,3) vs (3,0) -> 3
    assert cell_distance(pred, true, grid, metric="chebyshev").tolist() == [0, 1, 4, 3]


def test_cell_distance_rejects_out_of_grid():
    with pytest.raises(ValueError, match="pred token indices"):
        cell_distance(torch.tensor([20]), torch.tensor([0]), (4, 5))
    with pytest.raises(ValueError, match="grid"):
        cell_distance(torch.tensor([0]), torch.tensor([0]), (0, 5))
    with pytest.raises(ValueError, match="delta"):
        pck(torch.tensor([0]), torch.tensor([0]), (4, 5), -1)


def _descriptors(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def test_perfect_descriptors_give_full_pck():
    grid = (6, 7)
    target = _descriptors(42, 32, 0)
    true = torch.randint(0, 42, (200,), generator=torch.Generator().manual_seed(1))
    query = target[true] * 3.0  # scale must not matter for cosine
    pred, conf = match(query, target)
    assert torch.equal(pred, true)
    for delta in (0, 1, 2):
        assert pck(pred, true, grid, delta) == 1.0
    assert bool((conf > 0).all()) and bool((conf <= 1).all())


def test_shuffled_descriptors_give_chance():
    grid, n_q = (8, 8), 20000
    target = _descriptors(64, 16, 2)
    true = torch.randint(0, 64, (n_q,), generator=torch.Generator().manual_seed(3))
    query = _descriptors(n_q, 16, 4)  # unrelated to the truth
    pred, _ = match(query, target)
    for delta in (0, 1, 2):
        p = pck(pred, true, grid, delta)
        c = chance_pck(grid, delta, true)
        sigma = math.sqrt(c * (1 - c) / n_q)
        # predictions from random descriptors are not uniform over tokens, but are independent of
        # the truth, so the expected PCK is the chance level all the same
        assert abs(p - c) < 5 * sigma, (delta, p, c)


def test_one_cell_shift():
    grid = (5, 6)
    gh, gw = grid
    target = _descriptors(gh * gw, 24, 5)
    # true cells in columns 0..gw-2, each query looks exactly like its right-hand neighbour
    true = torch.tensor([r * gw + c for r in range(gh) for c in range(gw - 1)])
    pred, _ = match(target[true + 1], target)
    assert pck(pred, true, grid, 0) == 0.0
    assert pck(pred, true, grid, 1) == 1.0
    assert pck(pred, true, grid, 2) == 1.0


def test_cosine_similarity_matches_numpy():
    a, b = _descriptors(5, 8, 6), _descriptors(7, 8, 7)
    an, bn = a.numpy(), b.numpy()
    ref = (an / np.linalg.norm(an, axis=1, keepdims=True)) @ (bn / np.linalg.norm(bn, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine_similarity(a, b).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_confidence_is_max_softmax_at_temperature():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    pred, conf = match(query, target, temperature=0.5)
    cos = np.array([1.0, 0.0, -1.0])
    ref = np.exp(cos / 0.5).max() / np.exp(cos / 0.5).sum()
    assert int(pred) == 0
    assert float(conf) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        match(query, target, temperature=0.0)


def test_pearson_matches_numpy_on_constructed_case():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 500)
    correct = (conf + rng.normal(0, 0.3, 500) > 0.5).astype(float)
    assert pearson(conf, correct) == pytest.approx(np.corrcoef(conf, correct)[0, 1], rel=1e-10)
    # exactly linear -> +1 / -1; constant -> undefined
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 2, 3], [1, 1, 1]))
    assert math.isnan(pearson([1], [1]))


def test_temporal_robustness():
    r = temporal_robustness({1: 0.8, 2: 0.6, 4: 0.4})
    assert r == pytest.approx({1: 1.0, 2: 0.75, 4: 0.5})
    assert all(math.isnan(v) for v in temporal_robustness({1: 0.0, 2: 0.5}).values())


def test_match_stats_aggregates_over_pairs():
    stats = MatchStats(deltas=(0, 1, 2), metric="chebyshev")
    grid = (3, 3)
    # pair at gap 1: 2 queries, both exact
    stats.add(torch.tensor([0, 4]), torch.tensor([0, 4]), torch.tensor([0.9, 0.8]), grid, gap=1)
    # pair at gap 2: 2 queries, one exact, one 2 cells off
    stats.add(torch.tensor([4, 8]), torch.tensor([4, 0]), torch.tensor([0.7, 0.1]), grid, gap=2)
    assert stats.num_queries == 4
    assert stats.pck(0) == pytest.approx(3 / 4)
    assert stats.pck(1) == pytest.approx(3 / 4)
    assert stats.pck(2) == pytest.approx(1.0)
    assert stats.pck_by_gap(0) == pytest.approx({1: 1.0, 2: 0.5})
    assert stats.queries_by_gap() == {1: 2, 2: 2}
    assert stats.robustness(0) == pytest.approx({1: 1.0, 2: 0.5})
    # chance of the same queries: true cells 0 (corner), 4 (centre), 4, 0 at delta 1
    assert stats.chance_pck(1) == pytest.approx((4 / 9 + 1 + 1 + 4 / 9) / 4)
    correct0 = np.array([1, 1, 1, 0], dtype=float)
    assert stats.rho(0) == pytest.approx(np.corrcoef([0.9, 0.8, 0.7, 0.1], correct0)[0, 1])
    with pytest.raises(ValueError, match="recorded deltas"):
        stats.chance_pck(3)
    assert math.isnan(MatchStats().pck(2))
