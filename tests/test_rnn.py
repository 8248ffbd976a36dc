"""The vanilla RNN: BPTT under BP matches torch.nn.RNN, under FA a hand-written BPTT with B."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynalign.config import Config
from dynalign.feedback import exact_gradients, feedback_layers
from dynalign.models import build
from dynalign.models.rnn import RNN
from dynalign.rules import attach_rule, make_rule

N, T, V, WIDTH = 5, 6, 4, 7
IMAGE = (1, 6, 5)  # rows of 5 pixels, 6 steps
N_CLASSES = 3

# σ'(a) written through h = σ(a), as a hand-written BPTT would use it
DERIVATIVES = {
    "tanh": lambda h: 1 - h**2,
    "sigmoid": lambda h: h * (1 - h),
    "relu": lambda h: (h > 0).to(h.dtype),
}


def make_model(task: str, activation: str = "tanh", seed: int = 0) -> RNN:
    torch.manual_seed(seed)
    if task == "sequence":
        return RNN((T,), V, WIDTH, activation).double()
    return RNN(IMAGE, N_CLASSES, WIDTH, activation).double()


def make_batch(task: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if task == "sequence":
        x = torch.randint(V, (N, T), generator=g)
        return x, torch.randint(V, (N, T), generator=g)
    x = torch.randn((N, *IMAGE), generator=g, dtype=torch.float64)
    return x, torch.randint(N_CLASSES, (N,), generator=g)


def as_steps(model: RNN, x: torch.Tensor) -> torch.Tensor:
    """The per-step input vectors (N, T, features), built independently of the model."""
    if model.task == "sequence":
        return F.one_hot(x, V).double()
    return x[:, 0]  # one channel: (N, H, W) rows


def grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [n for n, p in model.named_parameters()]
    values = torch.autograd.grad(loss, [p for p in model.parameters()])
    return dict(zip(names, values, strict=True))


def model_loss(model: RNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model.loss_terms(model(x), x, y)["loss"]


def set_fa(model: RNN, seed: int = 7) -> None:
    attach_rule(model, make_rule("fa"), torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- BP against torch.nn.RNN


@pytest.mark.parametrize("task", ["sequence", "image"])
def test_bp_gradients_match_torch_rnn(task):
    model = make_model(task)
    x, y = make_batch(task)
    core = model.rnn
    ref = nn.RNN(core.W_x.in_features, WIDTH, nonlinearity="tanh", batch_first=True).double()
    readout = nn.Linear(WIDTH, core.U.out_features).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(core.W_x.weight)
        ref.bias_ih_l0.copy_(core.W_x.bias)
        ref.weight_hh_l0.copy_(core.H.weight)
        ref.bias_hh_l0.zero_()
        readout.weight.copy_(core.U.weight)
        readout.bias.copy_(core.U.bias)

    hidden, _ = ref(as_steps(model, x))
    if task == "sequence":
        ref_loss = F.cross_entropy(readout(hidden).reshape(-1, V), y.reshape(-1))
    else:
        ref_loss = F.cross_entropy(readout(hidden[:, -1]), y)
    loss = model_loss(model, x, y)
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=0)

    got = grads(model, loss)
    expected = dict(
        zip(
            ["ih", "hh", "b_ih", "U", "c"],
            torch.autograd.grad(
                ref_loss,
                [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, readout.weight, readout.bias],
            ),
            strict=True,
        )
    )
    torch.testing.assert_close(got["rnn.W_x.weight"], expected["ih"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got["rnn.H.weight"], expected["hh"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got["rnn.W_x.bias"], expected["b_ih"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got["rnn.U.weight"], expected["U"], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got["rnn.U.bias"], expected["c"], rtol=1e-10, atol=1e-13)
    assert set(got) == {
        "rnn.W_x.weight",
        "rnn.W_x.bias",
        "rnn.H.weight",
        "rnn.U.weight",
        "rnn.U.bias",
    }


# ---------------------------------------------------------------- FA against hand-written BPTT


def manual_bptt(
    model: RNN,
    x: torch.Tensor,
    y: torch.Tensor,
    activation: str,
    B_U: torch.Tensor,
    B_H: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Forward and backward through time with plain tensor ops (no autograd).

    The error at h_t is e_t B_U (read-out) + δ_{t+1} B_H (recurrence); δ_t = that ⊙ σ'.
    """
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}[activation]
    core = model.rnn
    W_x, b = core.W_x.weight.detach(), core.W_x.bias.detach()
    H, U, c = core.H.weight.detach(), core.U.weight.detach(), core.U.bias.detach()
    xs = as_steps(model, x)
    n, steps, _ = xs.shape
    hs = [torch.zeros(n, W_x.shape[0], dtype=torch.float64)]  # h_0
    for t in range(steps):
        hs.append(act(xs[:, t] @ W_x.T + hs[-1] @ H.T + b))

    # dL/dz_t: softmax minus one-hot, divided by the number of scored positions
    errors = [None] * steps
    if model.task == "sequence":
        for t in range(steps):
            z = hs[t + 1] @ U.T + c
            errors[t] = (torch.softmax(z, -1) - F.one_hot(y[:, t], V)) / (n * steps)
    else:
        z = hs[-1] @ U.T + c
        errors[-1] = (torch.softmax(z, -1) - F.one_hot(y, N_CLASSES)) / n

    grad = {k: torch.zeros_like(v) for k, v in {"W_x": W_x, "b": b, "H": H, "U": U, "c": c}.items()}
    delta_next = None
    for t in reversed(range(steps)):
        h = hs[t + 1]
        error_h = torch.zeros_like(h)
        if errors[t] is not None:
            grad["U"] += errors[t].T @ h
            grad["c"] += errors[t].sum(0)
            error_h += errors[t] @ B_U
        if delta_next is not None:
            error_h += delta_next @ B_H
        delta = error_h * DERIVATIVES[activation](h)
        grad["W_x"] += delta.T @ xs[:, t]
        grad["b"] += delta.sum(0)
        grad["H"] += delta.T @ hs[t]
        delta_next = delta
    return grad


