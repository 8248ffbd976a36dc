"""B renewed from W element by element (``dynalign.renewal``): written inside SGD's compiled
pass, it equals SGD's step followed by the renewal on its own, bitwise, and each kind equals its
definition computed by torch; the sums of the pass measure the renewed B; a recorded run gives
the same trajectory whether the renewal rides in the optimiser's pass or not, and whether a B
that no error passes through is renewed after every step or when it is read."""

import numpy as np
import pytest
import torch
from synthetic_stores import store_arrays

from dynalign import kernels
from dynalign.renewal import Renewal
from dynalign.sign_concordant import hashed_uniform
from dynalign.weight_step import PARALLEL_FROM

KINDS = ["usf", "frsf", "brsf", "kp"]


def _renewal(kind: str, b: torch.Tensor, g: torch.Generator) -> Renewal:
    if kind == "usf":
        return Renewal(b, 0.043)
    if kind == "frsf":
        return Renewal(b, torch.rand(b.shape, generator=g, dtype=b.dtype))
    if kind == "brsf":
        return Renewal(b, 0.07, (2**32 + 5, 123456789))
    return Renewal(b, offset=torch.randn(b.shape, generator=g, dtype=b.dtype), alpha=0.8125)


def _definition(kind: str, renewal: Renewal, w: torch.Tensor) -> torch.Tensor:
    """B from W by torch's operations: the independent statement of each recipe."""
    if kind == "kp":
        return torch.add(w, renewal.offset, alpha=renewal.alpha)
    if kind == "brsf":
        u = hashed_uniform(w.numel(), 5, 123456789).to(w.dtype)
        return u * renewal.magnitude * torch.sign(w)
    return torch.sign(w) * renewal.magnitude


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,threads", [(3 * 64 + 5, 1), (PARALLEL_FROM + kernels.BLOCK // 3, 2)])
def test_renewal_in_the_step_equals_step_then_renewal(kind, dtype, n, threads, torch_threads):
    """Three steps: W, the velocity and B bitwise as the update alone followed by the renewal
    alone (and B as torch computes the recipe); the pass's ⟨W, B⟩ and |B|² are those of the
    renewed B, in float64."""
    torch_threads(threads)
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g, dtype=dtype)
    w[:40] = 0.0  # zeros keep B at 0 (sign renewals) and stay put without gradient
    v = torch.randn(n, generator=g, dtype=dtype)
    v[:40] = 0.0
    fused = (w.clone(), v.clone(), torch.zeros(n, dtype=dtype))
    apart = (w.clone(), v.clone(), torch.zeros(n, dtype=dtype))
    renewals = [_renewal(kind, b, torch.Generator().manual_seed(1)) for b in (fused[2], apart[2])]
    kind_ = np.float64 if dtype == torch.float64 else np.float32
    settings = (kind_(0.05), kind_(0.9), kind_(1e-3))
    for _ in range(3):
        grad = torch.randn(n, generator=g, dtype=dtype)
        grad[:20] = 0.0
        sums = kernels.sgd_sweep(
            fused[0].numpy(), fused[1].numpy(), grad.numpy(), None, *settings, threads,
            renewals[0].kernel_args(),
        )  # fmt: skip
        kernels.sgd_sweep(apart[0].numpy(), apart[1].numpy(), grad.numpy(), None, *settings, 1)
        renewals[1].apply(apart[0])
        for a, b in zip(fused, apart, strict=True):
            assert torch.equal(a, b)
        assert torch.equal(fused[2], _definition(kind, renewals[0], fused[0]))
        b64, w64 = fused[2].double(), fused[0].double()
        assert sums[4] == pytest.approx(float((w64 * b64).sum()), rel=1e-12)
        assert sums[5] == pytest.approx(float((b64 * b64).sum()), rel=1e-12)
    if kind != "kp":
        assert (fused[2][:20] == 0).all() and (torch.sign(fused[2]) == torch.sign(fused[0])).all()


