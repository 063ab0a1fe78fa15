"""Signed, verifiable privacy claims: merchants sign their ledgers, the server its artifact.

A merchant signs its ledger summary with its own key (in deployment the SuperNode's ECDSA key,
node config ``signing-key-path``; in a simulation an ed25519 key made once beside its ledger
file). The signed bytes are the canonical JSON of a *claim*: owner, budget, delta, epsilon,
accountant, the SHA-256 of the canonical JSON of its mechanism records, the round it answered
and its public key. The ledger document carries ``round``, ``public_key`` (PEM,
SubjectPublicKeyInfo) and ``signature`` beside the ledger's own fields.

The server signs the artifact manifest: canonical JSON of everything in ``synthesizer.json``
but its ``signatures`` block (so the weights' SHA-256, the encoder, the metadata and every
merchant's signed ledger). :func:`verify_manifest` checks every signature and recomputes each
merchant's epsilon from its records with :class:`~privacy.ledger.PrivacyLedger`.

Signatures: ed25519, or ECDSA with SHA-256/384/512 for P-256/384/521 keys (as SSH does);
keys are read from PEM (PKCS#8 or traditional) or OpenSSH files. No Flower here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from privacy.ledger import PrivacyLedger

CLAIM_FORMAT = "fedsynth-ledger-claim/1"
MANIFEST_SIGNATURE_FORMAT = "fedsynth-manifest-signature/1"
LEDGER_FIELDS = ("owner", "epsilon_budget", "delta", "records", "epsilon", "accountant")
SIGNATURE_FIELDS = ("round", "public_key", "signature")
SIGNATURES = "signatures"  # the manifest's block; everything else is signed
VERIFIED, UNSIGNED, FAILED = "verified", "unsigned", "failed"
_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}


class SigningKeyError(ValueError):
    """A key file that cannot be read, or a key type that is not supported."""


# -- encoding -------------------------------------------------------------------------------------


def canonical_json(value) -> bytes:
    """Sorted keys, no whitespace, ASCII: the bytes that are signed. Non-finite floats are
    written as JSON's ``Infinity``/``NaN`` extensions (a non-private ledger's epsilon)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(value) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


# -- keys -----------------------------------------------------------------------------------------


def generate_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _check_type(key, where: str):
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return key
    if (
        isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
        and key.curve.name in _HASHES
    ):
        return key
    raise SigningKeyError(
        f"{where}: a {type(key).__name__} key; signing needs ed25519 or ECDSA P-256/384/521 "
        "(e.g. ssh-keygen -t ecdsa)"
    )


def private_key_from_bytes(data: bytes, where: str = "key"):
    """A private key from PEM (PKCS#8 or traditional) or OpenSSH bytes, unencrypted."""
    for load in (serialization.load_pem_private_key, serialization.load_ssh_private_key):
        try:
            return _check_type(load(data, password=None), where)
        except SigningKeyError:
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm):  # another format, or encrypted
            continue
    raise SigningKeyError(f"{where}: not an unencrypted PEM or OpenSSH private key")


def load_private_key(path: str | os.PathLike):
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: signing key cannot be read ({exc})") from exc
    return private_key_from_bytes(data, str(path))


def load_or_create_key(path: str | os.PathLike):
    """The private key at ``path``; if there is none, a new ed25519 key written there once
    (PEM PKCS#8, mode 0600, never overwritten: two processes racing both read the winner's)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = generate_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
    return load_private_key(path)


def public_key_pem(key) -> str:
    """The PEM (SubjectPublicKeyInfo) of a private or public key."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(path_or_text: str | os.PathLike | bytes):
    """A public key from a file or text: PEM public key, OpenSSH ``.pub`` line, or a private
    key (PEM or OpenSSH) whose public half is taken."""
    data = path_or_text
    where = "public key"
    if not isinstance(data, bytes):
        text = str(data)
        if text.lstrip().startswith(("-----BEGIN", "ssh-", "ecdsa-")):
            data = text.encode()
        else:
            where = text
            try:
                data = Path(text).read_bytes()
            except OSError as exc:
                raise SigningKeyError(f"{text}: public key cannot be read ({exc})") from exc
    for load in (serialization.load_pem_public_key, serialization.load_ssh_public_key):
        try:
            return _check_type(load(data.strip()), where)
        except SigningKeyError:
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    return private_key_from_bytes(data, where).public_key()


