"""A shuffling sampler whose position lives in the checkpoint, so a killed run resumes exactly.

The order of epoch e is a permutation drawn from (seed, e), so it needs no saved RNG. The data is
one stream of batches, epoch after epoch; where a run stands in it is the number of training
batches it has trained on, `G`, and with `N` batches an epoch that is epoch `G // N`, batch
`G % N`. `G` is Lightning's `batch_progress.total.processed`: a batch counts once its training
step has run, and the count is restored with the fit loop from the checkpoint.

Why not the trainer's epoch and its in-epoch batch count: measured with Lightning 2.6 (the
save points of ModelCheckpoint, 3 batches an epoch):

    save point                              current_epoch  batch_progress.current  total.processed
    on_train_batch_end, batch k of epoch e       e              k                    e·N + k
    on_train_epoch_end of epoch e                e              N                    (e+1)·N
    on_train_end after a max_steps stop          e+1            k                    e·N + k
      (mid-epoch e, or at its end: k = N)
    on_train_end after max_epochs                e+1            N                    (e+1)·N

After a max_steps stop Lightning counts the cut-short epoch as finished, and on resume it runs
the next epoch from in-epoch batch k; after an epoch-end save it resumes into the next epoch with
a stale batch count. Either way its epoch numbers and in-epoch counts no longer say which data
comes next, while the total count always does. So each time the train dataloader is iterated
during a fit the sampler starts at `divmod(G, N)` of that moment (N =
`trainer.num_training_batches`), whatever epoch number Lightning passes to `set_epoch`: if
Lightning ends one of its epochs early or late, the next iteration still continues the stream
where training stopped. The checkpoint holds the same position as `{epoch, batches_done}` (the
epoch of the last trained batch and how many of its batches are done), which a datamodule used
without a trainer resumes from.

On N ranks (DDP, FSDP) the sampler is a `DistributedSampler`, so Lightning uses it as it is
instead of wrapping it in its `DistributedSamplerWrapper` (which reshuffles, sizes the shards from
the full length and knows nothing of the position). Each rank takes every `world`-th index of the
epoch's order from its rank on, as `DistributedSampler` does (padded by repeating the start, or cut
to a multiple of `world` with `drop_last`): the ranks' shards are disjoint, and global batch b of
an epoch is the contiguous stretch [b·B·world, (b+1)·B·world) of the order. All ranks train the
same number of batches, so each resumes by skipping `batches_done · B` of its own shard.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator, Mapping

import lightning as L
import torch
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (epoch, batches of it already trained)


class ResumableSampler(DistributedSampler):
    """Epoch e's order is `order(e)`; this rank's part of it is `shard(e)`. `position`, when given
    and returning a value, says where each iteration starts (a fit: see the module docstring);
    otherwise the epoch is the one last given to `set_epoch`, minus the batches a pending `resume`
    skips."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 position: Callable[[], Position | None] | None = None, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False) -> None:
        # DistributedSampler's fields, set here: its __init__ wants a dataset and, without
        # num_replicas, a process group.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_items, self.batch_size, self.seed, self.shuffle = num_items, batch_size, seed, shuffle
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.num_samples = num_items // num_replicas if drop_last else math.ceil(num_items / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.position = position
        self.epoch = 0
        self._skip_batches: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches the next time epoch `epoch` is iterated."""
        self._skip_batches = {epoch: batches_done}

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def shard(self, epoch: int) -> list[int]:
        """This rank's indices of epoch `epoch`, in order (all of `order(epoch)` on one rank)."""
        order = self.order(epoch)
        if self.num_replicas == 1:
            return order
        order = (order * math.ceil(self.total_size / max(len(order), 1)))[:self.total_size]
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start = self.position() if self.position is not None else None
        if start is None:
            epoch, done = self.epoch, self._skip_batches.pop(self.epoch, 0)
        else:
            (epoch, done), self._skip_batches = start, {}
            self.epoch = epoch
        return iter(self.shard(epoch)[done * self.batch_size:])

    def __len__(self) -> int:
        return self.num_samples


def batches_per_epoch(trainer) -> int | None:
    """N, the training batches in one epoch (after `limit_train_batches`), or None if unknown."""
    n = trainer.num_training_batches
    if isinstance(n, int) and n > 0:
        return n
    # Before the fit loop has counted them (the first iteration of a loader with workers starts
    # inside `setup_data`): the loader's length, limited as Lightning limits it.
    loader = trainer.train_dataloader
    try:
        n = len(loader)
    except TypeError:
        return None
    limit = trainer.limit_train_batches
    n = min(n, limit) if isinstance(limit, int) else int(n * limit)
    return n if n > 0 else None


