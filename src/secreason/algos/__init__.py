"""The GRPO math as small pure tensor functions, picked by name from registries.

    ADVANTAGES     group_norm | group_mean | rloo          fn(rewards [N], group_index [N], eps) -> [N]
    KL_ESTIMATORS  k1 | k2 | k3                            fn(logp [N,T], ref_logp [N,T]) -> [N,T]
    LOSS_AGG       sample_mean | token_mean | seq_sum | seq_sum_norm
                                                           fn(per_token [n,T], mask [n,T], StepNorm) -> scalar
    OVERLONG_MODES none | mask | soft_penalty               fn(rewards [N], mask [N,T], truncated [N], …) -> (rewards, mask)
    POLICY_LOSSES  clipped | gspo | cispo                  fn(logp, old_logp [N,T], A [N], mask [N,T], low, high, w) -> ([N,T], stats)
    clipped_surrogate, truncated_is_weights                the token clipped surrogate and TIS weights

Each registry knows the config key that picks from it, so an unknown name fails as
`algorithm.kl.estimator='k9' unknown; choose one of: k1, k2, k3` (a secreason.errors.ConfigError).
"""
from .advantages import ADVANTAGES, zero_std_groups
from .kl import KL_ESTIMATORS
from .loss_agg import LOSS_AGG, StepNorm, masked_mean
from .overlong import OVERLONG_MODES, overlong_adjust
from .policy_loss import POLICY_LOSSES, clipped_surrogate, truncated_is_weights
from .registry import Registry, UnknownNameError

__all__ = [
    "ADVANTAGES", "KL_ESTIMATORS", "LOSS_AGG", "OVERLONG_MODES", "POLICY_LOSSES", "Registry", "StepNorm", "UnknownNameError",
    "clipped_surrogate", "masked_mean", "overlong_adjust", "truncated_is_weights", "zero_std_groups",
]
