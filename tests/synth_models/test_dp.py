"""DP-SGD mechanics: Opacus ghost clipping really clips per sample, adds nothing else at zero
noise, and every step that runs is in the ledger."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call, grad, vmap

import synth_models.training as training
from privacy.calibration import calibrate_noise_multiplier
from privacy.ledger import BudgetExceededError, PrivacyLedger
from privacy.noise import SeededNoise
from privacy.statistics import release_statistics
from synth_models.dp import make_training_parts, row_loader
from synth_models.encoder import TableEncoder, statistics_inputs
from synth_models.gan import GANModel, discriminator_step
from synth_models.schema import TableSchema
from synth_models.training import TrainingConfig, batch_size_for, plan_steps, train_local
from synth_models.vae import ELBOLoss, VAEModel, vae_step

NUM_ROWS, BATCH = 256, 64  # Poisson rate 1/4: expected batch size 64
METADATA = {
    "tables": {
        "t": {
            "columns": {
                "colour": {"sdtype": "categorical"},
                "flag": {"sdtype": "boolean"},
                "amount": {"sdtype": "numerical"},
                "score": {"sdtype": "numerical", "range_min": 0, "range_max": 1},
            }
        }
    }
}


@pytest.fixture(scope="module")
def encoder() -> TableEncoder:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], NUM_ROWS).astype(object),
            "flag": rng.random(NUM_ROWS) < 0.4,
            "amount": rng.lognormal(2, 1, NUM_ROWS).round(2),
            "score": rng.random(NUM_ROWS).round(3),
        }
    )
    schema = TableSchema.from_metadata(METADATA)
    stats, _ = release_statistics(
        statistics_inputs(frame, schema),
        noise_multiplier=0.0,
        threshold_delta=0.0,
        noise=SeededNoise(0),
    )
    enc = TableEncoder.from_statistics(schema, stats)
    enc.rows = torch.as_tensor(enc.transform(frame))  # test convenience
    return enc


def vae(encoder: TableEncoder) -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(encoder, latent_dim=8, hidden=(32, 32))


def gan(encoder: TableEncoder, dropout: float = 0.5) -> GANModel:
    torch.manual_seed(0)
    return GANModel(
        encoder,
        noise_dim=8,
        generator_hidden=(32,),
        discriminator_hidden=(32, 32),
        dropout=dropout,
    )


def ledger(budget: float = 1e6) -> PrivacyLedger:
    return PrivacyLedger(epsilon_budget=budget, delta=1e-5)


def parts_for(
    module: torch.nn.Module,
    criterion: torch.nn.Module,
    rows: torch.Tensor,
    *,
    noise: float | None,
    clip: float = 1e6,
    lr: float = 0.1,
    book: PrivacyLedger | None = None,
):
    loader = row_loader(rows, batch_size=BATCH, generator=torch.Generator().manual_seed(0))
    return make_training_parts(
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=lr),
        criterion=criterion,
        loader=loader,
        noise_multiplier=noise,
        max_grad_norm=clip,
        ledger=book if book is not None or noise is None else ledger(),
        noise=SeededNoise(123),
    )


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


# -- zero noise equals vanilla SGD -------------------------------------------------------------


def test_vae_zero_noise_step_equals_plain_step(encoder: TableEncoder) -> None:
    model = vae(encoder)
    plain = copy.deepcopy(model)
    start = flat(model)
    batch = encoder.rows[:BATCH]

    dp = parts_for(model, ELBOLoss(model.spans), encoder.rows, noise=0.0)
    assert dp.private and dp.optimizer.expected_batch_size == BATCH
    torch.manual_seed(1)  # the reparameterization noise
    vae_step(dp, batch)
    dp.close()

    vanilla = parts_for(plain, ELBOLoss(plain.spans), encoder.rows, noise=None)
    assert not vanilla.private
    torch.manual_seed(1)
    vae_step(vanilla, batch)

    assert (flat(model) - start).abs().max() > 1e-3  # the step did something
    assert torch.allclose(flat(model), flat(plain), atol=1e-6, rtol=0)


def test_gan_discriminator_zero_noise_step_equals_plain_step(encoder: TableEncoder) -> None:
    model = gan(encoder)
    plain = copy.deepcopy(model)
    start, start_generator = flat(model.discriminator), flat(model.generator)
    # Opacus divides the clipped sum by the expected batch size (the real rows' Poisson mean);
    # the critic's batch is real + fake rows, so make those add up to it.
    real, num_fake = encoder.rows[: BATCH // 2], BATCH // 2

    dp = parts_for(model.discriminator, torch.nn.BCEWithLogitsLoss(), encoder.rows, noise=0.0)
    torch.manual_seed(1)  # dropout
    discriminator_step(
        model, dp, real, num_fake=num_fake, generator=torch.Generator().manual_seed(5)
    )
    dp.close()

    vanilla = parts_for(plain.discriminator, torch.nn.BCEWithLogitsLoss(), encoder.rows, noise=None)
    torch.manual_seed(1)
    discriminator_step(
        plain, vanilla, real, num_fake=num_fake, generator=torch.Generator().manual_seed(5)
    )

    assert (flat(model.discriminator) - start).abs().max() > 1e-3
    assert torch.allclose(flat(model.discriminator), flat(plain.discriminator), atol=1e-6, rtol=0)
    # the generator is not touched by a critic step
    assert torch.equal(flat(model.generator), start_generator)


def test_noise_has_the_calibrated_scale(encoder: TableEncoder) -> None:
    """Same batch, same seeds: the only difference between noise 0 and noise sigma is the
    Gaussian noise, of std lr * sigma * C / expected batch size per coordinate."""
    sigma, clip, lr = 2.0, 0.5, 1.0
    results = []
    for noise in (0.0, sigma):
        model = vae(encoder)
        parts = parts_for(model, ELBOLoss(model.spans), encoder.rows, noise=noise, clip=clip, lr=lr)
        torch.manual_seed(1)
        vae_step(parts, encoder.rows[:BATCH])
        results.append(flat(model))
    difference = results[1] - results[0]
    expected = lr * sigma * clip / BATCH
    assert len(difference) > 3000
    assert difference.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(difference.mean().item()) < 4 * expected / math.sqrt(len(difference))


def test_dp_noise_and_batches_come_from_the_noise_source(encoder: TableEncoder) -> None:
    """Same model, batch, loader seed and torch seeds: by default (``SecureNoise``) two DP steps
    differ, so nobody holding the seeds can replay the noise; with the same ``SeededNoise``
    (tests only) they are equal. The Poisson batches follow the source the same way."""

    def step(noise) -> tuple[torch.Tensor, list[int]]:
        model = vae(encoder)
        loader = row_loader(encoder.rows, batch_size=BATCH, generator=torch.Generator())
        loader.generator.manual_seed(0)
        parts = make_training_parts(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            criterion=ELBOLoss(model.spans),
            loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            ledger=ledger(),
            **({} if noise is None else {"noise": noise}),
        )
        sizes = [len(b) for b, _ in zip(parts.batches(), range(3), strict=False)]
        torch.manual_seed(1)
        vae_step(parts, encoder.rows[:BATCH])
        parts.close()
        return flat(model), sizes

    (a, a_sizes), (b, b_sizes) = step(None), step(None)
    assert not torch.equal(a, b)
    assert a_sizes != b_sizes  # 3 Poisson batches of ~64 rows: equal by chance ~1e-4
    (c, c_sizes), (d, d_sizes) = step(SeededNoise(5)), step(SeededNoise(5))
    assert torch.equal(c, d) and c_sizes == d_sizes


def test_poisson_batches_have_the_sample_rate(encoder: TableEncoder) -> None:
    parts = parts_for(vae(encoder), ELBOLoss(vae(encoder).spans), encoder.rows, noise=1.0)
    assert parts.steps_per_epoch == NUM_ROWS // BATCH
    sizes = [len(b) for _ in range(50) for b in parts.batches()]
    # Binomial(256, 1/4) batches: mean 64, s.d. 6.9; 200 of them
    assert np.mean(sizes) == pytest.approx(BATCH, abs=5 * 6.93 / math.sqrt(len(sizes)))
    assert np.std(sizes) == pytest.approx(math.sqrt(NUM_ROWS * 0.25 * 0.75), rel=0.2)
    parts.close()


# -- per-sample clipping ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_update_norm_is_bounded_by_clipping(encoder: TableEncoder, kind: str) -> None:
    clip, lr = 0.01, 1.0
    if kind == "vae":
        model = vae(encoder)
        module, criterion = model, ELBOLoss(model.spans)
    else:
        model = gan(encoder)
        module, criterion = model.discriminator, torch.nn.BCEWithLogitsLoss()
    parts = parts_for(module, criterion, encoder.rows, noise=0.0, clip=clip, lr=lr)
    real = next(iter(parts.batches()))  # a Poisson batch from the DP loader
    assert 0 < len(real) < NUM_ROWS
    before = flat(module)
    torch.manual_seed(1)
    if kind == "vae":
        vae_step(parts, real)
        rows = len(real)
    else:
        discriminator_step(model, parts, real, num_fake=BATCH, generator=torch.Generator())
        rows = len(real) + BATCH
    update = (flat(module) - before).norm().item()
    bound = lr * clip * rows / BATCH
    assert 0 < update <= bound * (1 + 1e-5)
    # every per-sample gradient needed clipping, and Opacus brought each to at most C
    norms = parts.module.get_norm_sample()
    assert len(norms) == rows and (norms > clip).all()
    assert torch.all(parts.module.get_clipping_coef() * norms <= clip * (1 + 1e-5))


def _per_sample_vae_gradients(model: VAEModel, rows: torch.Tensor, eps: torch.Tensor):
    """Per-sample gradients of the VAE loss with torch.func (no Opacus), with the
    reparameterization noise fixed to ``eps``."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    criterion = ELBOLoss(model.spans)

    def loss(p, x, e):
        real_randn_like = torch.randn_like
        torch.randn_like = lambda t: e.unsqueeze(0)
        try:
            out = functional_call(model, p, (x.unsqueeze(0),))
        finally:
            torch.randn_like = real_randn_like
        return criterion(out, x.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, rows, eps)