def batches_trained(trainer) -> int:
    """G: training batches whose step has run, over the whole run (restored from a checkpoint)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


def position_from_trainer(trainer) -> dict:
    """{epoch, batches_done} of the running fit, for a datamodule's state_dict: the epoch of the
    last trained batch and how many of that epoch's batches are done (1…N; 0 before any)."""
    if trainer is None:
        return {"epoch": 0, "batches_done": 0}
    done, n = batches_trained(trainer), batches_per_epoch(trainer)
    if done == 0:
        return {"epoch": 0, "batches_done": 0}
    if n is None or not math.isfinite(n):  # an unsized loader: no epochs to count in
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "batches_done": int(current.processed)}
    return {"epoch": (done - 1) // n, "batches_done": (done - 1) % n + 1}


def stream_position(trainer) -> Position | None:
    """Where the next iteration of the train loader must start during a fit, or None outside one."""
    if trainer is None or trainer.state.fn != "fit":
        return None
    n = batches_per_epoch(trainer)
    if n is None:
        return None
    return divmod(batches_trained(trainer), n)


class ResumableDataModule(L.LightningDataModule):
    """Rows from `path`, or from the cached synthetic set when `path` is null; resumable order."""

    path: str | None
    synth: Mapping[str, Any] | None
    batch_size: int
    seed: int
    _resume: dict | None = None  # a checkpoint's position, until a sampler takes it
    _restored: dict | None = None  # ... and until the first iteration in a fit has checked it

    def source_path(self) -> str:
        if self.path:
            return str(self.path)
        if not self.synth:
            from secreason.data.rows import DataError

            raise DataError("data.path is not set and data.synth is null: nothing to load")
        from secreason.data.synth_cache import ensure_synth

        return str(ensure_synth(**self.synth))

    def make_sampler(self, num_items: int, drop_last: bool = False) -> ResumableSampler:
        """`drop_last` as the loader's: a rank's part is then cut, never padded with repeats."""
        ranks = getattr(self.trainer, "distributed_sampler_kwargs", None) or {}  # {num_replicas, rank} on N ranks
        sampler = ResumableSampler(num_items, self.batch_size, seed=self.seed, position=self._stream_position,
                                   num_replicas=ranks.get("num_replicas", 1), rank=ranks.get("rank", 0),
                                   drop_last=drop_last)
        self.sampler = sampler  # for `stream_batch`
        if self._resume:
            sampler.resume(**self._resume)
            self._restored, self._resume = self._resume, None
        return sampler

    def stream_batch(self, k: int) -> list[int] | None:
        """Item indices of batch `k` of the stream (counted as `batches_trained`), for a sampler that
        generates a batch ahead (callbacks/async_rollouts.py); None before the loader is made or
        when the epoch length is unknown."""
        sampler, n = getattr(self, "sampler", None), batches_per_epoch(self.trainer) if self.trainer else None
        if sampler is None or n is None:
            return None
        epoch, i = divmod(k, n)
        return sampler.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]

    def _stream_position(self) -> Position | None:
        trainer = self.trainer
        position = stream_position(trainer)
        if position is not None and self._restored is not None:
            self._check_restored(trainer, self._restored)
            self._restored = None
        return position

    @staticmethod
    def _check_restored(trainer, stored: dict) -> None:
        n = batches_per_epoch(trainer)
        saved = int(stored.get("epoch", 0)) * n + int(stored.get("batches_done", 0))
        if saved != batches_trained(trainer):
            # A checkpoint written before the position was derived from the total count (an
            # epoch counter moved on by a max_steps stop): the fit loop's count is the truth.
            log.warning("the checkpoint's data position %s (= batch %d of the stream) differs from the %d "
                        "batches its fit loop trained; resuming after batch %d", stored, saved,
                        batches_trained(trainer), batches_trained(trainer))

    def state_dict(self) -> dict:
        return position_from_trainer(self.trainer)

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


class ExtraPromptStream:
    """Where a refill's extra prompts come from (secreason.refill): the train items in an order of
    their own, epoch after epoch, a permutation per (seed, rank, epoch) as in ResumableSampler.

    Its position is the count of items drawn (`state_dict`), checkpointed with the sampler
    callback, so a resumed run draws the same extra prompts. The order is not the loader's: the
    loader's position is Lightning's count of trained batches, which extra draws must not move
    (a resumed run would otherwise skip or repeat batches); a different seed keeps the extras from
    mirroring the batches that come next.
    """

    SEED_OFFSET = 0x5EED  # the extra stream's seed differs from the loader's (data.seed)

    def __init__(self, seed: int = 0, rank: int = 0) -> None:
        self.seed, self.rank, self.drawn = int(seed), int(rank), 0
        self._order: tuple[int, int, list[int]] | None = None  # (num_items, epoch, order) cached

    def _epoch_order(self, num_items: int, epoch: int) -> list[int]:
        if self._order is None or self._order[:2] != (num_items, epoch):
            sampler = ResumableSampler(num_items, 1, seed=self.seed + self.SEED_OFFSET + 7919 * self.rank)
            self._order = (num_items, epoch, sampler.order(epoch))
        return self._order[2]

    def draw(self, items: list, k: int) -> list:
        """The next `k` of `items` (the train items; their number must not change during a run)."""
        if not items:
            raise ValueError("ExtraPromptStream.draw: no items to draw from")
        out = []
        for _ in range(k):
            epoch, i = divmod(self.drawn, len(items))
            out.append(items[self._epoch_order(len(items), epoch)[i]])
            self.drawn += 1
        return out

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.drawn, self.seed = int(state["drawn"]), int(state["seed"])
