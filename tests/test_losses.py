"""jaxpref.losses against TRL 1.16's DPOTrainer loss code, hand-computed values, and gradient checks."""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import losses as L
from trl_reference import trl_dpo_loss

RTOL, ATOL = 1e-6, 1e-6  # fp32 on both sides; ATOL covers losses that are ~0

PAIRED_TYPES = [t for t in L.DPO_LOSS_TYPES if t not in ("aot", "aot_unpaired", "sft")]


def _random_logps(seed, b=16, scale=20.0):
    rng = np.random.default_rng(seed)
    base = -rng.uniform(20, 200, size=(4, b)).astype(np.float32)
    # Reference near the policy so log-ratios span both signs and several magnitudes.
    pc, pr = base[0], base[1]
    rc = pc + rng.normal(0, scale, b).astype(np.float32)
    rr = pr + rng.normal(0, scale, b).astype(np.float32)
    lens_c = rng.integers(1, 60, b)
    lens_r = rng.integers(1, 60, b)
    return pc, pr, rc, rr, lens_c, lens_r


def _ours(pc, pr, rc, rr, **kw):
    out, _, _ = L.dpo_loss(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr), **kw)
    return np.asarray(out)


def _per_example_trl(pc, pr, rc, rr, lens_c, lens_r, **kw):
    return np.array([
        trl_dpo_loss(pc[i : i + 1], pr[i : i + 1], rc[i : i + 1], rr[i : i + 1],
                     chosen_lengths=lens_c[i : i + 1], rejected_lengths=lens_r[i : i + 1], **kw)
        for i in range(len(pc))
    ])


def _kwargs_for(loss_type):
    kw = dict(loss_type=loss_type)
    if loss_type == "exo_pair":
        kw["label_smoothing"] = 1e-3
    if loss_type == "robust":
        kw["label_smoothing"] = 0.2
    return kw


