"""The GRPO math (secreason.algos) against hand-computed numbers; the hand arithmetic is in comments."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from secreason.algos import (
    ADVANTAGES, KL_ESTIMATORS, LOSS_AGG, OVERLONG_MODES, Registry, StepNorm, UnknownNameError, clipped_surrogate,
    masked_mean, overlong_adjust, truncated_is_weights, zero_std_groups,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
NAN = float("nan")


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def idx(x):
    return torch.tensor(x, dtype=torch.long)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, t(b, a.dtype) if not isinstance(b, torch.Tensor) else b,
                               atol=atol, rtol=0)


# ---------------------------------------------------------------- registry

def test_registry_unknown_name_is_one_config_error_line_naming_the_key():
    """Every registry a config picks from: an unknown name fails as `key='nope' unknown; choose one
    of: …` (the wording of an unknown group option), a ConfigError that is also a KeyError."""
    from secreason.errors import ConfigError
    from secreason.eval.harmbench import GUARDS, JUDGES
    from secreason.optim import OPTIMIZERS, SCHEDULES

    for reg, key, valid in [(ADVANTAGES, "advantage", ["group_mean", "group_norm", "rloo"]),
                            (KL_ESTIMATORS, "algorithm.kl.estimator", ["k1", "k2", "k3"]),
                            (LOSS_AGG, "loss_agg", ["sample_mean", "seq_sum", "seq_sum_norm", "token_mean"]),
                            (OVERLONG_MODES, "algorithm.overlong.mode", ["mask", "none", "soft_penalty"]),
                            (OPTIMIZERS, "algorithm.optim.name", ["adamw", "adamw8bit", "sgd"]),
                            (SCHEDULES, "algorithm.scheduler.name", ["constant", "cosine"]),
                            (JUDGES, "judge", ["harmbench", "llama_guard3", "refusal"]),
                            (GUARDS, "guard", ["llama_guard3", "none"])]:
        assert reg.names() == valid
        with pytest.raises(UnknownNameError) as e:
            reg.get("nope")
        assert str(e.value) == f"{key}='nope' unknown; choose one of: {', '.join(valid)}"
        assert isinstance(e.value, ConfigError) and isinstance(e.value, KeyError) and isinstance(e.value, ValueError)


def test_registry_register_get_and_duplicates():
    reg: Registry = Registry("thing", key="things.name")
    f = reg.register("a")(lambda: 1)
    assert reg.get("a") is f and "a" in reg and reg.names() == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(ValueError, match=r"^things\.name=\['unhashable'\] unknown; choose one of: a$"):
        reg.get(["unhashable"])


def test_overlong_modes_by_name_match_their_functions():
    """overlong_adjust is the registry lookup: each name runs its own function (the arithmetic is
    checked by hand in tests/test_grpo.py::test_overlong_adjust_by_hand)."""
    rewards, mask = t([1.0, 1.0]), t([[1, 1, 1, 1], [1, 1, 0, 0]])
    truncated = torch.tensor([True, False])
    for mode in OVERLONG_MODES.names():
        got = overlong_adjust(rewards, mask, truncated, mode, max_len=4, buffer=2, penalty=1.0)
        want = OVERLONG_MODES.get(mode)(rewards, mask, truncated, 4, 2, 1.0)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), mode
    assert overlong_adjust(rewards, mask, truncated, "mask", 4)[1].tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]
    assert overlong_adjust(rewards, mask, truncated, "soft_penalty", 4, 2)[0].tolist() == [0.0, 1.0]


def test_hydra_configs_name_every_registered_option():
    for group, reg in [("loss_agg", LOSS_AGG), ("advantage", ADVANTAGES)]:
        files = sorted((CONF / group).glob("*.yaml"))
        assert sorted(f.stem for f in files) == reg.names()
        for f in files:
            cfg = OmegaConf.load(f)
            assert cfg.name == f.stem and reg.get(cfg.name) is not None
            if group == "advantage":
                assert cfg.eps == 1e-6


# ---------------------------------------------------------------- advantages

def test_group_norm_by_hand_two_groups():
    # group 0: [1,0,0,1] mean 0.5, Σdev² = 4·0.25 = 1, unbiased var 1/3, std 0.577350
    #          → ±0.5/0.577350 = ±0.866025 (= √3/2)
    # group 1: [1,1,1,1] std 0 → 0
    adv = ADVANTAGES.get("group_norm")(t([1, 0, 0, 1, 1, 1, 1, 1]), idx([0, 0, 0, 0, 1, 1, 1, 1]))
    s = math.sqrt(3) / 2
    close(adv, [s, -s, -s, s, 0, 0, 0, 0])


def test_group_norm_ragged_unordered_groups():
    # ids 7 and 2, interleaved, sizes 2 and 3.
    # group 7: {1, 0}: mean 0.5, var (0.25+0.25)/1 = 0.5, std 0.707107 → ±0.707107
    # group 2: {3, 2, 5}: mean 10/3, devs -1/3, -4/3, 5/3, Σdev² = 42/9, var 7/3, std 1.527525
    #          → -0.218218, -0.872872, 1.091089
    adv = ADVANTAGES.get("group_norm")(t([1, 3, 0, 2, 5]), idx([7, 2, 7, 2, 2]))
    close(adv, [0.707107, -0.218218, -0.707107, -0.872872, 1.091089])


def test_group_norm_matches_torch_std_reference():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(24, generator=g)
    gi = torch.randperm(24, generator=g) % 5
    ref = torch.empty(24)
    for k in gi.unique():
        sel = gi == k
        ref[sel] = (r[sel] - r[sel].mean()) / r[sel].std()  # torch.std: unbiased
    close(ADVANTAGES.get("group_norm")(r, gi), ref)


def test_group_mean_by_hand():
    # [1,0,0,1] - 0.5 = ±0.5; [1,1,1,1] → 0
    close(ADVANTAGES.get("group_mean")(t([1, 0, 0, 1, 1, 1, 1, 1]), idx([0, 0, 0, 0, 1, 1, 1, 1])),
          [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    # group 7: 1-0.5, 0-0.5; group 2: 3-10/3, 2-10/3, 5-10/3
    close(ADVANTAGES.get("group_mean")(t([1, 3, 0, 2, 5]), idx([7, 2, 7, 2, 2])),
          [0.5, -1 / 3, -0.5, -4 / 3, 5 / 3])


def test_rloo_by_hand():
    # [1,0,0,1]: 1 - (0+0+1)/3 = 2/3, 0 - (1+0+1)/3 = -2/3; [1,1,1,1] → 0
    close(ADVANTAGES.get("rloo")(t([1, 0, 0, 1, 1, 1, 1, 1]), idx([0, 0, 0, 0, 1, 1, 1, 1])),
          [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    # group 7: 1-0 = 1, 0-1 = -1; group 2: 3-(2+5)/2 = -0.5, 2-(3+5)/2 = -2, 5-(3+2)/2 = 2.5
    close(ADVANTAGES.get("rloo")(t([1, 3, 0, 2, 5]), idx([7, 2, 7, 2, 2])),
          [1, -0.5, -1, -2, 2.5])


def test_singleton_group_gets_zero():
    # group 0 = {3}: one member → 0 for every estimator. group 1 = {1, 0}:
    #   group_norm ±0.5/0.707107 = ±0.707107; group_mean ±0.5; rloo 1-0 = 1, 0-1 = -1
    expect = {"group_norm": [0, 0.707107, -0.707107], "group_mean": [0, 0.5, -0.5], "rloo": [0, 1, -1]}
    for name, v in expect.items():
        close(ADVANTAGES.get(name)(t([3.0, 1, 0]), idx([0, 1, 1])), v)


@pytest.mark.parametrize("name", ["group_norm", "group_mean", "rloo"])
def test_zero_and_near_zero_variance_groups_give_exact_zero(name):
    fn = ADVANTAGES.get(name)
    cases = [
        t([0.1, 0.1, 0.1, 0.1]),                               # float32 0.1: mean rounds
        torch.tensor([0.1, 0.1 + 1e-9, 0.1, 0.1 - 1e-9], dtype=torch.float64),
        t([0.7, 0.7, 0.7 + 1e-7, 0.7]),                          # 1-ulp-ish spread in float32
        t([-3.0, -3.0, -3.0]),
    ]
    for r in cases:
        adv = fn(r, torch.zeros(len(r), dtype=torch.long))
        assert adv.dtype == r.dtype
        assert torch.equal(adv, torch.zeros_like(r)), (name, r, adv)


def test_just_above_the_floor_advantages_are_bounded_z_scores():
    # [0,0,0,1e-5]: mean 2.5e-6, Σdev² = 3·6.25e-12 + 56.25e-12 = 75e-12, var 25e-12, std 5e-6 > eps
    # → (-2.5e-6/5e-6, ..., 7.5e-6/5e-6) = (-0.5, -0.5, -0.5, 1.5)
    r = torch.tensor([0, 0, 0, 1e-5], dtype=torch.float64)
    close(ADVANTAGES.get("group_norm")(r, idx([0, 0, 0, 0])), [-0.5, -0.5, -0.5, 1.5])


def test_nan_reward_is_missing():
    # group 0: [1, NaN, 0, 2] → valid {1,0,2}: mean 1, var (0+1+1)/2 = 1, std 1
    #   group_norm [0, 0, -1, 1]; group_mean the same; rloo 1-(0+2)/2 = 0, 0-(1+2)/2 = -1.5, 2-0.5 = 1.5
    # group 1: [NaN, 4]: one valid reward → 0.  group 2: [NaN, NaN] → 0.
    r = t([1, NAN, 0, 2, NAN, 4, NAN, NAN])
    gi = idx([0, 0, 0, 0, 1, 1, 2, 2])
    expect = {"group_norm": [0, 0, -1, 1], "group_mean": [0, 0, -1, 1], "rloo": [0, 0, -1.5, 1.5]}
    for name, head in expect.items():
        adv = ADVANTAGES.get(name)(r, gi)
        assert not torch.isnan(adv).any()
        close(adv, head + [0, 0, 0, 0])
    assert zero_std_groups(r, gi).tolist() == [False] * 4 + [True] * 4


def test_zero_std_groups_and_all_estimators_agree():
    r = t([1, 1, 0, 1, 2, 2, 3, 0.5, 0.5 + 1e-9])
    gi = idx([0, 0, 0, 0, 1, 1, 2, 3, 3])
    z = zero_std_groups(r, gi)
    assert z.dtype == torch.bool
    assert z.tolist() == [False] * 4 + [True] * 5
    g = torch.Generator().manual_seed(1)
    rr = torch.randint(0, 3, (40,), generator=g).float()
    rr[torch.rand(40, generator=g) < 0.1] = NAN
    gg = torch.randint(0, 12, (40,), generator=g)
    zz = zero_std_groups(rr, gg)
    for name in ADVANTAGES.names():
        adv = ADVANTAGES.get(name)(rr, gg)
        assert torch.isfinite(adv).all()
        assert (adv[zz] == 0).all() and (adv[torch.isnan(rr)] == 0).all()


def test_advantages_bad_inputs_and_empty():
    for name in ADVANTAGES.names():
        fn = ADVANTAGES.get(name)
        assert fn(t([]), idx([])).shape == (0,)
        with pytest.raises(ValueError):
            fn(t([[1.0, 2.0]]), idx([[0, 0]]))
        with pytest.raises(ValueError):
            fn(idx([1, 0]), idx([0, 0]))


# ---------------------------------------------------------------- KL

def test_kl_estimators_by_hand():
    l5, l25 = math.log(0.5), math.log(0.25)
    logp = t([[l5, l25, -1.0]])
    ref = t([[l25, l5, -1.0]])
    # token 0: logp-ref = ln 2 = 0.693147; d = ref-logp = -ln 2
    #   k1 = 0.693147, k2 = 0.5·0.480453 = 0.240227, k3 = 0.5 + 0.693147 - 1 = 0.193147
    # token 1: logp-ref = -ln 2; d = ln 2
    #   k1 = -0.693147, k2 = 0.240227, k3 = 2 - 0.693147 - 1 = 0.306853
    # token 2: equal → 0 for all
    close(KL_ESTIMATORS.get("k1")(logp, ref), [[0.693147, -0.693147, 0]])
    close(KL_ESTIMATORS.get("k2")(logp, ref), [[0.240227, 0.240227, 0]])
    close(KL_ESTIMATORS.get("k3")(logp, ref), [[0.193147, 0.306853, 0]])


def test_k3_gradient_and_clamp():
    # dk3/dlogp = -(exp(d) - 1) = 1 - π_ref/π; at π=0.5, π_ref=0.25: 1 - 0.5 = 0.5
    logp = t([[math.log(0.5)]]).requires_grad_()
    KL_ESTIMATORS.get("k3")(logp, t([[math.log(0.25)]])).sum().backward()
    close(logp.grad, [[0.5]])
    # d = 0 - (-100) = 100 → clamped to 20: exp(20) - 20 - 1 = 485165174.4 (finite)
    v = KL_ESTIMATORS.get("k3")(t([[-100.0]], torch.float16), t([[0.0]], torch.float16))
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    close(v, [[math.exp(20) - 21]], atol=64)
    with pytest.raises(ValueError):
        KL_ESTIMATORS.get("k1")(t([[0.0]]), t([[0.0, 0.0]]))


# ---------------------------------------------------------------- clipped surrogate

def _ratios(rs):
    """old_logp = 0, logp = log r, so ratio = r exactly (up to float32)."""
    logp = torch.log(t(rs)).requires_grad_()
    return logp, torch.zeros_like(logp)


def test_clipped_surrogate_by_hand():
    # ratios 1.1 (inside [0.8, 1.2]), 1.5 (above), 0.5 (below); row 0 A = +2, row 1 A = -2
    # A=+2: 1.1 → -min(2.2, 2.2) = -2.2; 1.5 → -min(3.0, 1.2·2) = -2.4 (clipped_high);
    #       0.5 → -min(1.0, 0.8·2) = -1.0 (not clipped: pushing a too-low ratio up is allowed)
    # A=-2: 1.1 → 2.2; 1.5 → -min(-3.0, -2.4) = 3.0 (not clipped); 0.5 → -min(-1.0, -1.6) = 1.6 (clipped_low)
    logp, old = _ratios([[1.1, 1.5, 0.5], [1.1, 1.5, 0.5]])
    loss, st = clipped_surrogate(logp, old, t([2.0, -2.0]))
    close(loss, [[-2.2, -2.4, -1.0], [2.2, 3.0, 1.6]])
    assert st["clipped_high"].tolist() == [[False, True, False], [False, False, False]]
    assert st["clipped_low"].tolist() == [[False, False, False], [False, False, True]]
    assert st["clipped"].tolist() == [[False, True, False], [False, False, True]]
    close(st["ratio"], [[1.1, 1.5, 0.5], [1.1, 1.5, 0.5]])
    # d loss / d logp = -A·ratio on the unclipped branch, 0 where clipped
    loss.sum().backward()
    close(logp.grad, [[-2.2, 0.0, -1.0], [2.2, 3.0, 0.0]])
    # clip_frac with a mask that hides the last token of row 1: 1 clipped of 5 → 0.2
    close(masked_mean(st["clipped"], t([[1, 1, 1], [1, 1, 0]])), 0.2)


def test_clip_higher_is_asymmetric():
    # low 0.2, high 0.28 → range [0.8, 1.28]
    # A=+2, ratio 1.25: inside → -2.5 (symmetric 0.2 would clip: -2.4)
    # A=-2, ratio 0.75: below 0.8 → -min(-1.5, -1.6) = 1.6, clipped_low either way
    logp, old = _ratios([[1.25], [0.75]])
    adv = t([2.0, -2.0])
    loss, st = clipped_surrogate(logp, old, adv, clip_eps_low=0.2, clip_eps_high=0.28)
    close(loss, [[-2.5], [1.6]])
    assert st["clipped"].tolist() == [[False], [True]]
    loss_sym, st_sym = clipped_surrogate(logp, old, adv)
    close(loss_sym, [[-2.4], [1.6]])
    assert st_sym["clipped"].tolist() == [[True], [True]]


def test_clipped_surrogate_is_weights_detached_and_bad_shapes():
    # A=2, ratio 1.1, w 0.5 → -2.2·0.5 = -1.1; d/dlogp = -2.2·0.5 = -1.1; w gets no grad
    logp, old = _ratios([[1.1]])
    w = t([[0.5]]).requires_grad_()
    loss, _ = clipped_surrogate(logp, old, t([2.0]), is_weights=w)
    close(loss, [[-1.1]])
    loss.sum().backward()
    close(logp.grad, [[-1.1]])
    assert w.grad is None
    # huge mismatch on a padding position stays finite
    loss, _ = clipped_surrogate(t([[0.0, 500.0]]), t([[0.0, 0.0]]), t([-1.0]))
    assert torch.isfinite(loss).all()
    with pytest.raises(ValueError):
        clipped_surrogate(t([[0.0]]), t([[0.0]]), t([[1.0]]))
    with pytest.raises(ValueError):
        clipped_surrogate(t([[0.0]]), t([[0.0]]), t([1.0]), is_weights=t([1.0]))
    with pytest.raises(ValueError):
        clipped_surrogate(t([[0.0]]), t([[0.0]]), t([1.0]), clip_eps_low=1.0)


def test_truncated_is_weights():
    # old - sampler = ln 3 → 3, capped at 2; ln 0.5 → 0.5; 0 → 1; 1000 → exp(20) → cap 2
    old = t([[math.log(3), math.log(0.5), 0.0, 1000.0]])
    smp = torch.zeros_like(old).requires_grad_()
    w = truncated_is_weights(old, smp, cap=2.0)
    close(w, [[2.0, 0.5, 1.0, 2.0]])
    assert not w.requires_grad
    close(truncated_is_weights(old, smp, cap=None), [[1.0, 1.0, 1.0, 1.0]])
    close(truncated_is_weights(old, smp, cap=10.0), [[3.0, 0.5, 1.0, 10.0]])
    with pytest.raises(ValueError):
        truncated_is_weights(old, smp, cap=0.0)


# ---------------------------------------------------------------- loss aggregation

PT = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]


def test_loss_agg_by_hand_2x3():
    # tokens kept: row 0 {1, 2}, row 1 {4}; num_samples 2, num_tokens 3, max_len 4
    # sample_mean  ((1+2)/2 + 4/1) / 2 = (1.5 + 4) / 2 = 2.75
    # token_mean   (1+2+4) / 3 = 2.333333
    # seq_sum      7 / 2 = 3.5
    # seq_sum_norm 7 / (2·4) = 0.875
    norm = StepNorm.from_masks([t(MASK)], max_len=4)
    assert norm == StepNorm(num_samples=2, num_tokens=3, max_len=4)
    expect = {"sample_mean": 2.75, "token_mean": 7 / 3, "seq_sum": 3.5, "seq_sum_norm": 0.875}
    for name, v in expect.items():
        close(LOSS_AGG.get(name)(t(PT), t(MASK), norm), v)
        close(LOSS_AGG.get(name)(t(PT), t(MASK).bool(), norm), v)


def test_loss_agg_zero_token_sample_and_nan_padding():
    # add row [9,9,9] with no tokens: num_samples 3, num_tokens 3
    # sample_mean (1.5 + 4 + 0)/3 = 1.833333; token_mean 7/3; seq_sum 7/3; seq_sum_norm 7/12
    # NaN/inf on padding must not leak into any sum
    pt = t([[1.0, 2.0, NAN], [4.0, float("inf"), NAN], [9.0, 9.0, 9.0]])
    m = t(MASK + [[0, 0, 0]])
    norm = StepNorm.from_masks([m], max_len=4)
    expect = {"sample_mean": 5.5 / 3, "token_mean": 7 / 3, "seq_sum": 7 / 3, "seq_sum_norm": 7 / 12}
    for name, v in expect.items():
        close(LOSS_AGG.get(name)(pt, m, norm), v)
    # an all-empty step gives 0, not NaN
    empty = torch.zeros(2, 3)
    for name in LOSS_AGG.names():
        assert LOSS_AGG.get(name)(t(PT), empty, StepNorm.from_masks([empty], 4)).item() == 0.0


def test_stepnorm_from_masks_combine_all_reduce_and_errors():
    a = StepNorm.from_masks([t([[1, 1, 0], [1, 0, 0]]), t([[1, 1, 1, 1]])], max_len=4)
    assert a == StepNorm(3, 7, 4)
    b = StepNorm.from_masks([t([[1, 0]])], max_len=4)
    assert StepNorm.combine([a, b]) == StepNorm(4, 8, 4)
    # a fake 2-rank all-reduce: this rank's counts + the other rank's
    other = torch.tensor([b.num_samples, b.num_tokens])
    assert a.all_reduce(lambda c: c + other) == StepNorm(4, 8, 4)
    assert StepNorm.from_masks([], max_len=4) == StepNorm(0, 0, 4)
    with pytest.raises(ValueError, match="max_len"):
        StepNorm.from_masks([t([[1, 1, 1, 1, 1]])], max_len=4)
    with pytest.raises(ValueError):
        StepNorm.combine([a, StepNorm(1, 1, 8)])
    with pytest.raises(ValueError):
        StepNorm(1, 1, 0)
    with pytest.raises(ValueError):
        LOSS_AGG.get("token_mean")(t(PT), t([[1, 1]]), a)


# ---- gradient accumulation: the normaliser is the step's, not the micro-batch's

LENGTHS = [1, 7, 3, 8, 2, 5, 6, 4]   # ragged completion lengths of 8 samples
D, MAX_LEN = 5, 8


def _setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, MAX_LEN, D, generator=g)
    mask = (torch.arange(MAX_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    old_logp = torch.nn.functional.logsigmoid(torch.randn(8, MAX_LEN, generator=g))
    ref_logp = torch.nn.functional.logsigmoid(torch.randn(8, MAX_LEN, generator=g))
    adv = ADVANTAGES.get("group_norm")(torch.randn(8, generator=g), torch.arange(8) // 4)
    w = torch.randn(D, generator=g) * 0.3
    return x, mask, old_logp, ref_logp, adv, w


def _per_token(w, x, old_logp, ref_logp, adv):
    """A tiny linear 'policy': logp = logsigmoid(x·w); the real GRPO per-token loss."""
    logp = torch.nn.functional.logsigmoid(x @ w)
    pg, _ = clipped_surrogate(logp, old_logp, adv, 0.2, 0.28)
    return pg + 0.05 * KL_ESTIMATORS.get("k3")(logp, ref_logp)


def _grad(name, rows_per_micro, norm_for=None, scale=1.0):
    """Σ of grads of fn over micro-batches; each micro-batch is trimmed to its own longest row.

    norm_for(masks, b) gives the StepNorm of micro-batch b (default: one StepNorm for the step).
    """
    x, mask, old, ref, adv, w0 = _setup()
    w = w0.clone().requires_grad_()
    fn = LOSS_AGG.get(name)
    micro, start = [], 0
    for n in rows_per_micro:
        rows = slice(start, start + n)
        tb = int(mask[rows].sum(-1).max())
        micro.append((x[rows, :tb], mask[rows, :tb], old[rows, :tb], ref[rows, :tb], adv[rows]))
        start += n
    masks = [m for _, m, *_ in micro]
    step = StepNorm.from_masks(masks, MAX_LEN)
    for b, (xb, mb, ob, rb, ab) in enumerate(micro):
        norm = step if norm_for is None else norm_for(masks, b)
        (scale * fn(_per_token(w, xb, ob, rb, ab), mb, norm)).backward()
    return w.grad


@pytest.mark.parametrize("name", ["sample_mean", "token_mean", "seq_sum", "seq_sum_norm"])
@pytest.mark.parametrize("split", [[2, 2, 2, 2], [3, 1, 2, 2], [1] * 8])
def test_grad_accumulation_equals_one_batch(name, split):
    full = _grad(name, [8])
    assert full.abs().sum() > 0
    torch.testing.assert_close(_grad(name, split), full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["sample_mean", "token_mean", "seq_sum", "seq_sum_norm"])
def test_two_ranks_of_four_equal_one_rank_of_eight(name):
    full = _grad(name, [8])
    x, mask, *_ = _setup()
    rank_masks = [mask[:4], mask[4:]]
    local = [StepNorm.from_masks([m[:2], m[2:]], MAX_LEN) for m in rank_masks]
    global_norm = StepNorm.combine(local)
    assert global_norm == StepNorm.from_masks([mask], MAX_LEN)
    # each rank: 2 micro-batches of 2 with the global normaliser; the two ranks' grads summed
    g0 = _grad_rows(name, range(0, 4), [2, 2], global_norm)
    g1 = _grad_rows(name, range(4, 8), [2, 2], global_norm)
    torch.testing.assert_close(g0 + g1, full, atol=1e-6, rtol=0)
    # the DDP form: average of world_size-scaled grads
    torch.testing.assert_close((2 * g0 + 2 * g1) / 2, full, atol=1e-6, rtol=0)
    if name == "token_mean":
        # rank-local token counts (19 vs 17 tokens), DDP-averaged: the bug the global norm avoids
        l0 = _grad_rows(name, range(0, 4), [2, 2], local[0])
        l1 = _grad_rows(name, range(4, 8), [2, 2], local[1])
        assert not torch.allclose((l0 + l1) / 2, full, atol=1e-4, rtol=0)


def _grad_rows(name, rows, split, norm):
    x, mask, old, ref, adv, w0 = _setup()
    rows = list(rows)
    x, mask, old, ref, adv = x[rows], mask[rows], old[rows], ref[rows], adv[rows]
    w = w0.clone().requires_grad_()
    start = 0
    for n in split:
        s = slice(start, start + n)
        LOSS_AGG.get(name)(_per_token(w, x[s], old[s], ref[s], adv[s]), mask[s], norm).backward()
        start += n
    return w.grad


def _naive(masks, b):
    """The shipped bug: each micro-batch normalised by its own counts (then averaged below)."""
    return StepNorm.from_masks([masks[b]], MAX_LEN)


@pytest.mark.parametrize("name,split", [("token_mean", [2, 2, 2, 2]), ("sample_mean", [3, 1, 2, 2]),
                                        ("token_mean", [3, 1, 2, 2]), ("seq_sum", [3, 1, 2, 2]),
                                        ("seq_sum_norm", [3, 1, 2, 2])])
def test_naive_per_micro_batch_normalisation_differs(name, split):
    full = _grad(name, [8])
    naive = _grad(name, split, norm_for=_naive, scale=1.0 / len(split))
    assert not torch.allclose(naive, full, atol=1e-4, rtol=0)
