"""The real model's contract on `model=tiny_llama31`, the miniature shaped like Llama-3.1's base model.

Foundation-Sec-8B is a Llama-3.1 base model: bos `<|begin_of_text|>` (its tokenizer adds one to every
encode), eos `<|end_of_text|>`, no chat template, a generation config whose only eos is
`<|end_of_text|>`; chat turns (the project's fallback template) end with `<|eot_id|>`. Here:
exactly one BOS on every path, SFT labels = assistant content + `<|eot_id|>`, rollouts and eval
answers of a model trained to end its turns stop at `<|eot_id|>` with both samplers, and eval,
held-out scoring and the judges run on the accelerator when there is one (device=auto).

Ids below are written relative to V = the BPE vocabulary size (512): Llama-3.1's 128000 + k is V + k.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from secreason.data.chat import IGNORE_INDEX, encode_prompt, end_of_turn_id, render_ids, text_ids
from secreason.data.prompts import encode_prompts
from secreason.data.sft import tokenize_rows
from secreason.errors import ConfigError
from secreason.eval.generate import complete, prompt_ids
from secreason.models import DEFAULT_CHAT_TEMPLATE, load_causal_lm, load_tokenizer, resolve_device, resolve_model_path
from secreason.sampling.base import stop_token_ids
from secreason.sampling.hf import HFGenerator
from secreason.tiny import VOCAB_SIZE, ensure_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
V = VOCAB_SIZE
BOS, EOS, START_HEADER, END_HEADER, EOM, EOT = V + 0, V + 1, V + 6, V + 7, V + 8, V + 9
SYSTEM = "Answer with the number only."
# Question → answer, each answer a few tokens; the SFT fixture teaches the model to end each with <|eot_id|>.
QA = [("2+3?", "five"), ("CWE of SQL injection?", "CWE-89"), ("T1059 is?", "scripting"), ("7*6?", "42")]


@pytest.fixture(scope="module")
def compose_eval(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str):
        out = tmp_path_factory.mktemp("eval_out")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("eval", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={out}",
                                              "model=tiny_llama31", *overrides])

    return _compose


@pytest.fixture(scope="module")
def l31_dir(secreason_cache) -> Path:
    return Path(ensure_tiny(secreason_cache, flavor="llama31"))


@pytest.fixture(scope="module")
def l31_tok(l31_dir):
    return load_tokenizer(str(l31_dir))


def chat(q: str, a: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
    return turns + ([{"role": "assistant", "content": a}] if a is not None else [])


def plain(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def sft_model(l31_dir, l31_tok, tmp_path_factory):
    """The miniature after SFT on QA through the SFT encoding (tokenize_rows) until every example's
    loss is under 0.03: it then answers each question greedily with its answer, then <|eot_id|>.
    Saved as an HF dir too. Trained to a loss, not for a step count: at lr 3e-3 for 40 epochs the
    losses oscillated on an AVX2-only host and it answered 'five' to three of the four questions."""
    model = load_causal_lm(str(l31_dir))
    examples, dropped = tokenize_rows(l31_tok, [{"messages": chat(q, a)} for q, a in QA], max_length=128)
    assert dropped == 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    losses = [float("inf")]
    for _ in range(300):
        losses = []
        for ex in examples:
            out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(out.loss.item())
        if max(losses) < 0.03:
            break
    assert max(losses) < 0.03, f"the SFT fixture did not learn QA in 300 epochs: losses {losses}"
    model.eval()
    out_dir = tmp_path_factory.mktemp("sft_l31") / "hf_model"
    model.save_pretrained(out_dir)
    l31_tok.save_pretrained(out_dir)
    return model, out_dir


# ------------------------------------------------------------------------------------------ the miniature

def test_model_tiny_llama31_is_the_llama31_shaped_miniature(compose_train, l31_dir, l31_tok):
    cfg = compose_train("model=tiny_llama31")
    assert Path(resolve_model_path(cfg.model, cfg.paths.cache_dir)) == l31_dir
    t = l31_tok
    # Llama-3.1's special tokens, named and ordered as in its tokenizer_config.json (128000 + k → V + k).
    assert t.convert_ids_to_tokens([BOS, EOS, V + 2, V + 4, START_HEADER, END_HEADER, EOM, EOT, V + 10, V + 11,
                                    V + 255]) == [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|finetune_right_pad_id|>",
        "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
        "<|reserved_special_token_3|>", "<|reserved_special_token_247|>"]
    assert len(t) == V + 256
    assert (t.bos_token, t.bos_token_id, t.eos_token, t.eos_token_id) == ("<|begin_of_text|>", BOS, "<|end_of_text|>", EOS)
    assert t("hi")["input_ids"][0] == BOS  # like Llama's, the tokenizer itself adds BOS
    assert t.pad_token_id == EOS  # no pad token of its own: load_tokenizer falls back to eos
    # no chat template of its own, so the project's fallback applies
    assert "chat_template" not in json.loads((l31_dir / "tokenizer_config.json").read_text())
    assert not (l31_dir / "chat_template.jinja").exists()
    assert t.chat_template == DEFAULT_CHAT_TEMPLATE
    # a base model's generation config: eos <|end_of_text|> only
    assert json.loads((l31_dir / "generation_config.json").read_text())["eos_token_id"] == EOS


def test_fallback_template_is_llama31_format(l31_tok):
    """BOS once, then <|start_header_id|>role<|end_header_id|>\\n\\n content <|eot_id|> per message."""
    text = l31_tok.apply_chat_template(chat("2+3?", "five"), tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer with the number only.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n2+3?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nfive<|eot_id|>")
    head = l31_tok.apply_chat_template(chat("2+3?"), tokenize=False, add_generation_prompt=True)
    assert head.endswith("2+3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


# ------------------------------------------------------------------------------------------ one BOS

def test_sft_example_has_one_bos_and_labels_only_assistant_content_and_eot(l31_tok):
    """input_ids = <|begin_of_text|> <|start_header_id|>system… (one BOS); labels = 'five' <|eot_id|>,
    then 'CWE-89' <|eot_id|> in a second assistant turn, nothing else."""
    t = l31_tok
    msgs = chat("2+3?", "five") + [{"role": "user", "content": "CWE of SQL injection?"},
                                   {"role": "assistant", "content": "CWE-89"}]
    [ex], _ = tokenize_rows(t, [{"messages": msgs}], max_length=256)
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids[:2] == [BOS, START_HEADER] and ids.count(BOS) == 1
    assert ids == [BOS] + plain(t, t.apply_chat_template(msgs, tokenize=False)[len("<|begin_of_text|>"):])
    trained = [x for x in labels if x != IGNORE_INDEX]
    assert trained == plain(t, "five") + [EOT] + plain(t, "CWE-89") + [EOT]
    # the trained tokens are exactly the assistant contents' positions, each with its <|eot_id|>
    assert t.decode([i for i, x in zip(ids, labels) if x != IGNORE_INDEX]) == "five<|eot_id|>CWE-89<|eot_id|>"
    assert all(x == IGNORE_INDEX or x == i for i, x in zip(ids, labels))


def test_a_template_without_bos_gets_the_tokenizer_one(l31_dir):
    """A user's model.chat_template that writes no {{ bos_token }}: the tokenizer's BOS is added, once."""
    no_bos = DEFAULT_CHAT_TEMPLATE.replace("{% if bos_token %}{{ bos_token }}{% endif %}", "")
    t = load_tokenizer(str(l31_dir), chat_template=no_bos)
    assert not t.apply_chat_template(chat("2+3?"), tokenize=False).startswith("<|begin_of_text|>")
    ids = encode_prompt(t, "2+3?", SYSTEM)
    assert ids[:2] == [BOS, START_HEADER] and ids.count(BOS) == 1


def test_grpo_and_eval_prompts_have_one_bos_and_end_at_the_assistant_header(l31_tok):
    """[<|begin_of_text|>, <|start_header_id|>, …, <|start_header_id|>, 'assistant', <|end_header_id|>, '\\n\\n']."""
    t = l31_tok
    header = [START_HEADER] + plain(t, "assistant") + [END_HEADER] + plain(t, "\n\n")
    [item], _ = encode_prompts(t, [{"prompt": "2+3?", "task": "math"}], SYSTEM, max_prompt_length=256)
    grpo = item["prompt_ids"]
    evaluated = prompt_ids(t, chat("2+3?"))
    for ids in (grpo, evaluated):
        assert ids[:2] == [BOS, START_HEADER] and ids.count(BOS) == 1
        assert ids[-len(header):] == header
    assert grpo == evaluated  # training and eval prompt the model alike


def test_text_ids_keeps_one_bos_whatever_the_text_holds(l31_tok):
    """Judges' prompts: a raw prompt gets BOS, a rendered chat keeps its own, a doubled one is cut to one."""
    t = l31_tok
    assert text_ids(t, "[INST] judge this [/INST]") == [BOS] + plain(t, "[INST] judge this [/INST]")
    assert text_ids(t, "<|begin_of_text|>hi") == [BOS] + plain(t, "hi")
    assert text_ids(t, "<|begin_of_text|><|begin_of_text|>hi") == [BOS] + plain(t, "hi")