@pytest.mark.parametrize("loss_type", PAIRED_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_each_loss_type_matches_trl(loss_type, beta):
    pc, pr, rc, rr, lc, lr = _random_logps(seed=zlib.crc32(f"{loss_type}/{beta}".encode()))
    kw = _kwargs_for(loss_type) | dict(beta=beta)
    ours = _ours(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
    ref = _per_example_trl(pc, pr, rc, rr, lc, lr, **kw)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_sorted_losses_match_trl_batch_mean(loss_type, label_smoothing):
    """AOT sorts across the batch, so compare TRL's batch mean and the sorted structure."""
    pc, pr, rc, rr, lc, lr = _random_logps(seed=3)
    kw = dict(loss_type=loss_type, beta=0.2, label_smoothing=label_smoothing)
    ours = _ours(pc, pr, rc, rr, **kw)
    ref = trl_dpo_loss(pc, pr, rc, rr, **kw)
    np.testing.assert_allclose(ours.mean(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("label_smoothing", [0.05, 0.2, 0.4])
def test_robust_and_exo_label_smoothing_match_trl(label_smoothing):
    pc, pr, rc, rr, lc, lr = _random_logps(seed=11)
    for loss_type in ("robust", "exo_pair"):
        kw = dict(loss_type=loss_type, beta=0.1, label_smoothing=label_smoothing)
        np.testing.assert_allclose(
            _ours(pc, pr, rc, rr, **kw), _per_example_trl(pc, pr, rc, rr, lc, lr, **kw), rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("f_div", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "sigmoid_norm", "robust", "discopop"])
def test_f_divergences_match_trl(f_div, loss_type):
    # forward KL's 1 - exp(-h) explodes for very negative log-ratios; keep them moderate (as in training).
    pc, pr, rc, rr, lc, lr = _random_logps(seed=5, scale=2.0)
    kw = _kwargs_for(loss_type) | dict(beta=0.1, f_divergence_type=f_div, f_alpha_divergence_coef=0.5)
    ours = _ours(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
    ref = _per_example_trl(pc, pr, rc, rr, lc, lr, **kw)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_f_divergence_rejected_for_incompatible_loss():
    with pytest.raises(ValueError, match="works only with loss types"):
        L.dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), loss_type="bco_pair",
                   f_divergence_type="forward_kl")


def test_reference_free_matches_trl_with_zero_reference():
    pc, pr, _, _, lc, lr = _random_logps(seed=7)
    z = np.zeros_like(pc)
    for loss_type in ("sigmoid", "ipo", "bco_pair"):
        kw = dict(loss_type=loss_type, beta=0.01)
        ours, rw, rl = L.dpo_loss(pc, pr, reference_free=True, chosen_lengths=lc, rejected_lengths=lr, **kw)
        np.testing.assert_allclose(ours, _per_example_trl(pc, pr, z, z, lc, lr, **kw), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(rw, 0.01 * pc, rtol=1e-6)


def test_weighted_multi_loss_matches_trl():
    """MPO-style combination: TRL's loss_type list with loss_weights."""
    pc, pr, rc, rr, lc, _ = _random_logps(seed=9)
    lc = np.full_like(lc, 17)  # TRL's sft averages over all chosen tokens: equal lengths make it per-example
    kw = dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], beta=0.1)
    ours = _ours(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lc, **kw)
    np.testing.assert_allclose(ours.mean(), trl_dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lc, **kw),
                               rtol=RTOL, atol=ATOL)


def test_rewards_are_beta_times_log_ratio():
    pc, pr, rc, rr, _, _ = _random_logps(seed=1)
    _, rw, rl = L.dpo_loss(pc, pr, rc, rr, beta=0.3)
    np.testing.assert_allclose(rw, 0.3 * (pc - rc), rtol=1e-5)
    np.testing.assert_allclose(rl, 0.3 * (pr - rr), rtol=1e-5)


def test_conservative_dpo_label_smoothing_hand_computed():
    """cDPO: -(1-eps) log sigma(u) - eps log sigma(-u). (TRL 1.16 ignores eps for 'sigmoid'.)"""
    losses, _, _ = L.dpo_loss(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-2.0]),
                              beta=0.5, label_smoothing=0.25)
    u = 0.5 * ((-1 + 2) - (-3 + 2))  # = 1.0
    expected = -0.75 * math.log(1 / (1 + math.exp(-u))) - 0.25 * math.log(1 / (1 + math.exp(u)))
    np.testing.assert_allclose(float(losses[0]), expected, rtol=1e-6)


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        L.dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), loss_type="kto")
    assert "sigmoid" in str(err.value) and "discopop" in str(err.value) and "'kto'" in str(err.value)


def test_missing_lengths_and_bad_smoothing_raise():
    z = jnp.zeros(2)
    with pytest.raises(ValueError, match="chosen_lengths"):
        L.dpo_loss(z, z, z, z, loss_type="ipo")
    with pytest.raises(ValueError, match="exo_pair"):
        L.dpo_loss(z, z, z, z, loss_type="exo_pair")
    with pytest.raises(ValueError, match="0.5"):
        L.dpo_loss(z, z, z, z, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="loss_weights"):
        L.dpo_loss(z, z, z, z, loss_type=["sigmoid", "hinge"], loss_weights=[1.0])


# ----------------------------------------------------------------------------------------------------
# Gradients


def _scalar_loss(kw):
    def f(x):  # x = [policy_chosen, policy_rejected], reference fixed at 0
        z = jnp.zeros_like(x[0])
        out, _, _ = L.dpo_loss(x[0], x[1], z, z, chosen_lengths=jnp.full_like(z, 7.0),
                               rejected_lengths=jnp.full_like(z, 9.0), **kw)
        return out.sum()

    return f


@pytest.mark.parametrize("loss_type", L.DPO_LOSS_TYPES)
def test_gradients_finite_at_extremes(loss_type):
    kw = _kwargs_for(loss_type) | dict(beta=0.1)
    f = jax.grad(_scalar_loss(kw))
    for a, b in [(1e4, -1e4), (-1e4, 1e4), (1e4, 1e4), (-1e4, -1e4)]:
        g = f(jnp.array([[a, 0.5 * a], [b, 0.5 * b]], jnp.float32))
        assert np.all(np.isfinite(g)), (loss_type, a, b, g)


