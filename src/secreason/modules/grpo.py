"""GRPO with verifiable rewards: the report's RLVR stage, one readable module.

One training batch = B prompts. The sampler callback (callbacks/sampler.py) has already put
`batch["rollout"]`: B·n completions with the sampler's per-token logprobs. Then:

    rewards (reward set routed by task + format penalty)      → r [N]
    overlong handling (mask | soft_penalty)                    → r [N], mask [N, T]
    advantages (group_norm | group_mean | rloo)                → A [N]   (zero-std groups → 0)
    reference logprobs (frozen SFT model, or LoRA disabled)    → [N, T]  when β > 0
    μ optimizer steps, each over all micro-batches:
        per-token clipped surrogate (clip_eps_low/high, TIS weights) + β·KL_estimator
        → loss_agg share with normalisers of the whole step → backward
        → grad clip → optimizer step → lr schedule step

The report fixes: n = 5, binary verifier rewards, β = 0.02 to the SFT model, lr 1e-6 warmup +
cosine, 2 epochs, sample-level aggregation (Dr.GRPO also stable; token-mean collapsed), and a
format penalty inside the reward. Deviations and choices it does not state:
- KL estimator: configurable, default k3 (unstated in the report).
- Clip ε, batch size, completion length, temperature: unstated; config values.
- The format penalty is a separate reward component, logged apart (the report folds it in).
- `filter_zero_std_groups` drops groups whose correctness has zero variance from the loss
  (`filter_zero_std_on=total`: the shaped total; secreason.modules.zero_std_filter), so the batch
  shrinks; `dynamic_sampling.max_rounds` > 0 instead refills the batch with extra prompts before
  it gets here (secreason.refill, done by the sampler callback); both zero-std fractions are always logged.
- `policy_loss` (clipped | gspo | cispo, secreason.algos.policy_loss) is the per-token policy term.
- `async_rollouts=1`: the batch was generated one step ahead (callbacks/async_rollouts.py).
- Old logprobs: with μ = 1 the ratio is exactly 1 on the forward pass (old = current, detached),
  so no extra forward is spent; with μ > 1 they are recomputed once before the updates
  (`old_logprobs=recompute`) or taken from the sampler (`old_logprobs=sampler`).
- Shared prompts (`share_prompts`, on by default): within a micro-batch each distinct prompt runs
  through the model once and its KV cache serves its completions. Micro-batches are then cut by
  whole prompt groups or by completion length, whichever runs fewer token positions
  (`micro_batch_rows`); a group split across micro-batches runs its prompt once per part.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping

import lightning as L
import torch

from secreason.algos import StepNorm, overlong_adjust, truncated_is_weights
from secreason.heldout import log_validation
from secreason.models import frozen_copy
from secreason.modules.logprobs import completion_logprobs
from secreason.modules.grpo_settings import check_settings
from secreason.modules.rank_metrics import TOKEN_STATS, combine_ranks, rank_entries
from secreason.modules.rollout_stats import rollout_metrics
from secreason.modules.rollout_table import ScoredBatch
from secreason.modules.zero_std_filter import zero_std_rows
from secreason.rewards.extraction import DEFAULT_THINK_TAGS
from secreason.refill import score_rollout
from secreason.rollout import Rollout

log = logging.getLogger(__name__)


def micro_batch_rows(lengths: torch.Tensor, size: int, group_index: torch.Tensor | None = None,
                     prompt_lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Rows [N] of completion `lengths` cut into micro-batches of `size`: the cheaper of two orders.

    By length (longest first): each micro-batch is trimmed to its longest row (`Rollout.select`),
    so little forward/backward goes to padding. By group (given `group_index` [N] and
    `prompt_lengths` [N], i.e. shared prompts): whole groups together, longest group first, so
    a prompt runs once per micro-batch. Cost = Σ over micro-batches of distinct prompts × prompt
    width + rows × completion width (token positions through the model); a tie keeps length order.
    """
    by_length = lengths.argsort(descending=True, stable=True)

    def cut(order: torch.Tensor) -> list[torch.Tensor]:
        return [order[i: i + size] for i in range(0, len(order), size)]

    if group_index is None or prompt_lengths is None or lengths.numel() == 0:
        return cut(by_length)
    group_max = torch.zeros(int(group_index.max()) + 1, dtype=lengths.dtype)
    group_max = group_max.scatter_reduce(0, group_index, lengths, "amax")
    by_group = by_length[group_index[by_length].argsort(stable=True)]  # rows longest first within a group
    by_group = by_group[group_max[group_index[by_group]].argsort(descending=True, stable=True)]

    def cost(micro: list[torch.Tensor]) -> int:
        return sum(group_index[m].unique().numel() * int(prompt_lengths[m].max()) + m.numel() * int(lengths[m].max())
                   for m in micro)

    length_cut, group_cut = cut(by_length), cut(by_group)
    return group_cut if cost(group_cut) < cost(length_cut) else length_cut


