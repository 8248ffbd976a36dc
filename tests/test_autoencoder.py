"""Sparse autoencoder: loss terms, exact gradients under BP, FA's effect, a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynalign.config import Config, apply
from dynalign.feedback import exact_gradients, feedback_layers
from dynalign.models import build
from dynalign.models.autoencoder import SparseAutoencoder
from dynalign.rules import attach_rule, make_rule

RHO, BETA = 0.1, 3.0


def make_model(n_inputs=12, width=7, code=5, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return SparseAutoencoder(n_inputs, width, code, RHO, BETA).to(dtype)


def batch(shape=(9, 3, 4), seed=1, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def numpy_loss_terms(model, x):
    """The objective written out again in numpy float64, from the model's weights."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    xs = x.double().numpy().reshape(len(x), -1)
    h1 = sig(xs @ p["fc1.weight"].T + p["fc1.bias"])
    h2 = sig(h1 @ p["fc2.weight"].T + p["fc2.bias"])
    out = sig(h2 @ p["fc3.weight"].T + p["fc3.bias"])
    recon = 0.5 * np.mean(np.sum((out - xs) ** 2, axis=1))
    kl = 0.0
    for h in (h1, h2):
        for rho_hat in h.mean(axis=0):
            kl += RHO * math.log(RHO / rho_hat) + (1 - RHO) * math.log((1 - RHO) / (1 - rho_hat))
    return out, recon, BETA * kl


def plain_torch_loss(params, x):
    """An independent autograd implementation: F.linear and sigmoid on copies of the weights."""
    xs = x.reshape(len(x), -1)
    h1 = torch.sigmoid(F.linear(xs, params["fc1.weight"], params["fc1.bias"]))
    h2 = torch.sigmoid(F.linear(h1, params["fc2.weight"], params["fc2.bias"]))
    out = torch.sigmoid(F.linear(h2, params["fc3.weight"], params["fc3.bias"]))
    recon = ((out - xs) ** 2).sum() / (2 * len(x))
    penalty = 0.0
    for h in (h1, h2):
        q = h.mean(0)
        penalty = penalty + (RHO * (RHO / q).log() + (1 - RHO) * ((1 - RHO) / (1 - q)).log()).sum()
    return recon + BETA * penalty


def test_loss_terms_match_a_direct_float64_computation():
    model, x = make_model(), batch()
    out = model(x)
    assert out.shape == (9, 12)
    terms = model.loss_terms(out, x, torch.zeros(9, dtype=torch.long))
    ref_out, recon, sparsity = numpy_loss_terms(model, x)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-12)
    assert terms["recon_loss"].item() == pytest.approx(recon, rel=1e-12)
    assert terms["sparsity_loss"].item() == pytest.approx(sparsity, rel=1e-12)
    assert terms["loss"].item() == pytest.approx(recon + sparsity, rel=1e-12)
    assert set(terms) == {"loss", *model.loss_term_names}


def test_kl_is_zero_when_every_unit_averages_rho():
    model = make_model(n_inputs=4, width=3, code=2)
    with torch.no_grad():  # zero weights and logit(rho) biases: every hidden unit outputs rho
        for layer in (model.fc1, model.fc2):
            layer.weight.zero_()
            layer.bias.fill_(math.log(RHO / (1 - RHO)))
    x = batch((5, 4))
    terms = model.loss_terms(model(x), x, None)
    assert terms["sparsity_loss"].item() == pytest.approx(0.0, abs=1e-12)


def test_saturated_units_give_a_finite_penalty():
    model = make_model(n_inputs=4, width=3, code=2)
    with torch.no_grad():
        model.fc1.bias.fill_(100.0)  # sigmoid(100) == 1 in float64: clamped, not log(0)
    x = batch((5, 4))
    assert math.isfinite(model.loss_terms(model(x), x, None)["loss"].item())


def test_bp_gradients_equal_autograd_of_a_plain_implementation():
    model, x = make_model(), batch()
    loss = model.loss_terms(model(x), x, None)["loss"]
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    ref = torch.autograd.grad(plain_torch_loss(params, x), [params[n] for n in names])
    for name, g, r in zip(names, grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=name)


