"""The policy_loss group (clipped | gspo | cispo): values and gradients by hand, the registry, the
clip ranges each reads, and a GRPO step on the tiny model under each."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from secreason.algos import LOSS_AGG, POLICY_LOSSES, StepNorm, UnknownNameError, clipped_surrogate
from secreason.errors import ConfigError
from secreason.modules.grpo_settings import policy_loss_fn
from test_grpo import rl_file  # noqa: F401 (the prompts file fixture)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def close(a, b, tol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=0)


def test_registry_names_and_unknown_name():
    assert POLICY_LOSSES.names() == ["cispo", "clipped", "gspo"]
    with pytest.raises(UnknownNameError, match=r"^policy_loss='nope' unknown; choose one of: cispo, clipped, gspo$"):
        POLICY_LOSSES.get("nope")


def test_clipped_entry_is_the_token_surrogate():
    logp, old = t([[-1.0, -2.0, -0.5]]), t([[-1.2, -1.5, -0.5]])
    adv, mask = t([1.5]), t([[1, 1, 0]])
    a, sa = POLICY_LOSSES.get("clipped")(logp, old, adv, mask, 0.2, 0.28)
    b, sb = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    close(a, b)
    assert torch.equal(sa["clipped"], sb["clipped"])


# ---------------------------------------------------------------------------------------------- gspo

def gspo_case():
    # row 0: log-ratios 0.3, -0.1, 0.1 (3 tokens) → mean 0.1 → s = e^0.1 = 1.1051709, A = +2
    # row 1: 0.6, 0.4 (+ a padding position holding garbage) → mean 0.5 → s = e^0.5 = 1.6487213, A = -1
    # row 2: the same tokens as row 1, A = +1
    old = t([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0], [-2.0, -2.0, -2.0]])
    logp = (old + t([[0.3, -0.1, 0.1], [0.6, 0.4, 9.0], [0.6, 0.4, 9.0]])).requires_grad_(True)
    mask = t([[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    return logp, old, t([2.0, -1.0, 1.0]), mask


def test_gspo_by_hand():
    logp, old, adv, mask = gspo_case()
    loss, st = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    s0, s1 = math.exp(0.1), math.exp(0.5)
    # row 0: inside [0.8, 1.2] → -s0·2 = -2.2103418 on every token
    # row 1: A < 0, s above 1.2: min(-s1, -1.2) = -s1 → loss +s1 (not clipped: lowering a high ratio is allowed)
    # row 2: A > 0, s above 1.2: min(s1, 1.2) = 1.2 → loss -1.2, clipped, no gradient
    close(loss[0], [-2 * s0] * 3)
    close(loss[1, :2], [s1, s1])
    close(loss[2, :2], [-1.2, -1.2])
    close(st["ratio"][:, 0], [s0, s1, s1])
    assert st["clipped"][:, 0].tolist() == [False, False, True]
    assert st["clipped_high"][:, 0].tolist() == [False, False, True]
    # The paper's objective: mean over sequences of L_i (= loss_agg sample_mean of the broadcast L_i).
    total = LOSS_AGG.get("sample_mean")(loss, mask, StepNorm.from_masks([mask], max_len=3))
    close(total, (-2 * s0 + s1 - 1.2) / 3)
    total.backward()
    # dL_i/dlogp_it = -s_i·A_i/|y_i|, /3 for the sample mean over rows; 0 on padding and on the clipped row
    close(logp.grad, t([[-s0 * 2 / 3 / 3] * 3, [s1 / 2 / 3, s1 / 2 / 3, 0.0], [0.0, 0.0, 0.0]]))


def test_gspo_default_range_is_the_papers():
    """Defaults 3e-4 / 4e-4: a sequence log-ratio of 1e-3 is already clipped for A > 0."""
    old = t([[-1.0, -1.0]])
    logp = old + 1e-3
    loss, st = POLICY_LOSSES.get("gspo")(logp, old, t([1.0]), t([[1, 1]]))
    close(loss[0], [-(1 + 4e-4)] * 2)
    assert st["clipped"].all()
    loss_low, st_low = POLICY_LOSSES.get("gspo")(old - 1e-3, old, t([-1.0]), t([[1, 1]]))
    close(loss_low[0], [1 - 3e-4] * 2)
    assert st_low["clipped_low"].all()


def test_gspo_is_weights_scale_each_token():
    logp, old, adv, mask = gspo_case()
    w = t([[0.5, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    plain, _ = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, 0.2, 0.2)
    weighted, _ = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, 0.2, 0.2, is_weights=w)
    close(weighted, plain * w)


# --------------------------------------------------------------------------------------------- cispo

def test_cispo_by_hand():
    # ratios: row 0 = [0.5/0.25, 0.2/0.4] = [2, 0.5]; row 1 = [0.5, 1]
    logp = torch.log(t([[0.5, 0.2], [0.25, 0.3]])).requires_grad_(True)
    old = torch.log(t([[0.25, 0.4], [0.5, 0.3]]))
    adv, mask = t([2.0, -1.0]), t([[1, 1], [1, 1]])
    loss, st = POLICY_LOSSES.get("cispo")(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.5)
    # weights clip(r, 0.8, 1.5): row 0 [1.5, 0.8], row 1 [0.8, 1.0]; loss = -w·A·logp
    w = t([[1.5, 0.8], [0.8, 1.0]])
    close(loss, -w * t([[2.0], [-1.0]]) * torch.log(t([[0.5, 0.2], [0.25, 0.3]])))
    close(loss[0, 0], -1.5 * 2 * math.log(0.5))  # = 2.0794415
    assert st["clipped"].tolist() == [[True, True], [True, False]]  # every weight beyond a bound
    close(st["ratio"], [[2.0, 0.5], [0.5, 1.0]])
    loss.sum().backward()
    # the gradient is -sg(w)·A: every token keeps one, clipped or not (PPO's clip would zero [0, 0])
    close(logp.grad, -w * t([[2.0], [-1.0]]))


def test_cispo_default_has_no_lower_bound():
    logp, old = torch.log(t([[0.01]])).requires_grad_(True), torch.log(t([[0.5]]))  # ratio 0.02
    loss, st = POLICY_LOSSES.get("cispo")(logp, old, t([1.0]), t([[1]]))
    loss.sum().backward()
    close(logp.grad, [[-0.02]])  # weight 0.02, unclipped: the paper sets no lower bound
    assert not st["clipped"].any()
    big = torch.log(t([[0.9]])).requires_grad_(True)  # ratio 90 → capped at 1 + 5
    loss, st = POLICY_LOSSES.get("cispo")(big, torch.log(t([[0.01]])), t([1.0]), t([[1]]))
    loss.sum().backward()
    close(big.grad, [[-6.0]])
    assert st["clipped_high"].all()


# ------------------------------------------------------------------------------- the group's settings

def test_clip_ranges_come_from_the_group_or_the_algorithm():
    logp, old, adv, mask = gspo_case()
    fn = policy_loss_fn({"name": "clipped"}, 0.1, 0.3)
    assert fn.keywords == {"clip_eps_low": 0.1, "clip_eps_high": 0.3}  # algorithm.clip_eps_low/high
    fn = policy_loss_fn({"name": "gspo", "clip_eps_low": 3e-4, "clip_eps_high": 4e-4}, 0.2, 0.2)
    assert fn.keywords == {"clip_eps_low": 3e-4, "clip_eps_high": 4e-4}
    fn = policy_loss_fn({"name": "cispo", "clip_eps_low": None, "clip_eps_high": 5.0}, 0.2, 0.2)
    assert fn.keywords == {"clip_eps_low": None, "clip_eps_high": 5.0}
    assert policy_loss_fn(None, 0.2, 0.2).func is POLICY_LOSSES.get("clipped")


@pytest.mark.parametrize("cfg,message", [
    ({"name": "gspo", "clip_eps_low": 1.5}, r"^policy_loss.clip_eps_low=1.5: must be in \[0, 1\)$"),
    ({"name": "gspo", "clip_eps_low": None}, r"^policy_loss.clip_eps_low=None: must be a number$"),
    ({"name": "cispo", "clip_eps_high": -1.0}, r"^policy_loss.clip_eps_high=-1.0: must be ≥ 0$"),
    ({"name": "cispo", "clip_eps_high": "x"}, r"^policy_loss.clip_eps_high='x': must be a number or null$"),
    ({"name": "ppo"}, r"^policy_loss='ppo' unknown"),
])
def test_bad_group_values_name_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        policy_loss_fn(cfg, 0.2, 0.2)


def test_the_config_group_composes_each(compose_train):
    for name, low, high in (("clipped", None, None), ("gspo", 3e-4, 4e-4), ("cispo", None, 5.0)):
        cfg = compose_train("+experiment=grpo", f"policy_loss={name}")
        group = cfg.algorithm.module.policy_loss
        assert group.name == name and group.get("clip_eps_low") == low and group.get("clip_eps_high") == high


# ------------------------------------------------- the multirun of tests/test_grpo_cli.py, as a job list

SWEEP = {"policy_loss": ["clipped", "gspo", "cispo"], "loss_agg": ["sample_mean", "token_mean", "seq_sum", "seq_sum_norm"],
         "format_penalty": ["none", "require_think", "think_quality"], "advantage": ["group_norm", "group_mean", "rloo"]}


def test_the_sweep_over_policy_loss_is_108_jobs(compose_train):
    """`python train.py -m +experiment=grpo policy_loss=clipped,gspo,cispo loss_agg=… format_penalty=…
    advantage=…` (README; run for real over policy_loss × loss_agg × advantage in tests/test_grpo_cli.py):
    Hydra's basic sweeper makes 3 × 36 jobs, one per combination, and a job of each policy loss
    composes into module settings that pass GRPOModule's checks with that loss and its clip range."""
    import itertools

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from secreason.modules.grpo import GRPOModule

    args = [f"{k}={','.join(v)}" for k, v in SWEEP.items()]
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    assert len(jobs) == 108
    chosen = [dict(o.split("=", 1) for o in job) for job in jobs]
    assert {tuple(c[k] for k in SWEEP) for c in chosen} == set(itertools.product(*SWEEP.values()))
    for job, c in zip(jobs, chosen):
        if c["loss_agg"] != "token_mean" or c["format_penalty"] != "none" or c["advantage"] != "rloo":
            continue  # one job per policy loss is composed (a compose takes ~0.5 s)
        module = compose_train("+experiment=grpo", *job).algorithm.module
        settings = {k: v for k, v in OmegaConf.to_container(module, resolve=True).items() if not k.startswith("_")}
        checked = GRPOModule.check_settings(**settings)
        assert checked["policy_loss"].func is POLICY_LOSSES.get(c["policy_loss"])
        assert checked["loss_agg"] is LOSS_AGG.get("token_mean")
        own = {"clipped": (0.2, 0.2), "gspo": (3e-4, 4e-4), "cispo": (None, 5.0)}[c["policy_loss"]]
        assert (checked["policy_loss"].keywords["clip_eps_low"], checked["policy_loss"].keywords["clip_eps_high"]) == own


