"""A merchant's local privacy policy: what it answers, set on its own machine only.

The server asks (a budget, a delta, a model, a message type); the policy decides. A request
outside it is refused with a reason code, never answered with a weaker guarantee. The policy
comes from the merchant's node config (``policy-path`` to a JSON or TOML file, or the same keys
inline), or, in a simulation, from the code that plays the merchants; never from the run
config, which the server writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from synth_models.federation import (
    EVALUATE_MESSAGE,
    MARGINALS_MESSAGE,
    STATISTICS_MESSAGE,
    TRAIN_MESSAGE,
)

ALL_MODELS = ("marginal", "vae", "gan")
ALL_MESSAGES = (STATISTICS_MESSAGE, MARGINALS_MESSAGE, TRAIN_MESSAGE, EVALUATE_MESSAGE)
# Node-config keys of a policy (kebab-case, like the rest of Flower's config).
POLICY_KEYS = (
    "epsilon-budget", "max-delta", "allow-non-private", "allowed-models", "allowed-messages",
    "metadata-path", "require-ledger-path", "approved-apps",
)  # fmt: skip


class PolicyRefusal(Exception):
    """A request outside the merchant's policy; ``code`` is what the server is told."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class MerchantPolicy:
    """``epsilon_budget``: the total epsilon this merchant's ledger may ever spend (across runs,
    with a ledger file); ``max_delta``: the delta its ledger accounts at, the largest it accepts;
    ``allow_non_private``: whether an epsilon = inf request (exact releases) is ever answered;
    ``allowed_models`` / ``allowed_messages``: what it answers; ``metadata_path``: the public
    metadata it answers for (a server schema that differs is refused; without it the first
    schema seen is pinned in the ledger file); ``require_ledger_path``: refuse to spend without
    a ledger file on its own disk (always true in deployment); ``approved_apps``: the app
    bundles (FAB SHA-256 hashes, or files listing them) this merchant's SuperExec runs, checked
    before any of an app's code runs (``client/approval.py``; none: every app is refused)."""

    epsilon_budget: float = 1.0
    max_delta: float = 1e-5
    allow_non_private: bool = False
    allowed_models: tuple[str, ...] = ALL_MODELS
    allowed_messages: tuple[str, ...] = ALL_MESSAGES
    metadata_path: str | None = None
    require_ledger_path: bool = False
    approved_apps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.epsilon_budget > 0 and not math.isnan(self.epsilon_budget)):
            raise ValueError(f"epsilon-budget must be > 0, got {self.epsilon_budget}")
        if math.isinf(self.epsilon_budget) and not self.allow_non_private:
            raise ValueError("an infinite epsilon-budget needs allow-non-private = true")
        if not 0 < self.max_delta < 1:
            raise ValueError(f"max-delta must be in (0, 1), got {self.max_delta}")
        unknown = set(self.allowed_models) - set(ALL_MODELS)
        unknown |= set(self.allowed_messages) - set(ALL_MESSAGES)
        if unknown:
            raise ValueError(f"unknown model(s) or message type(s) in the policy: {unknown}")

    @classmethod
    def for_run(
        cls, *, epsilon: float, delta: float, metadata_path: str | None = None
    ) -> MerchantPolicy:
        """A policy whose budget is exactly a run's request: for simulations, where one person
        plays the server and every merchant (an epsilon = inf run allows exact releases)."""
        return cls(
            epsilon_budget=epsilon,
            max_delta=delta,
            allow_non_private=math.isinf(epsilon),
            metadata_path=metadata_path,
        )

    @classmethod
    def from_settings(cls, settings: dict, *, base: MerchantPolicy | None = None) -> MerchantPolicy:
        """A policy from kebab-case settings (a node config or a policy file) over ``base``."""
        values = {}
        for key, value in settings.items():
            if key not in POLICY_KEYS:
                continue
            name = key.replace("-", "_")
            if name in ("allowed_models", "allowed_messages", "approved_apps"):
                value = tuple(
                    v.strip() for v in (value.split(",") if isinstance(value, str) else value)
                )
                value = tuple(v for v in value if v)
            elif name in ("allow_non_private", "require_ledger_path"):
                value = value if isinstance(value, bool) else str(value).lower() == "true"
            elif name in ("epsilon_budget", "max_delta"):
                value = float(value)
            elif name == "metadata_path":
                value = str(value) or None
            values[name] = value
        return dataclasses.replace(base or cls(), **values)

    def to_settings(self) -> dict:
        """The kebab-case settings ``from_settings`` reads (for a policy file)."""
        values = {key: getattr(self, key.replace("-", "_")) for key in POLICY_KEYS}
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in values.items()
            if value is not None
        }

    @classmethod
    def from_file(cls, path: str | Path, *, base: MerchantPolicy | None = None) -> MerchantPolicy:
        path = Path(path)
        text = path.read_text()
        settings = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        unknown = set(settings) - set(POLICY_KEYS)
        if unknown:
            raise ValueError(f"policy file {path}: unknown key(s) {sorted(unknown)}")
        return cls.from_settings(settings, base=base)

    @classmethod
    def from_node_config(
        cls, node_config: dict, *, base: MerchantPolicy | None = None
    ) -> MerchantPolicy:
        """The node's policy: ``base`` (the simulation's, or the defaults), then the policy
        file named by ``policy-path``, then inline keys. A deployed merchant (one that names its
        own ``data-path``) always needs a ledger file."""
        policy = base or cls()
        if "policy-path" in node_config:
            policy = cls.from_file(str(node_config["policy-path"]), base=policy)
        policy = cls.from_settings(dict(node_config), base=policy)
        if "data-path" in node_config and not policy.require_ledger_path:
            policy = dataclasses.replace(policy, require_ledger_path=True)
        return policy

    def check(self, message_type: str, request: dict, *, has_ledger_path: bool) -> None:
        """Raise PolicyRefusal when the server's request is outside this policy."""
        if message_type not in self.allowed_messages:
            raise PolicyRefusal("message-not-allowed", f"{message_type!r} is not answered")
        model = request.get("model")
        if model is not None and model not in self.allowed_models:
            raise PolicyRefusal("model-not-allowed", f"model {model!r} is not answered")
        if self.require_ledger_path and not has_ledger_path:
            raise PolicyRefusal(
                "ledger-path-required", "set node config 'state-path' to a file on this machine"
            )
        for key in ("epsilon", "target_epsilon"):
            if request.get(key) is None:
                continue
            asked = float(request[key])
            if math.isnan(asked) or asked <= 0:
                raise PolicyRefusal("bad-request", f"{key} = {asked}")
            if math.isinf(asked) and not self.allow_non_private:
                raise PolicyRefusal(
                    "non-private-refused", "an epsilon = inf (exact) release is never answered"
                )
            if asked > self.epsilon_budget:
                raise PolicyRefusal(
                    "epsilon-above-policy",
                    f"{key} = {asked} is above this merchant's budget {self.epsilon_budget}",
                )
        if request.get("delta") is not None:
            delta = float(request["delta"])
            if not 0 < delta <= self.max_delta:
                raise PolicyRefusal(
                    "delta-above-policy",
                    f"delta = {delta} is outside (0, {self.max_delta}] of this merchant's policy",
                )
