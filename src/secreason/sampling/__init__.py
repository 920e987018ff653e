"""Generation shared by training, evaluation and the held-out scorer: HF `generate` and vLLM.

    base.Generator              settings, per-call seeds, completions → Rollout (left_pad, cut_at_eos)
    hf.HFGenerator              the live policy's own `generate`: no second copy, no sync
    vllm_engine.VLLMGenerator   a colocated in-process vLLM engine with weight sync and its probe check
    weights                     the policy as HF-named tensors (LoRA merged): for the vLLM sync, the
                                engine's start and the HF export (secreason.models.export_hf)

The sampler callbacks (secreason.callbacks.hf_sampler / vllm_sampler) add the Lightning life cycle
to these generators; evaluation (secreason.eval.generate) and `secreason.heldout` call them directly.
Only `vllm_engine` imports vLLM (tests/test_layering.py checks it).
"""