def fingerprint(key) -> str:
    """OpenSSH's SHA-256 fingerprint (what ``ssh-keygen -l -f shop-a.pub`` prints)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _algorithm(key) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return f"ecdsa-{_HASHES[key.curve.name].name}"


def sign_bytes(data: bytes, private_key) -> dict:
    """``{"algorithm", "value"}``: the signature of ``data``, base64."""
    key = _check_type(private_key, "signing key")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        value = key.sign(data)
    else:
        value = key.sign(data, ec.ECDSA(_HASHES[key.curve.name]()))
    return {"algorithm": _algorithm(key), "value": base64.b64encode(value).decode("ascii")}


def verify_bytes(data: bytes, signature, public_pem) -> str | None:
    """Why ``signature`` is not ``public_pem``'s signature of ``data`` (None: it is)."""
    if not isinstance(signature, dict) or not isinstance(public_pem, str):
        return "signature or public key is malformed"
    try:
        public = _check_type(serialization.load_pem_public_key(public_pem.encode()), "key")
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except (ValueError, TypeError, SigningKeyError):
        return "signature or public key cannot be decoded"
    if signature.get("algorithm") != _algorithm(public):
        return f"signature algorithm {signature.get('algorithm')!r} is not the key's"
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(value, data)
        else:
            public.verify(value, data, ec.ECDSA(_HASHES[public.curve.name]()))
    except InvalidSignature:
        return "signature does not match the signed content"
    return None


# -- ledgers --------------------------------------------------------------------------------------


def ledger_claim(document: dict) -> dict:
    """What a merchant's signature covers (``KeyError`` if a field is missing)."""
    return {
        "format": CLAIM_FORMAT,
        **{k: document[k] for k in LEDGER_FIELDS if k != "records"},
        "records_sha256": _sha256(document["records"]),
        "round": document["round"],
        "public_key": document["public_key"],
    }


def sign_ledger(ledger_state: dict, private_key, *, round: int = 0) -> dict:
    """The ledger document (``PrivacyLedger.state_dict()``) with ``round``, ``public_key`` and
    ``signature`` added."""
    document = {k: ledger_state[k] for k in LEDGER_FIELDS}
    document["round"] = int(round)
    document["public_key"] = public_key_pem(private_key)
    document["signature"] = sign_bytes(canonical_json(ledger_claim(document)), private_key)
    return document


@dataclass
class LedgerCheck:
    """One merchant's ledger: its signature status, claim and the epsilon recomputed."""

    owner: str
    status: str  # verified | unsigned | failed
    epsilon_claimed: float | None = None
    epsilon_recomputed: float | None = None
    epsilon_budget: float | None = None
    delta: float | None = None
    round: int | None = None
    key: str | None = None  # the signing key's fingerprint
    problems: list[str] = field(default_factory=list)


def _close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def verify_ledger(signed: dict, *, owner: str | None = None, expected_key=None) -> LedgerCheck:
    """Check a ledger document: its epsilon is what its records compose to, and, if signed,
    its signature is its public key's (and that key is ``expected_key``, when given)."""
    name = str(owner if owner is not None else (signed or {}).get("owner", "?"))
    check = LedgerCheck(owner=name, status=FAILED)
    if not isinstance(signed, dict):
        check.problems.append("ledger is not a JSON object")
        return check
    try:
        ledger = PrivacyLedger.from_state_dict(signed)
        check.epsilon_recomputed = ledger.epsilon()
        check.epsilon_claimed = float(signed["epsilon"])
        check.epsilon_budget, check.delta = ledger.epsilon_budget, ledger.delta
    except (KeyError, TypeError, ValueError) as exc:
        check.problems.append(f"ledger cannot be read ({type(exc).__name__}: {exc})")
        return check
    if owner is not None and signed.get("owner") != owner:
        check.problems.append(f"ledger names owner {signed.get('owner')!r}, filed as {owner!r}")
    if not _close(check.epsilon_claimed, check.epsilon_recomputed):
        check.problems.append(
            f"claimed epsilon {check.epsilon_claimed:.6g} is not what its records compose "
            f"to ({check.epsilon_recomputed:.6g})"
        )
    if "signature" not in signed and "public_key" not in signed:
        if expected_key is not None:
            check.problems.append("ledger is unsigned, a key was expected")
        check.status = FAILED if check.problems else UNSIGNED
        return check
    try:
        claim = ledger_claim(signed)
        check.round = int(signed["round"])
        check.key = fingerprint(load_public_key(str(signed["public_key"])))
    except (KeyError, TypeError, ValueError) as exc:
        check.problems.append(f"signed ledger lacks its claim fields ({exc})")
        return check
    why = verify_bytes(canonical_json(claim), signed.get("signature"), signed["public_key"])
    if why:
        check.problems.append(f"ledger signature: {why}")
    if expected_key is not None and check.key != fingerprint(expected_key):
        check.problems.append(f"ledger signed by {check.key}, not the expected key")
    check.status = FAILED if check.problems else VERIFIED
    return check