def assert_matches_manual(got: dict, manual: dict) -> None:
    pairs = {
        "rnn.W_x.weight": "W_x",
        "rnn.W_x.bias": "b",
        "rnn.H.weight": "H",
        "rnn.U.weight": "U",
        "rnn.U.bias": "c",
    }
    for name, key in pairs.items():
        torch.testing.assert_close(got[name], manual[key], rtol=1e-10, atol=1e-14, msg=name)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("task", ["sequence", "image"])
def test_fa_gradients_match_manual_bptt_with_feedback(task, activation):
    model = make_model(task, activation)
    set_fa(model)
    x, y = make_batch(task)
    core = model.rnn
    got = grads(model, model_loss(model, x, y))
    manual = manual_bptt(model, x, y, activation, core.U.feedback, core.H.feedback)
    assert_matches_manual(got, manual)
    # the same hand-written BPTT with B = W is backpropagation: the FA update must differ
    exact = manual_bptt(model, x, y, activation, core.U.weight.detach(), core.H.weight.detach())
    assert not torch.allclose(got["rnn.W_x.weight"], exact["W_x"])


@pytest.mark.parametrize("task", ["sequence", "image"])
def test_bp_gradients_match_manual_bptt_with_weights(task):
    model = make_model(task, "tanh")
    x, y = make_batch(task)
    core = model.rnn
    got = grads(model, model_loss(model, x, y))
    assert_matches_manual(
        got, manual_bptt(model, x, y, "tanh", core.U.weight.detach(), core.H.weight.detach())
    )


def test_w_x_error_of_earlier_steps_comes_through_b_h():
    """Images score only the last step, so every earlier step's error crosses B_H."""
    model = make_model("image")
    set_fa(model)
    x, y = make_batch("image")
    before = grads(model, model_loss(model, x, y))
    model.rnn.H.feedback = -model.rnn.H.feedback
    after = grads(model, model_loss(model, x, y))
    torch.testing.assert_close(after["rnn.U.weight"], before["rnn.U.weight"])
    assert not torch.allclose(after["rnn.W_x.weight"], before["rnn.W_x.weight"])
    assert not torch.allclose(after["rnn.H.weight"], before["rnn.H.weight"])


@pytest.mark.parametrize("task", ["sequence", "image"])
def test_exact_gradients_turn_fa_into_bp(task):
    model = make_model(task)
    x, y = make_batch(task)
    bp = grads(model, model_loss(model, x, y))
    set_fa(model)
    loss = model_loss(model, x, y)  # one forward pass, differentiated twice as the trainer does
    names = [n for n, _ in model.named_parameters()]
    fa = dict(
        zip(
            names,
            torch.autograd.grad(loss, list(model.parameters()), retain_graph=True),
            strict=True,
        )
    )
    with exact_gradients():
        exact = dict(zip(names, torch.autograd.grad(loss, list(model.parameters())), strict=True))
    for name in names:
        torch.testing.assert_close(exact[name], bp[name], rtol=1e-12, atol=1e-15, msg=name)
    assert not torch.allclose(fa["rnn.W_x.weight"], bp["rnn.W_x.weight"])


# ---------------------------------------------------------------- structure, shapes, errors