@pytest.mark.parametrize("kind", ["usf", "frsf"])
@pytest.mark.parametrize("measure", [False, True])
@pytest.mark.parametrize("n,threads", [(3 * 64 + 5, 1), (PARALLEL_FROM + kernels.BLOCK // 3, 2)])
def test_an_unchanged_recipe_writes_b_where_w_changed_sides_and_b_ends_the_same(
    kind, measure, n, threads, torch_threads
):
    """usf's and frsf's B depends on W's side of zero alone, so the update's pass writes B
    only where W left its side (steps large enough that many do; zeros, -0 and NaN among them),
    or, without sums, in the spans of ``kernels.SPAN`` elements holding such a W: B, W and the
    velocity end bitwise as with every element written, and B holds its definition; in a span
    where every W stays on its side, B keeps whatever it held."""
    torch_threads(threads)
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g) * 0.01
    w[:30], w[30:40], w[40] = 0.0, -0.0, float("nan")
    steady = slice(kernels.SPAN, 2 * kernels.SPAN)  # a span far from zero: no W changes sides
    w[steady] += 5.0
    v = torch.randn(n, generator=g) * 0.01
    grads = [torch.randn(n, generator=g) for _ in range(3)]
    settings = (np.float32(0.05), np.float32(0.9), np.float32(0.0))
    runs, sums_by_step = {}, {}
    for lazy in (False, True):
        b = torch.empty(n)
        renewal = _renewal(kind, b, torch.Generator().manual_seed(1))
        renewal.apply(w)  # B written from W before the first step, as ``attach`` does
        renewal = Renewal(b, renewal.magnitude, unchanged=lazy)
        state = (w.clone(), v.clone(), b)
        marked = []
        for step, grad in enumerate(grads):
            before = state[0].clone()
            if lazy and step == 2:  # a value only a write can change
                marked = torch.arange(steady.start, steady.start + 5)
                assert (before[steady] > 1).all()
                b[marked] = 12.5
            sums = kernels.sgd_sweep(
                state[0].numpy(), state[1].numpy(), grad.numpy(), None, *settings, threads,
                renewal.kernel_args(), measure,
            )  # fmt: skip
            if step < 2:  # the pass's sums measure the same B (NaN where W is NaN)
                sums_by_step.setdefault(step, []).append(sums)
        runs[lazy] = state, marked
    for full_sums, lazy_sums in sums_by_step.values():
        np.testing.assert_allclose(full_sums, lazy_sums, rtol=1e-12)  # summed in another order
    (full, _), (lazy, marked) = runs[False], runs[True]
    crossed = (torch.sign(w) != torch.sign(full[0])).sum()
    assert crossed > n // 20  # the steps did move many weights across zero
    b_full, b_lazy = full[2].clone(), lazy[2].clone()
    assert len(marked) == 5 and (b_lazy[marked] == 12.5).all()
    b_lazy[marked] = b_full[marked]
    for a, b in zip((*full[:2], b_full), (*lazy[:2], b_lazy), strict=True):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
        assert torch.equal(torch.signbit(a), torch.signbit(b))  # -0 stays -0
    rest = torch.ones(n, dtype=torch.bool)
    rest[marked] = False
    renewal = _renewal(kind, torch.empty(n), torch.Generator().manual_seed(1))
    want = _definition(kind, renewal, lazy[0])
    assert torch.equal(b_lazy[rest][~lazy[0][rest].isnan()], want[rest][~lazy[0][rest].isnan()])


def test_an_unchanged_recipe_is_a_signed_magnitude_only():
    b = torch.zeros(4)
    with pytest.raises(ValueError, match="unchanged"):
        Renewal(b, 0.5, (1, 2), unchanged=True)
    with pytest.raises(ValueError, match="unchanged"):
        Renewal(b, offset=torch.zeros(4), alpha=1.0, unchanged=True)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_path_gives_the_compiled_numbers(kind):
    """A B the compiled loops do not take (not contiguous) is written by torch's operations,
    with the same numbers: a run's B does not depend on its layout."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 70, generator=g)
    w[w.abs() < 0.05] = 0
    compiled = _renewal(kind, torch.empty_like(w), torch.Generator().manual_seed(1))
    strided = Renewal(torch.empty(70, 300).t(), compiled.magnitude, compiled.keys,
                      compiled.offset, compiled.alpha)  # fmt: skip
    assert compiled.compiled(w) and not strided.compiled(w)
    compiled.apply(w)
    strided.apply(w)
    assert torch.equal(strided.feedback, compiled.feedback)


def test_mismatched_recipes_are_refused():
    w = torch.randn(4, 5)
    with pytest.raises(ValueError, match="weight's shape and dtype"):
        Renewal(torch.empty(4, 5), torch.rand(5, 4)).apply(w)
    with pytest.raises(ValueError, match="weight's shape and dtype"):
        Renewal(torch.empty(4, 5), offset=torch.zeros(4, 5, dtype=torch.float64)).apply(w)
    with pytest.raises(ValueError, match="not both"):
        Renewal(torch.empty(4, 5), 0.5, (1, 2), offset=torch.zeros(4, 5))


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf", "kp"])
def test_renewing_in_the_optimisers_pass_does_not_change_the_run(
    tmp_path, tiny_config, rule, monkeypatch
):
    """A run whose steps write W (and a renewed B) in SGD's compiled pass, and the same run with
    that pass declined (torch's step, then every renewal on its own), with probes on every
    step, on none and on every third (the first layer's B owed its renewal on the steps
    between, then measured): the same losses, probe values and snapshots of W and B, bitwise;
    brsf's key stream included; FA, whose B stays, takes the compiled step on probed steps."""
    from dynalign.record import record

    runs = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr("dynalign.trainer.measured_step", lambda *a, **k: None)
        for every in (1, 0, 3):
            cfg = tiny_config(**{"rule.name": rule, "probes.every": every,
                                 "train.weight_decay": 1e-3})  # fmt: skip
            path = tmp_path / f"{fused}-{every}.zarr"
            record(cfg, path, progress=False)
            runs[fused, every] = store_arrays(path)
    for every in (1, 0, 3):
        assert sorted(runs[True, every]) == sorted(runs[False, every])
        for name, value in runs[True, every].items():
            if name.startswith("steps/") or name.startswith("snapshots/"):
                np.testing.assert_array_equal(value, runs[False, every][name], err_msg=name)
    loss = "steps/loss"
    np.testing.assert_array_equal(runs[True, 1][loss], runs[True, 0][loss])


def _renew_all_now(renewals, layers, measure):
    return renewals, []


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf", "kp"])
def test_a_b_no_error_passes_through_is_renewed_when_read(rule, monkeypatch):
    """The first layer's input (the data) needs no gradient, so no backward pass reads its B:
    on an unprobed step its renewal is owed, not written. Read through the attribute, the
    probes' view or ``state_dict``, it is bitwise the B of a twin trainer that renews every B
    after every step, with the same W; the other layers' B are written in the step."""
    from dynalign.config import build_config
    from dynalign.feedback import CurrentFeedback
    from dynalign.record import prepare
    from dynalign.trainer import Trainer

    def trainer() -> Trainer:
        config = build_config(overrides={
            "rule.name": rule, "model.depth": 2, "model.width": 32, "data.n_train": 300,
            "data.n_val": 100, "train.batch_size": 30, "train.weight_decay": 1e-3,
        })  # fmt: skip
        data, model, constraint, rule_object = prepare(config)
        return Trainer(config, data, model, rule_object, None, constraint, progress=False)

    owing, twin = trainer(), trainer()
    x, y = owing.data.x_train, owing.data.y_train
    first = list(owing.layers)[0]
    changed = 0
    for step in range(8):
        batch = slice(30 * step, 30 * step + 30)
        owing.train_batch(x[batch], y[batch])
        with monkeypatch.context() as m:  # the twin renews every B in the step's own pass
            m.setattr("dynalign.trainer.split_owed", _renew_all_now)
            twin.train_batch(x[batch], y[batch])
        if step == 0:
            continue  # SGD's first step creates the velocity: torch's step, B renewed after it
        for name, layer in owing.layers.items():
            assert torch.equal(layer.weight, twin.layers[name].weight)
            expected = twin.layers[name].feedback
            if name != first:  # written in the step: nothing owed
                assert torch.equal(layer.feedback_buffer(), expected), name
            else:
                changed += not torch.equal(layer.feedback_buffer(), expected)
        how = step % 3
        if how == 0:
            got = dict(zip(owing.layers, CurrentFeedback(list(owing.layers.values())), strict=True))
        elif how == 1:
            state = owing.model.state_dict()
            got = {n: state[f"{n}.feedback"] for n in owing.layers}
        else:
            got = {n: layer.feedback for n, layer in owing.layers.items()}
        for name, b in got.items():
            assert torch.equal(b, twin.layers[name].feedback), (rule, step, how, name)
        assert torch.equal(owing.layers[first].feedback_buffer(), twin.layers[first].feedback)
    if rule in ("brsf", "kp"):  # B follows every change of W: owed, it stood still
        assert changed == 7