@pytest.mark.parametrize("name", ["gspo", "cispo"])
def test_a_grpo_step_under_each_loss_moves_the_policy(tiny_model, tokenizer, rl_file, name, one_torch_thread):  # noqa: F811
    """One step on the tiny model through GRPOModule: the group's loss is the one called, with its
    clip range, and its gradient moves the policy; the logged loss is finite."""
    from test_grpo import HFSampler, MAX_TOKENS, FakeRewards, Recorder, datamodule, make_module, max_change
    from test_grpo import trainer, weights

    group = {"gspo": {"name": "gspo", "clip_eps_low": 3e-4, "clip_eps_high": 4e-4},
             "cispo": {"name": "cispo", "clip_eps_low": None, "clip_eps_high": 5.0}}[name]
    module = make_module(tiny_model, tokenizer, FakeRewards(), policy_loss=group, kl={"beta": 0.0})
    calls = []
    real = module.policy_loss

    def spy(*args, **kwargs):
        calls.append(real.func.__name__)
        return real(*args, **kwargs)

    module.policy_loss = spy
    before, rec = weights(tiny_model), Recorder()
    trainer(callbacks=[HFSampler(max_tokens=MAX_TOKENS, seed=0), rec], max_steps=1).fit(
        module, datamodule=datamodule(tokenizer, rl_file))
    assert calls and set(calls) == {name}
    assert real.keywords == {k: v for k, v in group.items() if k != "name"}
    assert max_change(before, tiny_model) > 0
    assert math.isfinite(rec.steps[0]["metrics"]["train/loss"])
