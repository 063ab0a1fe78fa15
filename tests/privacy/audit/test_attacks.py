import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from privacy.audit import membership_attack
from privacy.audit.neighbours import MixedEncoder, knn_distances


def test_knn_distances_match_sklearn(pizza, pizza_splits):
    members, _, independent = pizza_splits
    encoder = MixedEncoder(pizza.metadata, pizza.table_name).fit(members, independent)
    q, p = encoder.transform(members.iloc[:500]), encoder.transform(independent)
    expected = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(p).kneighbors(q)[0]
    np.testing.assert_allclose(
        knn_distances(q, p, 3, chunk=128), expected, atol=1e-6
    )  # sklearn: GEMM rounding
    assert (knn_distances(p[:50], p)[:, 0] == 0).all()  # exact copies: exactly zero


@pytest.mark.parametrize("method", ["distance", "density"])
def test_attack_separates_copy(pizza, pizza_splits, method):
    members, nonmembers, _ = pizza_splits
    rng = np.random.default_rng(0)
    synthetic = members.copy()
    synthetic["price"] = synthetic["price"] + rng.normal(0, 1e-3, len(synthetic))
    result = membership_attack(
        members, nonmembers, synthetic, pizza.metadata, pizza.table_name, method=method
    )
    assert result["auc"] > 0.9
    assert result["empirical_epsilon"]["epsilon_lower_bound"] > 1.0
    assert result["members"] == result["nonmembers"]
    assert len(result["roc"]["fpr"]) <= 101


@pytest.mark.parametrize("method", ["distance", "density"])
def test_attack_on_independent_data_is_chance(pizza, pizza_splits, method):
    members, nonmembers, independent = pizza_splits
    result = membership_attack(
        members, nonmembers, independent, pizza.metadata, pizza.table_name, method=method
    )
    assert abs(result["auc"] - 0.5) < 0.05
    assert result["empirical_epsilon"]["epsilon_lower_bound"] <= 0.2