# -- manifests ------------------------------------------------------------------------------------


def signed_content(manifest: dict) -> bytes:
    return canonical_json({k: v for k, v in manifest.items() if k != SIGNATURES})


def sign_manifest(manifest: dict, private_key) -> dict:
    """``manifest`` (as JSON reads it back) with a ``signatures`` block: the server's
    signature over the canonical JSON of everything else."""
    plain = json.loads(json.dumps({k: v for k, v in manifest.items() if k != SIGNATURES}))
    signature = {
        "format": MANIFEST_SIGNATURE_FORMAT,
        "public_key": public_key_pem(private_key),
        **sign_bytes(canonical_json(plain), private_key),
    }
    return {**plain, SIGNATURES: {"server": signature}}


@dataclass
class Verification:
    """What :func:`verify_manifest` found: ``status`` is ``failed`` if any check failed,
    ``verified`` if the manifest and every ledger are signed and check, else ``unsigned``."""

    status: str
    server: str  # verified | unsigned | failed
    server_key: str | None = None
    epsilon: float | None = None  # what the manifest says
    ledgers: dict[str, LedgerCheck] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == VERIFIED

    def to_dict(self) -> dict:
        return asdict(self)


def verify_manifest(manifest: dict, *, server_key=None, merchant_keys=None) -> Verification:
    """Check an artifact manifest's server signature, each merchant's ledger (signature and
    recomputed epsilon) and the manifest's epsilon (the maximum over merchants). ``server_key``
    and ``merchant_keys`` (name -> public key) are the keys expected, when known."""
    merchant_keys = dict(merchant_keys or {})
    result = Verification(status=FAILED, server=UNSIGNED)
    signatures = manifest.get(SIGNATURES)
    if signatures is None:
        if server_key is not None:
            result.problems.append("the manifest is unsigned, a server key was expected")
    else:
        server = signatures.get("server") if isinstance(signatures, dict) else None
        why = "the signatures block holds no server signature"
        if isinstance(server, dict):
            why = verify_bytes(signed_content(manifest), server, server.get("public_key"))
            with contextlib.suppress(ValueError):  # SigningKeyError too
                result.server_key = fingerprint(load_public_key(str(server.get("public_key"))))
        if why is None and server_key is not None and result.server_key != fingerprint(server_key):
            why = f"signed by {result.server_key}, not the expected server key"
        result.server = FAILED if why else VERIFIED
        if why:
            result.problems.append(f"server signature: {why}")
    privacy = manifest.get("privacy") if isinstance(manifest.get("privacy"), dict) else {}
    ledgers = privacy.get("ledgers") if isinstance(privacy.get("ledgers"), dict) else {}
    for name, document in ledgers.items():
        check = verify_ledger(document, owner=name, expected_key=merchant_keys.pop(name, None))
        result.ledgers[name] = check
        result.problems += [f"{name}: {p}" for p in check.problems]
    result.problems += [f"{name}: no ledger for an expected merchant" for name in merchant_keys]
    try:
        result.epsilon = None if privacy.get("epsilon") is None else float(privacy["epsilon"])
    except (TypeError, ValueError):
        result.problems.append("the manifest's epsilon is not a number")
    recomputed = [c.epsilon_recomputed for c in result.ledgers.values()]
    known = recomputed and all(e is not None for e in recomputed) and result.epsilon is not None
    if known and not _close(result.epsilon, max(recomputed)):
        result.problems.append(
            f"the manifest's epsilon {result.epsilon:.6g} is not the largest recomputed "
            f"({max(recomputed):.6g})"
        )
    if result.problems:
        result.status = FAILED
    elif result.server == VERIFIED and all(c.status == VERIFIED for c in result.ledgers.values()):
        result.status = VERIFIED
    else:
        result.status = UNSIGNED
    return result