def test_tiny_tokenizer_without_bos_is_unchanged(tokenizer):
    """The project's own tiny tokenizer has no BOS: nothing is added."""
    assert tokenizer.bos_token_id is None
    assert render_ids(tokenizer, chat("2+3?")) == plain(tokenizer, tokenizer.apply_chat_template(chat("2+3?"), tokenize=False))


# ------------------------------------------------------------------------------------------ end of turn

def test_end_of_turn_is_derived_from_the_template(l31_tok, tokenizer, l31_dir):
    """<|eot_id|> for the fallback (Llama-3.1) template, <|end|> (= eos) for the tiny one, <|eom_id|>
    for a template whose turns end there: read off the template, not hard-coded."""
    assert end_of_turn_id(l31_tok) == EOT
    assert end_of_turn_id(tokenizer) == tokenizer.eos_token_id
    other = load_tokenizer(str(l31_dir), chat_template=DEFAULT_CHAT_TEMPLATE.replace("<|eot_id|>", "<|eom_id|>"))
    assert end_of_turn_id(other) == EOM
    model = load_causal_lm(str(l31_dir))
    # the stop set: the tokenizer's and the generation config's eos (<|end_of_text|>) + the template's end of turn
    assert stop_token_ids(l31_tok, model) == [EOS, EOT]
    assert stop_token_ids(other, model) == [EOS, EOM]


