"""Generation shared by training, evaluation and the held-out scorer: HF `generate` and vLLM.

The sampler callbacks (secreason.callbacks) wrap these generators with the Lightning life cycle;
evaluation and `secreason.heldout` call them directly. Only `vllm_engine` imports vLLM.
"""