def test_feedback_layer_names_are_the_store_layer_names():
    assert set(feedback_layers(make_model("sequence"))) == {"rnn.W_x", "rnn.H", "rnn.U"}
    layers = feedback_layers(make_model("image"))
    assert set(layers) == {"rnn.W_x", "rnn.H", "rnn.U"}
    assert layers["rnn.H"].bias is None
    assert layers["rnn.W_x"].bias is not None and layers["rnn.U"].bias is not None


def test_output_shapes_for_both_tasks():
    seq = make_model("sequence")
    x, _ = make_batch("sequence")
    assert seq(x).shape == (N, T, V)
    assert seq(x[:, :3]).shape == (N, 3, V)  # any length runs the same weights

    img = make_model("image")
    x, _ = make_batch("image")
    assert img(x).shape == (N, N_CLASSES)
    torch.testing.assert_close(img(x[:, 0]), img(x))  # (N, H, W) is the one-channel image


def test_colour_images_feed_all_channels_of_a_row_per_step():
    torch.manual_seed(0)
    model = RNN((3, 4, 5), 2, WIDTH).double()
    assert model.rnn.W_x.in_features == 15
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert model(x).shape == (2, 2)
    # row r of every channel is step r: perturbing the last row changes only the last step
    hidden = model.rnn.hidden_states(model._rows(x))
    x2 = x.clone()
    x2[:, :, -1] += 1
    hidden2 = model.rnn.hidden_states(model._rows(x2))
    torch.testing.assert_close(hidden2[:, :-1], hidden[:, :-1])
    assert not torch.allclose(hidden2[:, -1], hidden[:, -1])


def test_capture_records_every_pre_activation_of_the_unrolled_loop():
    model = make_model("sequence")
    x, _ = make_batch("sequence")
    layers = feedback_layers(model)
    for layer in layers.values():
        layer.capturing = True
    model(x)
    assert [c.shape for c in layers["rnn.W_x"].captured] == [(N, T, WIDTH)]
    assert [c.shape for c in layers["rnn.H"].captured] == [(N, WIDTH)] * (T - 1)
    assert [c.shape for c in layers["rnn.U"].captured] == [(N, T, V)]


def test_empty_sequence_is_rejected():
    with pytest.raises(ValueError, match="no time steps"):
        make_model("sequence")(torch.zeros(N, 0, dtype=torch.long))


def test_build_dispatches_to_rnn():
    config = Config()
    config.model.kind, config.model.width, config.model.activation = "rnn", 9, "tanh"
    model = build(config, (T,), V, torch.Generator().manual_seed(0))
    assert isinstance(model, RNN) and model.rnn.H.weight.shape == (9, 9)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(N, T, V, dtype=torch.long),  # wrong rank
        torch.zeros(N, T),  # floats where tokens are expected
        torch.full((N, T), V),  # token outside the vocabulary
    ],
)
def test_sequence_input_errors(bad):
    with pytest.raises(ValueError, match="RNN|token"):
        make_model("sequence")(bad)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(N, 30, dtype=torch.float64),  # flattened: wrong rank
        torch.zeros(N, 1, 1, 6, 5, dtype=torch.float64),  # wrong rank
        torch.zeros(N, 1, 5, 6, dtype=torch.float64),  # transposed
        torch.zeros(N, 1, 6, 5, dtype=torch.long),  # not floating point
    ],
)
def test_image_input_errors(bad):
    with pytest.raises(ValueError, match="RNN on images"):
        make_model("image")(bad)


def test_constructor_errors():
    with pytest.raises(ValueError, match="mixed_relu"):
        RNN((T,), V, WIDTH, "mixed_relu")
    with pytest.raises(ValueError, match="input_shape"):
        RNN((2, 3, 4, 5), V, WIDTH)
    with pytest.raises(ValueError, match="width"):
        RNN((T,), V, 0)
    with pytest.raises(ValueError, match="empty dimension"):
        RNN((1, 0, 5), V, WIDTH)


# ---------------------------------------------------------------- learning smoke test


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_learns_a_delayed_copy_task(rule):
    """Next-token target = the previous token: the answer needs one step of memory."""
    torch.manual_seed(0)
    vocab, steps = 4, 8
    g = torch.Generator().manual_seed(3)
    x = torch.randint(vocab, (64, steps), generator=g)
    y = torch.cat([torch.zeros(64, 1, dtype=torch.long), x[:, :-1]], dim=1)
    model = RNN((steps,), vocab, 32, "tanh")
    attach_rule(model, make_rule(rule), torch.Generator().manual_seed(5))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = model_loss(model, x, y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(vocab), rel=0.1)
    assert losses[-1] < 0.8 * losses[0], losses[::10]
    n_correct, n_scored = model.correct(model(x), y)
    assert n_scored == x.numel() and n_correct > 0.9 * n_scored
