"""Rollouts from the live policy with HF `generate` (secreason.sampling.hf): nothing to sync."""
from __future__ import annotations

from secreason.callbacks.sampler import SamplerCallback
from secreason.sampling.hf import HFGenerator


class HFSampler(SamplerCallback, HFGenerator):
    """conf/sampler/hf.yaml; see HFGenerator for the arguments."""