def test_no_end_of_turn_when_the_template_ends_turns_with_plain_text_or_cannot_render(l31_dir):
    """Turns ending in '\n\n' (no special token), or a template that raises on an assistant turn:
    nothing is derived, the stop set is eos alone."""
    model = load_causal_lm(str(l31_dir))
    newline = load_tokenizer(str(l31_dir), chat_template=DEFAULT_CHAT_TEMPLATE.replace("<|eot_id|>", "\n\n"))
    raising = load_tokenizer(str(l31_dir), chat_template=(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"))
    for t in (newline, raising):
        assert end_of_turn_id(t) is None
        assert stop_token_ids(t, model) == [EOS]


def expected_completion(tok, answer: str) -> list[int]:
    return plain(tok, answer) + [EOT]


def check_stops_at_eot(r, tok, max_tokens: int) -> None:
    """Every completion = the answer's tokens + <|eot_id|>, nothing after; trained on like eos."""
    for i, (q, a) in enumerate(QA):
        want = expected_completion(tok, a)
        n = int(r.completion_mask[i].sum())
        assert r.completion_ids[i, :n].tolist() == want, (q, tok.decode(r.completion_ids[i, :n]))
        assert n < max_tokens and not r.truncated[i]
        assert r.texts[i] == a + "<|eot_id|>"  # kept in the text like eos is


def test_hf_rollout_of_an_sft_trained_miniature_stops_at_eot(sft_model, l31_tok):
    """Greedy HF rollouts: 'five' <|eot_id|>, 'CWE-89' <|eot_id|>, … and not on to max_tokens=24."""
    model, _ = sft_model
    prompts = [encode_prompt(l31_tok, q, SYSTEM) for q, _ in QA]
    r = HFGenerator(temperature=0.0, max_tokens=24).bind(model, l31_tok).generate(prompts, 1)
    check_stops_at_eot(r, l31_tok, 24)
    # ending with <|eot_id|> exactly at max_tokens is finished, not truncated
    tight = len(expected_completion(l31_tok, QA[0][1]))
    r = HFGenerator(temperature=0.0, max_tokens=tight).bind(model, l31_tok).generate(prompts[:1], 1)
    assert r.completion_ids[0].tolist()[-1] == EOT and r.truncated.tolist() == [False]


def test_eval_answers_stop_at_eot(sft_model, l31_tok, capsys):
    """eval's `complete` on the HF sampler: the answer text alone, no <|eot_id|>, nothing after it;
    and a progress bar."""
    model, _ = sft_model
    sampler = HFGenerator(temperature=0.0, max_tokens=24).bind(model, l31_tok)
    answers = complete(sampler, l31_tok, [chat(q) for q, _ in QA], 1, progress=True)
    assert answers == [[a] for _, a in QA]
    assert "generating" in capsys.readouterr().err  # tqdm's bar on stderr


def test_eval_generator_on_the_miniature(sft_model, compose_eval, monkeypatch):
    """eval.py's Generator (backend=hf) on the saved SFT model: answers stop at <|eot_id|>; the
    model is loaded onto resolve_device(device), the GPU when there is one."""
    from secreason import models
    from secreason.eval.generate import Generator

    _, sft_dir = sft_model
    cfg = compose_eval(f"model.path={sft_dir}", "backend=hf", "sampler.temperature=0", "sampler.max_tokens=24")
    assert cfg.device == "auto"
    real, asked = models.load_causal_lm, []

    def spy(*args, device=None, **kwargs):
        asked.append(device)
        return real(*args, **kwargs)  # stays on the CPU: this box has no GPU

    monkeypatch.setattr(models, "load_causal_lm", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gen = Generator(cfg)
    assert asked == [torch.device("cuda")]
    assert gen([chat(q) for q, _ in QA], 1) == [[a] for _, a in QA]


@pytest.mark.vllm
def test_vllm_rollout_and_eval_answers_stop_at_eot(sft_model, l31_tok):
    """The same with the vLLM sampler: its stop_token_ids hold <|eot_id|>."""
    from secreason.sampling.vllm_engine import VLLMGenerator

    model, _ = sft_model
    gen = VLLMGenerator(temperature=0.0, max_tokens=24, max_model_len=256, kv_cache_gb=0.25,
                        check_sync=False).bind(model, l31_tok)
    try:
        assert gen.stop_ids == [EOS, EOT]
        assert EOT in gen._params(1, 0.0, 1.0, 24, seed=0).stop_token_ids  # the engine itself stops there
        prompts = [encode_prompt(l31_tok, q, SYSTEM) for q, _ in QA]
        check_stops_at_eot(gen.generate(prompts, 1), l31_tok, 24)
        assert complete(gen, l31_tok, [chat(q) for q, _ in QA], 1) == [[a] for _, a in QA]
    finally:
        gen.close()


# ------------------------------------------------------------------------------------------ devices

def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device=cuda: no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"judge.device='gpu0' is not a device"):
        resolve_device("gpu0", key="judge.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"device=cuda:2: only 2 CUDA"):
        resolve_device("cuda:2")


def test_eval_names_a_bad_device_before_loading_anything(compose_eval, monkeypatch):
    from secreason.eval.runner import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='gpu0' is not a device"):
        validate(compose_eval("device=gpu0"))
    with pytest.raises(ConfigError, match=r"^device=cuda: no CUDA device"):
        validate(compose_eval("device=cuda"))


def test_load_causal_lm_places_the_model_on_device(l31_dir):
    """`meta` stands in for an accelerator: the weights end up where `device` says."""
    assert next(load_causal_lm(str(l31_dir), device="meta").parameters()).device.type == "meta"
    assert next(load_causal_lm(str(l31_dir)).parameters()).device.type == "cpu"


def test_judges_and_guards_run_on_evals_device_unless_their_own_is_set(l31_dir):
    from secreason.eval import harmbench

    judge = harmbench.make_judge({"name": "llama_guard3", "model_path": str(l31_dir), "dtype": "float32"}, "meta")
    assert judge.lm.model.device.type == "meta"
    guard = harmbench.make_guard({"name": "llama_guard3", "model_path": str(l31_dir), "dtype": "float32",
                                  "device": "cpu"}, "meta")
    assert guard.lm.model.device.type == "cpu"


def test_heldout_scoring_moves_the_model_to_the_accelerator(sft_model, l31_tok, monkeypatch):
    """heldout_scores(device=auto) puts the model on the GPU when there is one; its greedy answers
    stop at <|eot_id|> (the reward sees 'five<|eot_id|>', nothing after)."""
    from secreason.heldout import heldout_scores
    from secreason.rewards.sets import RewardSet

    model, _ = sft_model
    moved = []
    monkeypatch.setattr(model, "to", lambda device: moved.append(device) or model)  # stays on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def exact(completions, answer):
        return [float(c == a + "<|eot_id|>") for c, a in zip(completions, answer)]

    rewards = RewardSet({"exact": {"fn": exact, "weight": 1.0, "tasks": ["qa"]}})
    rows = [{"prompt": q, "task": "qa", "answer": a} for q, a in QA]
    scores = heldout_scores(model, l31_tok, rows, rewards, max_tokens=24, system_prompt=SYSTEM)
    assert moved == [torch.device("cuda")]
    assert scores["correctness"] == 1.0


# ------------------------------------------------------------------------------------------ train.py end to end

QUIET = ["trainer.enable_progress_bar=false", "num_threads=1", "logger=csv"]


def ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def sft_run(run_train, l31_dir, synth_dir):
    """`train.py +experiment=demo_sft model=tiny_llama31`, 60 steps (~20 s): its turns end with <|eot_id|>."""
    proc = run_train("+experiment=demo_sft", "model=tiny_llama31", "trainer.max_steps=60", *QUIET)
    ok(proc)
    return proc.run_dir / "hf_model"


def rollout_rows(run_dir: Path) -> list[dict]:
    import csv

    return [r for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("rollout/truncated_frac")]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_grpo_rollouts_of_the_sft_miniature_end_their_turns(run_train, sft_run, sampler):
    """GRPO from the SFT run with each sampler: rollouts end at <|eot_id|> (nothing truncated at
    max_tokens=48; without <|eot_id|> in the stop set every one ran to 48)."""
    proc = run_train("+experiment=grpo", "model=tiny_llama31", f"model.path={sft_run}", f"sampler={sampler}",
                     "trainer.max_steps=2", "data.batch_size=4", "algorithm.num_generations=2",
                     "sampler.max_tokens=48", "data.synth.tasks=[math,mcqa]", *QUIET)
    ok(proc)
    rows = rollout_rows(proc.run_dir)
    assert len(rows) == 2
    for r in rows:
        assert float(r["rollout/truncated_frac"]) <= 0.25, r
        assert float(r["rollout/completion_len_mean"]) < 40, r
