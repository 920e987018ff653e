"""model.compile=true: the policy (and GRPO's separate reference) torch.compiled in place, with the
same numbers, gradients and state_dict keys as the eager model."""
from __future__ import annotations

import pytest
import torch

from secreason.errors import ConfigError
from secreason.models import is_compiled, load_causal_lm
from secreason.modules.logprobs import completion_logprobs
from secreason.run import build_model, build_module, check_compile

from test_logprobs import ROWS, batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compiled_policy_gives_the_eager_logprobs_and_gradients(tiny_model_dir):
    tensors = batch(ROWS)
    weights = torch.linspace(-1.0, 2.0, tensors[2].numel()).view_as(tensors[2])
    out = {}
    for compiled in (False, True):
        model = load_causal_lm(str(tiny_model_dir), compile=compiled).train()
        assert is_compiled(model) == compiled
        logp, _ = completion_logprobs(model, *tensors, share_prompts=True)
        (logp * weights).sum().backward()
        out[compiled] = logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, model
    (eager_lp, eager_grads, eager), (lp, grads, model) = out[False], out[True]
    # compiled in place: the same parameter names, so checkpoints, the vLLM push and the export see one model
    assert list(model.state_dict()) == list(eager.state_dict())
    torch.testing.assert_close(lp, eager_lp, atol=1e-5, rtol=0)
    for name in eager_grads:
        torch.testing.assert_close(grads[name], eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_grpo_reference_of_a_compiled_policy_is_a_compiled_copy(compose_train):
    cfg = compose_train("+experiment=grpo", "model.compile=true")
    _, model, tokenizer = build_model(cfg)
    module = build_module(cfg, model, tokenizer)
    (ref,) = module._ref
    assert is_compiled(module.model) and is_compiled(ref)  # a plain deepcopy would run the reference eager
    before = {n: p.clone() for n, p in ref.named_parameters()}
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, before[n]) for n, p in ref.named_parameters())  # its own weights
    assert not any(p.requires_grad for p in ref.parameters())


def test_eager_by_default(compose_train):
    _, model, _ = build_model(compose_train("+experiment=sft"))
    assert not is_compiled(model)


@pytest.mark.parametrize("value", ["yes", "1", "max-autotune"])
def test_bad_compile_value_names_the_key(compose_train, value):
    cfg = compose_train("+experiment=grpo", f"model.compile={value}")
    with pytest.raises(ConfigError, match=r"model\.compile=.*true or false"):
        check_compile(cfg)


def test_compile_under_fsdp_is_refused_before_loading(compose_train):
    cfg = compose_train("+experiment=grpo", "trainer=fsdp", "model.compile=true")
    with pytest.raises(ConfigError, match=r"model\.compile=true .*trainer\.strategy=.*FSDP"):
        check_compile(cfg)
    check_compile(compose_train("+experiment=grpo", "trainer=fsdp"))  # eager FSDP is fine


def test_kernels_first_called_on_fewer_threads_still_run_in_parallel():
    """Inductor shapes a CPU kernel for the caller's thread count at its first call (serial at 1).
    A compiled policy's first step can run while async rollouts hold half the cores, so the kernels
    are generated for the count at compile_model time and take the caller's count when they run."""
    from torch._inductor.utils import run_and_get_code

    from secreason.models import compile_model

    class Elementwise(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(x * 2 + 1).sum(-1)

    torch._dynamo.reset()
    torch.set_num_threads(2)  # the fixture puts the test's count back
    model = compile_model(Elementwise())
    torch.set_num_threads(1)
    with torch._inductor.config.patch(fx_graph_cache=False):
        _, code = run_and_get_code(model, torch.randn(4096, 256))
    torch._dynamo.reset()
    assert "#pragma omp parallel\n" in "\n".join(code)