def test_under_fa_only_the_output_layer_gets_the_true_gradient():
    model, x = make_model(), batch()
    attach_rule(model, make_rule("fa"), torch.Generator().manual_seed(3))
    weights = {n: m.weight for n, m in feedback_layers(model).items()}
    loss = model.loss_terms(model(x), x, None)["loss"]
    params = list(weights.values())
    fa = dict(zip(weights, torch.autograd.grad(loss, params, retain_graph=True), strict=True))
    with exact_gradients():
        bp = dict(zip(weights, torch.autograd.grad(loss, params), strict=True))
    torch.testing.assert_close(fa["fc3"], bp["fc3"], rtol=1e-12, atol=1e-14)
    for name in ("fc1", "fc2"):
        assert (fa[name] - bp[name]).abs().max() > 1e-3 * bp[name].abs().max(), name


def test_training_with_bp_reduces_the_reconstruction_error():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)  # [0, 1]
    torch.manual_seed(0)
    model = SparseAutoencoder(64, 32, 16, 0.1, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    draws = torch.Generator().manual_seed(0)
    with torch.no_grad():
        initial = model.loss_terms(model(x), x, None)["recon_loss"].item()
    for _ in range(200):
        xb = x[torch.randint(0, len(x), (64,), generator=draws)]
        loss = model.loss_terms(model(xb), xb, None)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = model.loss_terms(model(x), x, None)["recon_loss"].item()
    mean_image = (0.5 * (x - x.mean(0)).pow(2).sum(1).mean()).item()
    assert final < 0.4 * initial
    assert final < 0.75 * mean_image  # beyond the mean image: reconstructions depend on the input


def test_reconstruct_keeps_the_input_shape_and_the_kept_activations():
    model, x = make_model(), batch()
    out = model(x)
    kept = model.hidden
    rec = model.reconstruct(batch(seed=5))
    assert rec.shape == x.shape and not rec.requires_grad
    assert model.hidden is kept
    torch.testing.assert_close(model.reconstruct(x), out.detach().reshape(x.shape))


def test_no_accuracy_and_named_layers():
    model = make_model()
    assert model.correct(model(batch()), torch.zeros(9, dtype=torch.long)) == (0, 0)
    assert list(feedback_layers(model)) == ["fc1", "fc2", "fc3"]
    assert model.loss_term_names == ("recon_loss", "sparsity_loss")


def test_models_build_dispatches_here():
    cfg = apply(Config(), {"model.kind": "autoencoder", "model.width": 20, "model.code_size": 6})
    model = build(cfg, (8, 8), 10, torch.Generator().manual_seed(0))
    assert isinstance(model, SparseAutoencoder)
    assert model.fc1.weight.shape == (20, 64) and model.fc3.weight.shape == (64, 6)


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        SparseAutoencoder(4, 3, 2, 0.0, 1.0)
    with pytest.raises(ValueError, match="must not be negative"):
        SparseAutoencoder(4, 3, 2, 0.05, -1.0)
    with pytest.raises(ValueError, match="code_size must be a positive int"):
        SparseAutoencoder(4, 3, 0, 0.05, 1.0)
    model = make_model(n_inputs=12)
    with pytest.raises(ValueError, match="expects 12 inputs per sample"):
        model(torch.zeros(3, 10, dtype=torch.float64))
    fresh = make_model()
    with pytest.raises(ValueError, match="output of the latest forward"):
        fresh.loss_terms(torch.zeros(2, 12), torch.zeros(2, 12), None)


def test_reconstructions_follow_their_own_schedule(tmp_path):
    """probes.reconstruction_every, not snapshot_every, sets when reconstructions are taken
    (plus before the first step and after the last)."""
    from dynalign.config import build_config
    from dynalign.reader import open_run
    from dynalign.record import record

    config = build_config(
        preset="sae-fa",
        overrides={
            "data.n_train": 120,
            "data.n_val": 20,
            "train.batch_size": 20,
            "train.epochs": 2,  # 12 steps
            "model.width": 16,
            "model.code_size": 4,
            "probes.snapshot_every": 5,
            "probes.reconstruction_every": 3,
            "train.threads": 1,
        },
    )
    record(config, tmp_path / "sae.zarr", progress=False)
    tree = open_run(tmp_path / "sae.zarr")
    assert list(tree["reconstructions"].ds.snapshot_step.values) == [0, 3, 6, 9, 12]
    assert list(tree["snapshots/fc1"].ds.snapshot_step.values) == [0, 5, 10, 12]