def padded_micro_batches(rows: torch.Tensor, micro: list[torch.Tensor], count: int
                         ) -> tuple[torch.Tensor, list[torch.Tensor], int | None]:
    """Kept `rows` [K] and their micro-batches (indices into rows) extended to `count` micro-batches.

    A rank with fewer micro-batches than another (fewer kept groups) runs the missing ones on a
    padding row appended to `rows` (row 0 of the batch), whose loss mask and advantage the caller
    zeroes. Returns (rows [K or K+1], micro, index of the padding row in rows or None).
    """
    if len(micro) >= count:
        return rows, micro, None
    pad = rows.numel()
    rows = torch.cat([rows, torch.zeros(1, dtype=rows.dtype)])
    return rows, micro + [torch.tensor([pad])] * (count - len(micro)), pad


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Σ of `values` [n, T] where mask [n, T] != 0 (padding selected out, so a NaN there cannot leak)."""
    v = values if values.is_floating_point() else values.float()
    return torch.where(mask != 0, v, torch.zeros_like(v)).sum().item()


class GRPOModule(L.LightningModule):
    """Built by Hydra from `conf/algorithm/grpo.yaml` (`algorithm.module`), like SFTModule: each
    argument there is an interpolation of the config key that error messages name. Every value is
    checked by `check_settings`, the one validator, when the run starts."""

    STEPS_OPTIMIZER_BY_HAND = True  # μ updates and step-global normalisers per rollout batch

    @classmethod
    def check_settings(cls, **given: Any) -> dict[str, Any]:
        """Check the settings of `__init__` (defaults for those not given; others ignored) and resolve
        the names through their registries (`grpo_settings.check_settings`). `secreason.run` calls it
        before the model is loaded, so a bad value fails at once; `__init__` calls it too."""
        params = inspect.signature(cls.__init__).parameters
        s = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
        s.update({k: v for k, v in given.items() if k in s})
        return check_settings(s)

    def __init__(self, model: torch.nn.Module, tokenizer: Any, reward_set: Any,
                 ref_model: torch.nn.Module | None = None, num_generations: int = 5, updates_per_batch: int = 1,
                 micro_batch_size: int = 8, loss_agg: str = "sample_mean", advantage: Mapping[str, Any] | None = None,
                 kl: Mapping[str, Any] | None = None, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
                 is_cap: float | None = None, old_logprobs: str = "recompute",
                 overlong: Mapping[str, Any] | None = None, filter_zero_std_groups: bool = False,
                 filter_zero_std_on: str = "correctness",
                 max_completion_length: int = 64, temperature: float = 1.0, max_grad_norm: float | None = 1.0,
                 optim: Mapping[str, Any] | None = None, scheduler: Mapping[str, Any] | None = None,
                 think_tags: tuple[str, str] = DEFAULT_THINK_TAGS, share_prompts: bool = True,
                 padding_free: bool = False, policy_loss: Mapping[str, Any] | None = None,
                 dynamic_sampling: Mapping[str, Any] | None = None, async_rollouts: int = 0,
                 val: Mapping[str, Any] | None = None, selective_logprobs: bool = False) -> None:
        super().__init__()
        checked = self.check_settings(**{k: v for k, v in locals().items() if k != "self"})
        self.automatic_optimization = not self.STEPS_OPTIMIZER_BY_HAND
        self.beta, self.kl_fn = checked["beta"], checked["kl_fn"]
        self.overlong, self.loss_agg = checked["overlong"], checked["loss_agg"]
        self.advantage_fn, self.adv_eps = checked["advantage_fn"], checked["adv_eps"]
        self.make_optimizer, self.make_scheduler = checked["make_optimizer"], checked["make_scheduler"]
        self.policy_loss = checked["policy_loss"]  # the policy_loss group's fn, its clip range bound
        # Read by the sampler callback (callbacks/sampler.py), which draws and generates the rollouts.
        self.refill_max_rounds, self.async_rollouts = checked["max_rounds"], async_rollouts
        self.val = checked["val"]  # held-out generation settings of validation_step

        self.model, self.tokenizer, self.reward_set = model, tokenizer, reward_set
        if ref_model is None and self.beta > 0 and not hasattr(model, "disable_adapter"):
            ref_model = frozen_copy(model)  # the starting (SFT) policy, compiled if the policy is
        # Kept out of the module tree: the reference is rebuilt from model.path on resume, so it
        # must not double the checkpoint size (nor trip Lightning's eval-mode warning). Under LoRA
        # there is none: the policy with its adapters off is the reference.
        self._ref = [ref_model] if ref_model is not None else []
        self.model.train()
        self.num_generations, self.updates_per_batch = num_generations, updates_per_batch
        self.micro_batch_size = micro_batch_size
        self.clip_low, self.clip_high, self.is_cap = clip_eps_low, clip_eps_high, is_cap
        self.old_logprobs = old_logprobs
        self.filter_zero_std, self.filter_zero_std_on = filter_zero_std_groups, filter_zero_std_on
        self.max_len, self.temperature, self.max_grad_norm = max_completion_length, temperature, max_grad_norm
        self.think_tags, self.share_prompts, self.padding_free = tuple(think_tags), share_prompts, padding_free
        self.selective_logprobs = selective_logprobs  # logits[id] − logsumexp: no [N, T, V] log_softmax

    # -- the policy under LoRA doubles as the reference (adapters off): no second copy --------------
    def reference_logprobs(self, r: Rollout) -> torch.Tensor:
        with torch.no_grad():
            if self._ref:
                return self._logprobs(self._ref[0], r)[0]
            with self.model.disable_adapter():
                return self._logprobs(self.model, r)[0]

    def on_fit_start(self) -> None:
        for ref in self._ref:
            ref.to(self.device)

    def configure_model(self) -> None:
        """Under FSDP the policy is wrapped here, as the FSDP root (trainer.strategy's settings and
        auto-wrap units), and so is a separate reference (never a whole copy per rank). Each micro-batch
        is then a forward and backward of that root, which FSDP finalises (gradients resharded, states
        reset) after each backward; were the whole module the root, every micro-batch would run inside
        one root forward (training_step) and nothing would."""
        from secreason.strategies import fsdp_wrapped

        if self._sharded():
            self.model, self._ref = fsdp_wrapped(self.model), [fsdp_wrapped(m) for m in self._ref]

    def _logprobs(self, model: torch.nn.Module, r: Rollout, with_entropy: bool = False):
        # Under FSDP every rank must call the policy (and the sharded reference) as often as the others
        # (each call gathers parameters); a shared prompt makes that 1 or 2 calls, so it is off there.
        share = self.share_prompts and not self._sharded()
        return completion_logprobs(model, *self._tensors(r), self.temperature, with_entropy=with_entropy,
                                   share_prompts=share, padding_free=self.padding_free,
                                   selective=self.selective_logprobs)

    def _sharded(self) -> bool:
        """True under FSDP: the policy's parameters are sharded over ranks."""
        from lightning.pytorch.strategies import FSDPStrategy

        return self._trainer is not None and isinstance(self._trainer.strategy, FSDPStrategy)

    def _tensors(self, r: Rollout) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask))

    def score(self, rollout: Rollout, rows: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        """Total rewards [N] and the reward metrics of this batch."""
        rewards, metrics, _, _ = self._scored(rollout, rows)
        return rewards, metrics

    def _scored(self, rollout: Rollout, rows: list[dict]) -> tuple[torch.Tensor, dict[str, float], dict[str, float], Any]:
        """`score`, plus how many values each subset-mean metric averages (for the mean over ranks)
        and the RewardResult itself."""
        result = score_rollout(self.reward_set, rollout, rows, self.num_generations)
        counts = {f"train/reward/{name}": float(sum(v is not None for v in values))
                  for name, values in getattr(result, "per_reward", {}).items()}
        counts["train/reward/std"] = float(len(rows))  # a mean over groups
        return (torch.tensor(result.total, dtype=torch.float32), result.metrics(rollout.group_index.tolist()),
                counts, result)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        rollout: Rollout | None = batch.get("rollout")
        if rollout is None:
            raise RuntimeError("GRPO needs a sampler callback (sampler=hf|vllm) to fill batch['rollout']")
        profile = self.trainer.profiler.profile  # phases by name: trainer.profiler=simple prints them
        with profile("grpo/reward"):
            rewards, metrics, counts, result = self._scored(rollout, batch["rows"])
        mask = rollout.completion_mask.clone()
        rewards, mask = overlong_adjust(rewards, mask, rollout.truncated, self.overlong.get("mode", "none"),
                                        self.max_len, int(self.overlong.get("buffer", 0)),
                                        float(self.overlong.get("penalty", 1.0)))
        advantages = self.advantage_fn(rewards, rollout.group_index, eps=self.adv_eps)
        batch["scored"] = ScoredBatch(result, advantages)  # for the rollout table (callbacks/rollout_table.py)
        zero, zero_metrics = zero_std_rows(rewards, result.correctness, rollout.group_index,
                                           self.filter_zero_std_on, self.adv_eps)
        metrics.update(rollout_metrics(rollout, self.tokenizer, self.think_tags))
        closed = metrics.get("rollout/think_closed_frac", 0.0) * rollout.num_completions
        counts["rollout/think_len_mean"] = round(closed)  # a mean over the closed thinks only
        metrics.update(zero_metrics)
        keep = ~zero if self.filter_zero_std else torch.ones_like(zero)
        rows = keep.nonzero().squeeze(-1)
        metrics["rollout/kept_frac"] = rows.numel() / rollout.num_completions
        micro: list[torch.Tensor] = []
        if rows.numel():
            kept = rollout.select(rows)
            micro = self._micro_batches(mask[rows][:, : kept.completion_ids.shape[1]], kept)
        local = StepNorm.from_masks([mask[rows][m] for m in micro], self.max_len)
        # Every rank, every step, even one with nothing to train on: the others wait in this gather.
        norm, num_micro = self._across_ranks(local, len(micro))
        if norm.num_samples == 0:  # no rank kept a group: no update anywhere
            self._log_metrics(metrics, counts, rollout.num_completions, len(batch["rows"]))
            log.info("every group had zero reward variance: no update this batch")
            return
        rows, micro, pad = padded_micro_batches(rows, micro, num_micro)
        r = rollout.select(rows)
        mask, advantages = mask[rows][:, : r.completion_ids.shape[1]].clone(), advantages[rows].clone()
        if pad is not None:  # the padding row trains on nothing (its loss share is 0)
            mask[pad], advantages[pad] = 0, 0.0
        with profile("grpo/ref"):
            ref = [self.reference_logprobs(r.select(m)) if self.beta > 0 else None for m in micro]
            old = [self._old_logprobs(r.select(m)) for m in micro]
        opt, sched = self.optimizers(), self.lr_schedulers()
        for update in range(self.updates_per_batch):
            stats, stat_counts = self._update(r, mask, advantages, micro, norm, ref, old, opt, first=update == 0)
            if update == 0:
                metrics.update(stats)
                counts.update(stat_counts)
            sched.step()
        metrics["train/lr"] = opt.param_groups[0]["lr"]
        self._log_metrics(metrics, counts, rollout.num_completions, len(batch["rows"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Held-out prompts (`data.test_split`) in Lightning's validation loop: `val/reward/correctness`, …"""
        log_validation(self, batch, batch_idx, **self.val)

    def _across_ranks(self, local: StepNorm, num_micro: int) -> tuple[StepNorm, int]:
        """The step's StepNorm over all ranks and the most micro-batches any rank has (one gather).

        Normalisers span all ranks (prime-rl #2358). Every rank then runs that many forward/backward
        passes: DDP all-reduces gradients in each backward and FSDP gathers parameters in each
        forward, so a rank with fewer passes would leave the others waiting.
        """
        if self.trainer.world_size == 1:
            return local, num_micro
        mine = torch.tensor([local.num_samples, local.num_tokens, num_micro], dtype=torch.long, device=self.device)
        every = self.trainer.strategy.all_gather(mine).reshape(-1, 3).tolist()  # [world, 3]
        norm = StepNorm.combine([StepNorm(int(s), int(t), local.max_len) for s, t, _ in every])
        return norm, max(int(m) for _, _, m in every)

    def _log_metrics(self, metrics: dict[str, float], counts: dict[str, float], num_rows: int,
                     batch_size: int) -> None:
        """Log the batch's metrics as over the global batch, the same numbers on every rank."""
        if self.trainer.world_size > 1:
            everyone: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(everyone, rank_entries(metrics, counts, num_rows))
            metrics = combine_ranks(everyone)
        if "train/loss" in metrics:
            self.log("train/loss", metrics.pop("train/loss"), prog_bar=True, batch_size=batch_size)
        self.log_dict(metrics, batch_size=batch_size, prog_bar=False)

    def _micro_batches(self, mask: torch.Tensor, r: Rollout | None = None) -> list[torch.Tensor]:
        """Row indices of each micro-batch (`micro_batch_rows`); prompt groups count when prompts are shared.

        The loss is a sum of shares with step-wide normalisers (StepNorm), so the cut does not
        change the update.
        """
        groups = (r.group_index, r.prompt_mask.sum(-1)) if self.share_prompts and r is not None else (None, None)
        return micro_batch_rows(mask.sum(-1), self.micro_batch_size, *groups)

    def _old_logprobs(self, r: Rollout) -> torch.Tensor | None:
        """π_old on the sampled tokens: None when μ = 1 (then old = current, detached)."""
        if self.updates_per_batch == 1:
            return None
        if self.old_logprobs == "sampler":
            return r.sampler_logprobs.to(self.device)
        with torch.no_grad():
            return self._logprobs(self.model, r)[0]

    def _update(self, r: Rollout, mask: torch.Tensor, advantages: torch.Tensor, micro: list[torch.Tensor],
                norm: StepNorm, ref: list, old: list, opt, first: bool) -> tuple[dict[str, float], dict[str, float]]:
        """One optimizer step over all micro-batches; the stats of its forward passes and the token
        count each per-token mean is over (this rank's)."""
        profile = self.trainer.profiler.profile
        opt.zero_grad()
        with profile("grpo/fwd_bwd"):
            sums = self._forward_backward(r, mask, advantages, micro, norm, ref, old, first)
        with profile("grpo/optimizer"):
            if self.max_grad_norm:
                sums["train/grad_norm"] = self._clip_gradients()
            opt.step()
        tokens = sums.pop("tokens")
        stats = {k: (v / max(tokens, 1.0) if k in TOKEN_STATS else v) for k, v in sums.items()}
        return stats, {k: tokens for k in sums if k in TOKEN_STATS}

    def _clip_gradients(self) -> float:
        """Clip to max_grad_norm; the total norm before clipping, over the whole model.

        Under FSDP a rank holds a shard of each gradient, so the root's `clip_grad_norm_` (which
        reduces the norm over ranks) clips; elsewhere every rank holds the whole (all-reduced) gradient.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.model if isinstance(self.model, FullyShardedDataParallel) else self.trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel):
            return float(root.clip_grad_norm_(self.max_grad_norm))
        return float(torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                    self.max_grad_norm))

    def _forward_backward(self, r: Rollout, mask: torch.Tensor, advantages: torch.Tensor, micro: list[torch.Tensor],
                          norm: StepNorm, ref: list, old: list, first: bool) -> dict[str, float]:
        """Backward of every micro-batch's loss share. Returns this rank's sums: `train/loss` (of the
        shares), `tokens` (loss tokens), each of TOKEN_STATS summed over those tokens, and
        `rollout/logprob_diff_max`. Token sums, not micro-batch means: the batch means are then
        the same however the batch is cut into micro-batches or ranks."""
        sums: dict[str, float] = {"train/loss": 0.0, "tokens": 0.0, "rollout/logprob_diff_max": 0.0}
        for m, ref_lp, old_lp in zip(micro, ref, old):
            part = r.select(m)
            mb_mask = mask[m][:, : part.completion_ids.shape[1]].to(self.device).float()
            logp, entropy = self._logprobs(self.model, part, with_entropy=first)
            old_lp = logp.detach() if old_lp is None else old_lp
            sampler_lp = part.sampler_logprobs.to(self.device)
            is_w = truncated_is_weights(old_lp, sampler_lp, self.is_cap)
            per_token, st = self.policy_loss(logp, old_lp, advantages[m].to(self.device), mb_mask, is_weights=is_w)
            kl = self.kl_fn(logp, ref_lp) if ref_lp is not None else torch.zeros_like(logp)
            loss = self.loss_agg(per_token + self.beta * kl, mb_mask, norm)
            # DDP and FSDP average gradients over ranks; the shares already divide by the global count.
            self.manual_backward(loss * self.trainer.world_size)
            diff = (old_lp.detach() - sampler_lp).abs() * mb_mask
            sums["train/loss"] += loss.item()
            sums["tokens"] += mb_mask.sum().item()
            for key, values in (("train/kl", kl.detach()), ("train/clip_frac", st["clipped"]),
                                ("train/is_weight_mean", is_w), ("rollout/logprob_diff_mean", diff),
                                ("train/entropy", entropy)):
                if values is not None:
                    sums[key] = sums.get(key, 0.0) + masked_sum(values, mb_mask)
            sums["rollout/logprob_diff_max"] = max(sums["rollout/logprob_diff_max"], diff.max().item())
        return sums

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.model.parameters())
        # estimated_stepping_batches counts batches; each batch makes μ optimizer steps.
        total = int(self.trainer.estimated_stepping_batches) * self.updates_per_batch
        if self.trainer.max_steps > 0:
            total = min(total, self.trainer.max_steps)
        scheduler = self.make_scheduler(optimizer, max(total, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
