"""A declared categorical domain of 20,000 values (a shop's postcodes) is public: the reply
guard lets its marginals leave, through the real ClientApp, with caps that follow the public
schema; a domain the server chose itself keeps the cap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import client.guard as guard
from client.policy import MerchantPolicy
from privacy.statistics import TableStatistics
from synth_models.encoder import TableEncoder
from synth_models.federation import (
    MARGINALS,
    MARGINALS_MESSAGE,
    MAX_MARGINAL_DOMAIN,
    STATISTICS,
    STATISTICS_MESSAGE,
)
from synth_models.io import metadata_from_dict
from synth_models.schema import TableSchema
from tests.client.harness import Merchant, document, folder_merchant

POSTCODES = [f"{i:05d}" for i in range(20_000)]
ROWS = 600


def _metadata() -> dict:
    columns = {
        "postcode": {"sdtype": "categorical", "range_values": POSTCODES},
        "size": {"sdtype": "categorical", "range_values": ["S", "M", "L"]},
        "items": {"sdtype": "numerical", "range_min": 1, "range_max": 4, "decimal_places": 0},
    }
    return metadata_from_dict(
        {"tables": {"shop": {"columns": columns}}, "METADATA_SPEC_VERSION": "V2"}
    )


@pytest.fixture(scope="module")
def postcodes(tmp_path_factory):
    """A merchant whose table has a 20,000-postcode column, and the encoder its DP
    statistics give (the statistics round passes the guard)."""
    folder = tmp_path_factory.mktemp("postcodes")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "postcode": rng.choice(POSTCODES[:500], ROWS),
            "size": rng.choice(["S", "M", "L"], ROWS),
            "items": rng.integers(1, 5, ROWS),
        }
    )
    table.to_csv(folder / "merchant-0.csv", index=False)
    schema = TableSchema.from_metadata(_metadata())
    merchant = folder_merchant(folder, schema, policy=MerchantPolicy(epsilon_budget=10.0))
    reply = merchant.ask(STATISTICS_MESSAGE, merchant.statistics_request())
    assert merchant.status(reply)["state"] == "ok", merchant.status(reply)
    encoder = TableEncoder.from_statistics(
        schema, TableStatistics.from_dict(document(reply, STATISTICS))
    )
    return merchant, encoder


def _request(merchant: Merchant, encoder: TableEncoder, **phase) -> dict:
    return {
        "schema": merchant.schema.to_dict(),
        "encoder": encoder.to_dict(),
        "model": "marginal",
        "model_options": {},
        "epsilon": 1.0,
        "delta": 1e-5,
        "seed": 0,
        **phase,
    }


def test_a_declared_domain_of_20000_values_leaves_in_both_marginal_rounds(postcodes, monkeypatch):
    merchant, encoder = postcodes
    selection = _request(merchant, encoder, phase="selection")
    reply = merchant.ask(MARGINALS_MESSAGE, selection, server_round=2)
    assert merchant.status(reply)["state"] == "ok", merchant.status(reply)
    shapes = document(reply, MARGINALS)["shapes"]
    assert max(max(shape) for shape in shapes) == len(POSTCODES) > MAX_MARGINAL_DOMAIN
    # The byte cap follows the request too: under a cap far below the reply's size, the
    # tables the request's public encoder sizes still pass.
    monkeypatch.setattr(guard, "MAX_REPLY_BYTES", 1000)
    assert (
        guard.reply_problems(
            reply.content,
            message_type=MARGINALS_MESSAGE,
            request=selection,
            merchant="merchant-0",
            policy=MerchantPolicy(epsilon_budget=10.0),
        )
        == []
    )
    monkeypatch.undo()
    measurement = _request(merchant, encoder, phase="measurement", tree=[[0, 1], [0, 2]])
    reply = merchant.ask(MARGINALS_MESSAGE, measurement, server_round=3)
    assert merchant.status(reply)["state"] == "ok", merchant.status(reply)


def test_a_domain_the_server_chose_keeps_the_cap(postcodes):
    """The same 20,000 labels, reordered by the server: no longer the declared domain, so its
    marginals may not pass the cap."""
    merchant, encoder = postcodes
    crafted = encoder.to_dict()
    transform = crafted["transforms"]["postcode"]
    transform["categories"] = transform["categories"][::-1]
    request = {**_request(merchant, encoder, phase="selection"), "encoder": crafted}
    reply = merchant.ask(MARGINALS_MESSAGE, request, server_round=4)
    assert merchant.status(reply) == {
        "state": "failed",
        "merchant": "merchant-0",
        "code": "reply-blocked",
    }