def test_opacus_clips_each_sample(encoder: TableEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = 0.5
    model = vae(encoder)
    reference = copy.deepcopy(model)
    rows = encoder.rows[:BATCH]
    eps = torch.randn(BATCH, model.latent_dim, generator=torch.Generator().manual_seed(9))

    per_sample = _per_sample_vae_gradients(reference, rows, eps)
    names = [name for name, _ in reference.named_parameters()]
    norms = torch.cat([per_sample[n].reshape(BATCH, -1) for n in names], dim=1).norm(dim=1)
    assert (norms > clip).float().mean() > 0.5  # most samples need clipping

    parts = parts_for(model, ELBOLoss(model.spans), encoder.rows, noise=0.0, clip=clip)
    monkeypatch.setattr(torch, "randn_like", lambda t: eps)
    loss = parts.criterion(parts.module(rows), rows)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    monkeypatch.undo()

    # Opacus' ghost norms are the true per-sample gradient norms...
    ghost_norms = parts.module.get_norm_sample()
    assert torch.allclose(ghost_norms, norms, rtol=1e-4, atol=1e-5)
    # ... its coefficients bring every one of them to at most C ...
    coef = parts.module.get_clipping_coef()
    assert torch.all(coef <= 1.0) and torch.all(coef * norms <= clip * (1 + 1e-5))
    small = norms < clip
    assert torch.all(coef[small] == 1.0)
    assert torch.allclose((coef * norms)[~small], torch.full_like(norms[~small], clip), rtol=1e-4)
    # ... and the gradient it accumulates is the sum of the clipped per-sample gradients.
    for name, param in parts.module._module.named_parameters():
        clipped_sum = (coef.view(-1, *[1] * param.dim()) * per_sample[name]).sum(0)
        assert torch.allclose(param.grad, clipped_sum, rtol=1e-3, atol=1e-5), name
    parts.close()


# -- accounting ---------------------------------------------------------------------------------


def test_a_smaller_table_takes_smaller_batches_not_fewer_steps() -> None:
    config = TrainingConfig(epochs=2)  # batch 500, at least 80 steps an epoch
    assert batch_size_for(39_659, config) == 496  # the pooled pizzaplace rows: about 500
    assert batch_size_for(8_000, config) == 100  # one of five merchants
    assert plan_steps(8_000, config) == (0.0125, 160)  # as many steps as the pooled fit's
    assert batch_size_for(1_000, config) == 32  # never below MIN_BATCH_SIZE
    assert batch_size_for(10**6, config) == 500  # never above batch_size
    assert batch_size_for(8_000, TrainingConfig(min_steps_per_epoch=1)) == 500


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_every_dp_step_is_recorded(encoder: TableEncoder, kind: str) -> None:
    config = TrainingConfig(epochs=3, batch_size=BATCH, min_steps_per_epoch=1)
    sample_rate, steps = plan_steps(NUM_ROWS, config)
    assert (sample_rate, steps) == (0.25, 12)
    book = ledger(budget=2.0)
    noise = calibrate_noise_multiplier(
        book, target_epsilon=2.0, sample_rate=sample_rate, steps=steps
    )
    model = vae(encoder) if kind == "vae" else gan(encoder)
    history = train_local(
        model, encoder.rows.numpy(), config=config, noise_multiplier=noise, ledger=book, seed=0
    )
    assert len(book.records) == 1
    record = book.records[0]
    assert record.label == "dp-sgd"
    assert record.steps == steps
    assert record.noise_multiplier == noise
    assert record.sample_rate == sample_rate
    assert book.epsilon() == pytest.approx(2.0, rel=0.01) and book.epsilon() <= 2.0 * (1 + 1e-9)
    epsilons = [h["epsilon"] for h in history]
    assert len(epsilons) == 3 and all(a < b for a, b in itertools.pairwise(epsilons))
    assert epsilons[-1] == book.epsilon()
    for entry in history:
        assert all(math.isfinite(v) for v in entry.values())


def test_public_row_count_sets_rate_and_averaging(
    encoder: TableEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a (DP) public row count, neither the ledger nor the averaging uses the exact one."""
    seen: list[float] = []
    step = training.vae_step

    def recording(parts, real):
        seen.append(parts.optimizer.expected_batch_size)
        return step(parts, real)

    monkeypatch.setattr(training, "vae_step", recording)
    config = TrainingConfig(epochs=1, batch_size=BATCH, min_steps_per_epoch=1)
    book = ledger()
    train_local(
        vae(encoder),
        encoder.rows.numpy(),
        config=config,
        noise_multiplier=1.0,
        ledger=book,
        seed=0,
        public_rows=300.0,
    )
    record = book.records[0]
    assert record.sample_rate == BATCH / 300.0
    assert record.steps == int(300.0 / BATCH) == len(seen)
    assert seen == [pytest.approx(BATCH)] * len(seen)


def test_steps_add_up_over_rounds(encoder: TableEncoder) -> None:
    config = TrainingConfig(epochs=1, batch_size=BATCH, min_steps_per_epoch=1)
    book = ledger()
    model = vae(encoder)
    for _ in range(2):
        train_local(model, encoder.rows.numpy(), config=config, noise_multiplier=1.0, ledger=book)
    assert [r.steps for r in book.records] == [8]


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_too_small_budget_refuses_before_any_step(encoder: TableEncoder, kind: str) -> None:
    model = vae(encoder) if kind == "vae" else gan(encoder)
    before = copy.deepcopy(model.state_dict())
    book = ledger(budget=0.05)
    with pytest.raises(BudgetExceededError, match="would be exceeded"):
        train_local(
            model,
            encoder.rows.numpy(),
            config=TrainingConfig(epochs=2, batch_size=BATCH, min_steps_per_epoch=1),
            noise_multiplier=0.8,
            ledger=book,
            seed=0,
        )
    assert book.records == []
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and no Opacus hooks were left behind
    assert not hasattr(model, "_module") and not any(
        getattr(m, "_forward_hooks", None) for m in model.modules()
    )


def test_dp_needs_a_ledger(encoder: TableEncoder) -> None:
    model = vae(encoder)
    loader = row_loader(encoder.rows, batch_size=BATCH, generator=torch.Generator())
    with pytest.raises(ValueError, match="ledger"):
        make_training_parts(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            criterion=ELBOLoss(model.spans),
            loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            ledger=None,
        )


# -- empty Poisson batches ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_empty_batch_step_runs_and_counts(encoder: TableEncoder, kind: str) -> None:
    book = ledger()
    if kind == "vae":
        model = vae(encoder)
        parts = parts_for(model, ELBOLoss(model.spans), encoder.rows, noise=1.0, book=book)
        module = model
    else:
        model = gan(encoder)
        module = model.discriminator
        parts = parts_for(module, torch.nn.BCEWithLogitsLoss(), encoder.rows, noise=1.0, book=book)
    before = flat(module)
    empty = encoder.rows[:0]
    if kind == "vae":
        vae_step(parts, empty)
    else:
        discriminator_step(model, parts, empty, num_fake=8, generator=torch.Generator())
    after = flat(module)
    assert torch.isfinite(after).all()
    assert not torch.equal(after, before)  # the noise-only step was taken
    assert book.records[0].steps == 1
    parts.close()


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_training_through_empty_batches(
    encoder: TableEncoder, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 20-row table at Poisson rate 1/20: about a third of the batches are empty."""
    sizes: list[int] = []
    step_name = "vae_step" if kind == "vae" else "discriminator_step"
    step = getattr(training, step_name)

    def recording(*args, **kwargs):
        real = args[1] if kind == "vae" else args[2]
        sizes.append(len(real))
        return step(*args, **kwargs)

    monkeypatch.setattr(training, step_name, recording)
    rows = encoder.rows[:20].numpy()
    config = TrainingConfig(epochs=2, batch_size=1)
    model = vae(encoder) if kind == "vae" else gan(encoder)
    book = ledger()
    history = train_local(model, rows, config=config, noise_multiplier=1.0, ledger=book, seed=0)
    assert 0 in sizes
    assert len(sizes) == plan_steps(20, config)[1] == book.records[0].steps == 40
    assert all(math.isfinite(v) for entry in history for v in entry.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
