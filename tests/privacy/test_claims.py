"""Signed privacy claims: a merchant's ledger and the server's manifest, signed and verified;
edits after signing, another key than expected and unsigned documents are told apart."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from flwr.app import Context, RecordDict

from client.app import signing_key
from privacy.claims import (
    FAILED,
    UNSIGNED,
    VERIFIED,
    fingerprint,
    generate_key,
    load_or_create_key,
    load_private_key,
    load_public_key,
    sign_ledger,
    sign_manifest,
    verify_ledger,
    verify_manifest,
)
from privacy.ledger import DISCRETE_GAUSSIAN, MechanismRecord, PrivacyLedger


def ledger_state(owner: str = "shop-a") -> dict:
    ledger = PrivacyLedger(epsilon_budget=1.0, delta=1e-5, owner=owner)
    ledger.record(MechanismRecord("encoder-statistics", 8.0, 1.0, 1, mechanism=DISCRETE_GAUSSIAN))
    ledger.record(MechanismRecord("dp-sgd", 1.1, 0.02, 400))
    return json.loads(json.dumps(ledger.state_dict()))


def forged_noise(document: dict) -> dict:
    """The attack: noise multipliers x1000, epsilon recomputed so the ledger is consistent."""
    forged = json.loads(json.dumps(document))
    for record in forged["records"]:
        record["noise_multiplier"] *= 1000
    forged["epsilon"] = PrivacyLedger.from_state_dict(forged).epsilon()
    return forged


def ecdsa_openssh_key(tmp_path: Path) -> Path:
    """An OpenSSH ECDSA P-384 key like ``ssh-keygen -t ecdsa -b 384`` makes."""
    path = tmp_path / "shop-a"
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        key = ec.generate_private_key(ec.SECP384R1())
        path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    return path


def test_a_signed_ledger_verifies_and_names_its_key() -> None:
    key = generate_key()
    signed = sign_ledger(ledger_state(), key, round=3)
    check = verify_ledger(signed, owner="shop-a", expected_key=key.public_key())
    assert check.status == VERIFIED, check.problems
    assert check.round == 3 and check.key == fingerprint(key)
    assert check.epsilon_claimed == pytest.approx(check.epsilon_recomputed)
    assert check.epsilon_recomputed > 0


def test_an_openssh_ecdsa_supernode_key_signs(tmp_path: Path) -> None:
    path = ecdsa_openssh_key(tmp_path)
    key = load_private_key(path)
    signed = sign_ledger(ledger_state(), key)
    assert signed["signature"]["algorithm"] == "ecdsa-sha384"
    expected = load_public_key(
        path.with_suffix(".pub") if path.with_suffix(".pub").exists() else path
    )
    assert verify_ledger(signed, expected_key=expected).status == VERIFIED


@pytest.mark.parametrize(
    "edit",
    [
        forged_noise,
        lambda d: {**d, "epsilon": 0.005},
        lambda d: {**d, "epsilon_budget": 100.0},
        lambda d: {**d, "owner": "shop-b"},
        lambda d: {**d, "round": 0},
        lambda d: {**d, "records": d["records"][:1], "epsilon": ledger_epsilon(d["records"][:1])},
    ],
)
def test_a_ledger_edited_after_signing_fails(edit) -> None:
    signed = sign_ledger(ledger_state(), generate_key(), round=2)
    check = verify_ledger(edit(signed))
    assert check.status == FAILED
    assert check.problems


def ledger_epsilon(records: list[dict]) -> float:
    return PrivacyLedger.from_state_dict({**ledger_state(), "records": records}).epsilon()


def test_a_forged_ledger_resigned_with_another_key_fails_against_the_expected_key() -> None:
    merchant, forger = generate_key(), generate_key()
    honest = sign_ledger(ledger_state(), merchant)
    resigned = sign_ledger(forged_noise(honest), forger)
    assert verify_ledger(resigned).status == VERIFIED  # self-consistent: the key is the question
    check = verify_ledger(resigned, expected_key=merchant.public_key())
    assert check.status == FAILED
    assert any("not the expected key" in p for p in check.problems)
    assert verify_ledger(honest, expected_key=merchant.public_key()).status == VERIFIED


def test_an_unsigned_ledger_is_unsigned_and_a_wrong_epsilon_still_fails() -> None:
    state = ledger_state()
    assert verify_ledger(state).status == UNSIGNED
    assert verify_ledger({**state, "epsilon": 0.005}).status == FAILED
    assert verify_ledger(state, expected_key=generate_key().public_key()).status == FAILED


def test_a_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "merchant-0.key"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fingerprint(load_or_create_key(path)) == fingerprint(first)


def test_a_merchant_signs_with_its_node_config_key_else_one_beside_its_ledger(
    tmp_path: Path,
) -> None:
    def context(node_config: dict) -> Context:
        return Context(
            run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}
        )

    ledger_file = tmp_path / "fedsynth-ledger.json"
    beside = signing_key(context({"partition-id": 0}), ledger_file)
    assert stat.S_IMODE(ledger_file.with_suffix(".key").stat().st_mode) == 0o600
    assert fingerprint(beside) == fingerprint(load_private_key(ledger_file.with_suffix(".key")))
    ssh_key = ecdsa_openssh_key(tmp_path)
    configured = signing_key(context({"signing-key-path": str(ssh_key)}), ledger_file)
    assert fingerprint(configured) == fingerprint(load_private_key(ssh_key))
    simulated = context({"partition-id": 0})
    assert fingerprint(signing_key(simulated, None)) == fingerprint(signing_key(simulated, None))


def manifest(ledgers: dict) -> dict:
    return {
        "format": "fedsynth-synthesizer/1",
        "encoder": {"columns": ["a", "b"]},
        "privacy": {
            "epsilon": max(d["epsilon"] for d in ledgers.values()),
            "ledgers": ledgers,
        },
        "weights_sha256": "ab" * 32,
    }


def test_a_signed_manifest_verifies_and_every_edit_fails() -> None:
    keys = {name: generate_key() for name in ("shop-a", "shop-b")}
    ledgers = {name: sign_ledger(ledger_state(name), key) for name, key in keys.items()}
    server = generate_key()
    signed = sign_manifest(manifest(ledgers), server)
    public = {name: key.public_key() for name, key in keys.items()}
    result = verify_manifest(signed, server_key=server.public_key(), merchant_keys=public)
    assert result.status == VERIFIED, result.problems
    assert set(result.ledgers) == {"shop-a", "shop-b"}

    def edited(change) -> dict:
        copy = json.loads(json.dumps(signed))
        change(copy)
        return copy

    for change in (
        lambda m: m.update(weights_sha256="cd" * 32),
        lambda m: m["encoder"].update(columns=["a"]),
        lambda m: m["privacy"].update(epsilon=0.005),
    ):
        assert verify_manifest(edited(change)).status == FAILED
    # the manifest re-signed by whoever edited it: the expected server key tells
    resigned = sign_manifest(edited(lambda m: m["encoder"].update(columns=["a"])), generate_key())
    assert verify_manifest(resigned).status == VERIFIED
    assert verify_manifest(resigned, server_key=server.public_key()).status == FAILED
    # a merchant's ledger forged and the manifest re-signed: the ledger's signature tells
    forged = edited(
        lambda m: m["privacy"]["ledgers"].update({"shop-a": forged_noise(ledgers["shop-a"])})
    )
    forged["privacy"]["epsilon"] = max(
        PrivacyLedger.from_state_dict(d).epsilon() for d in forged["privacy"]["ledgers"].values()
    )
    result = verify_manifest(sign_manifest(forged, server), server_key=server.public_key())
    assert result.status == FAILED and result.server == VERIFIED
    assert result.ledgers["shop-a"].status == FAILED
    assert result.ledgers["shop-b"].status == VERIFIED
    # an expected merchant that has no ledger
    missing = verify_manifest(signed, merchant_keys={**public, "shop-c": public["shop-a"]})
    assert missing.status == FAILED


def test_an_unsigned_manifest_verifies_as_unsigned() -> None:
    plain = manifest({"local": ledger_state("local")})
    result = verify_manifest(plain)
    assert result.status == UNSIGNED and result.server == UNSIGNED
    assert verify_manifest(plain, server_key=generate_key().public_key()).status == FAILED