def test_ropo_gradients_finite_at_extremes():
    for d in (1e4, -1e4):
        g = jax.grad(lambda x: L.ropo_loss(x[0], x[1], jnp.zeros(1), jnp.zeros(1))[0].sum())(jnp.array([[d], [0.0]]))
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("loss_type", L.DPO_LOSS_TYPES)
def test_gradients_match_finite_differences(loss_type):
    kw = _kwargs_for(loss_type) | dict(beta=0.3)
    f64 = _scalar_loss(kw)
    x = np.array([[-3.0, 1.5, 0.2], [2.0, -0.7, 0.9]])
    with jax.enable_x64(True):
        xj = jnp.asarray(x, jnp.float64)
        g = np.asarray(jax.grad(f64)(xj))
        eps = 1e-6
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            d = np.zeros_like(x)
            d[idx] = eps
            fd[idx] = (float(f64(jnp.asarray(x + d))) - float(f64(jnp.asarray(x - d)))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# ROPO


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("alpha", [6.0, 14.0, 30.0])
def test_ropo_loss_hand_computed(alpha):
    pc, pr, rc, rr = -10.0, -14.0, -11.0, -12.0
    beta = 0.2
    u = beta * ((pc - rc) - (pr - rr))
    c = 4 * alpha / (1 + alpha) ** 2
    expected = c * (-np.log(_sigmoid(u)) + alpha * _sigmoid(-u))
    got, rw, rl = L.ropo_loss(jnp.array([pc]), jnp.array([pr]), jnp.array([rc]), jnp.array([rr]), alpha=alpha,
                              beta=beta)
    np.testing.assert_allclose(float(got[0]), expected, rtol=1e-6)
    np.testing.assert_allclose([float(rw[0]), float(rl[0])], [beta * (pc - rc), beta * (pr - rr)], rtol=1e-6)


@pytest.mark.parametrize("alpha", [6.0, 14.0, 30.0])
def test_ropo_gradient_weight_limits_and_maximum(alpha):
    """w(-inf) = 4a/(1+a)^2, w(+inf) = 0, max_u w(u) = 1; and jax.grad agrees with w."""
    c = 4 * alpha / (1 + alpha) ** 2
    u = jnp.linspace(-40, 40, 400001)
    w = np.asarray(L.ropo_gradient_weight(u, alpha))
    np.testing.assert_allclose(w[0], c, rtol=1e-6)
    assert w[-1] < 1e-12
    np.testing.assert_allclose(w.max(), 1.0, rtol=1e-6)
    beta = 0.5
    delta = jnp.array([-30.0, -3.0, 0.0, 2.0, 10.0])
    grad = jax.grad(lambda d: L.ropo_loss(d, jnp.zeros_like(d), jnp.zeros_like(d), jnp.zeros_like(d),
                                          alpha=alpha, beta=beta)[0].sum())(delta)
    np.testing.assert_allclose(np.asarray(grad), -beta * np.asarray(L.ropo_gradient_weight(beta * delta, alpha)),
                               rtol=1e-5, atol=1e-9)


def test_ropo_suppresses_confidently_contradicted_pairs():
    """The paper's property: DPO's weight grows as the margin becomes more negative; ROPO's does not."""
    beta, alpha = 0.1, 14.0
    deltas = jnp.array([-200.0, -100.0, -50.0, -20.0, 0.0])  # increasingly contradicted to the left

    def grads(loss_fn):
        return np.abs(np.asarray(jax.grad(lambda d: loss_fn(d, jnp.zeros_like(d), jnp.zeros_like(d),
                                                             jnp.zeros_like(d))[0].sum())(deltas)))

    g_dpo = grads(lambda *a: L.dpo_loss(*a, beta=beta))
    g_ropo = grads(lambda *a: L.ropo_loss(*a, alpha=alpha, beta=beta))
    assert np.all(np.diff(g_dpo) < 0)  # DPO: more contradicted -> larger gradient
    # ROPO: the most contradicted pair gets less push than an uncertain one, and far less than under DPO.
    assert g_ropo[0] < g_ropo[3]
    assert g_ropo[0] < 0.3 * g_dpo[0]
    # Relative to the uncertain pair (delta=0), ROPO down-weights the contradicted pair; DPO up-weights it.
    assert g_ropo[0] / g_ropo[-1] < 1.0 < g_dpo[0] / g_dpo[-1]


def test_ropo_alpha_zero_is_dpo():
    pc, pr, rc, rr, _, _ = _random_logps(seed=2)
    np.testing.assert_allclose(L.ropo_loss(pc, pr, rc, rr, alpha=0.0)[0], L.dpo_loss(pc, pr, rc, rr)[0], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Reward-model loss and reductions


def test_bradley_terry_matches_trl_reward_trainer_formula():
    """TRL RewardTrainer.compute_loss: -logsigmoid(r_c - r_r - margin).mean() (trl 1.16 reward_trainer.py)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    rc, rr, m = (rng.normal(0, 3, 32).astype(np.float32) for _ in range(3))
    ref = float(-F.logsigmoid(torch.tensor(rc) - torch.tensor(rr) - torch.tensor(m)).mean())
    np.testing.assert_allclose(float(L.bradley_terry_loss(rc, rr, margin=m).mean()), ref, rtol=1e-6)
    smoothed = L.bradley_terry_loss(jnp.array([2.0]), jnp.array([1.0]), label_smoothing=0.1)
    expected = -0.9 * math.log(_sigmoid(1.0)) - 0.1 * math.log(_sigmoid(-1.0))
    np.testing.assert_allclose(float(smoothed[0]), expected, rtol=1e-6)


def test_weighted_mean_and_accumulation():
    v = jnp.array([1.0, 2.0, 3.0, 4.0])
    w = jnp.array([1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(float(L.weighted_mean(v, w)), (1 + 3 + 8) / 4)
    s1, w1 = L.weighted_sum_and_weight(v[:2], w[:2])
    s2, w2 = L.weighted_sum_and_weight(v[2:], w[2:])
    np.testing.assert_allclose(float((s1 + s2) / (w1 + w2)), float(L.weighted_mean(v, w)))
    assert float(L.weighted_mean(v, jnp.zeros(4))) == 0.0


# ----------------------------------------------------------------------------------------------------
# Transformations: jit, vmap, sharded jit


def _all_loss_fns():
    fns = {t: (lambda t: lambda a, b, c, d: L.dpo_loss(a, b, c, d, chosen_lengths=jnp.full_like(a, 5.0),
                                                       rejected_lengths=jnp.full_like(a, 6.0),
                                                       **_kwargs_for(t))[0])(t)
           for t in L.DPO_LOSS_TYPES}
    fns["ropo"] = lambda a, b, c, d: L.ropo_loss(a, b, c, d)[0]
    fns["bradley_terry"] = lambda a, b, c, d: L.bradley_terry_loss(a - c, b - d, margin=0.1)
    return fns


@pytest.mark.parametrize("name", list(_all_loss_fns()))
def test_jit_vmap_and_sharded(name):
    fn = _all_loss_fns()[name]
    pc, pr, rc, rr, _, _ = _random_logps(seed=4, b=16)
    args = [jnp.asarray(x) for x in (pc, pr, rc, rr)]
    eager = np.asarray(fn(*args))
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(*args)), eager, rtol=1e-5, atol=1e-6)
    if not name.startswith("aot"):  # AOT couples the batch by sorting; vmapping over pairs changes its meaning
        batched = jax.vmap(fn)(*[x.reshape(4, 4) for x in args])
        np.testing.assert_allclose(np.asarray(batched).reshape(-1), eager, rtol=1e-5, atol=1e-6)

    devices = np.array(jax.devices())
    assert devices.size == 8, "conftest forces 8 host devices"
    mesh = jax.sharding.Mesh(devices, ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    sharded_args = [jax.device_put(x, sharding) for x in args]
    out = jax.jit(fn, in_shardings=(sharding,) * 4, out_shardings=sharding)(*sharded_args)
    assert out.sharding == sharding
    np.testing.assert_allclose(np.asarray(out), eager, rtol=1e-5, atol=1e-6)
