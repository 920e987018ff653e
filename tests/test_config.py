"""Every option of every config group composes and instantiates.

Options are found on disk (conf/<group>/*.yaml, nested groups too), so groups and options added
later are covered without touching this file. Each option is composed on the root that uses its
group (train.yaml, or eval.yaml for eval-only groups), on top of the experiment it belongs to
(+experiment=grpo for the GRPO pieces, +experiment=sft otherwise), and then the part it configures
is built the way `train.py` builds it:

  model        resolve_model_path + load (tiny family); hub models: keys and hub id only (no network)
  data         the datamodule with the tiny tokenizer, set up, one training batch drawn
  algorithm    the LightningModule via secreason.run.build_module (+ its optimizer and scheduler)
  trainer      the Trainer with the configured callbacks and loggers (gpu → cpu when no GPU here)
  logger / callbacks / sampler   every `_target_` instantiated
  GRPO pieces (rewards, format_penalty, loss_agg, advantage, …)   the GRPO module that consumes them
  global packages (experiment, debug, hparams_search)   every part of the composed config
  anything else   every `_target_` node in it, plus the algorithm module that may consume it
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from secreason.models import DTYPES, resolve_model_path
from secreason.run import build_model, build_module, check_trainer_for, instantiate_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
ROOTS = [r for r in ("train", "eval") if (CONF / f"{r}.yaml").is_file()]
HAS_GRPO = (CONF / "experiment" / "grpo.yaml").is_file()
GRPO_GROUPS = {"sampler", "rewards", "format_penalty", "loss_agg", "advantage"}
GLOBAL = "# @package _global_"
HUB_MODELS = {"foundation_sec_8b": "fdtn-ai/Foundation-Sec-8B", "llama31_8b": "meta-llama/Llama-3.1-8B"}


def all_options() -> list[tuple[str, str]]:
    out = []
    for d in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = d.relative_to(CONF).as_posix()
        out += [(group, f.stem) for f in sorted(d.glob("*.yaml"))]
    return out


def is_global(group: str, option: str) -> bool:
    head = (CONF / group / f"{option}.yaml").read_text().splitlines()[:5]
    return any(line.strip() == GLOBAL for line in head)


def raw_compose(root: str, overrides: list[str], hydra_cfg: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(root, overrides=overrides, return_hydra_config=hydra_cfg)


_CHOICES: dict[str, set[str]] = {}


def root_groups(root: str) -> set[str]:
    """Groups in a root config's defaults list."""
    if root not in _CHOICES:
        cfg = raw_compose(root, [f"paths.root_dir={REPO}", "paths.output_dir=/tmp"], hydra_cfg=True)
        _CHOICES[root] = {k for k in cfg.hydra.runtime.choices if not k.startswith("hydra/")}
    return _CHOICES[root]


def root_for(group: str) -> str:
    for root in ROOTS:
        if group in root_groups(root):
            return root
    return "train"


def base_experiment(group: str, option: str) -> str:
    grpo = group in GRPO_GROUPS or (group == "algorithm" and option != "sft") or (
        group == "data" and option.startswith("rl"))
    return "grpo" if grpo and HAS_GRPO else "sft"


def overrides_for(group: str, option: str) -> tuple[str, list[str]]:
    root = root_for(group)
    if group == "experiment":
        return root, [f"+experiment={option}"]
    # Hydra's own groups (hydra/launcher, ...) always have a default to override
    choice = f"{group}={option}" if group in root_groups(root) or group.startswith("hydra/") else f"+{group}={option}"
    if root != "train":
        return root, [choice]
    return root, [f"+experiment={base_experiment(group, option)}", choice]


# --- part builders ----------------------------------------------------------------------------------

def targets(node) -> list:
    """The top-most config nodes with a `_target_` inside `node`."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            return [node]
        return [t for k in node for t in targets(node._get_node(k))]
    if OmegaConf.is_list(node):
        return [t for item in node for t in targets(item)]
    return []


class Parts:
    """Builds the parts of one composed config; the tiny model stands in for a hub model."""

    _data_done: set[str] = set()  # data configs already set up this session (setup is seconds)

    def __init__(self, cfg: DictConfig, tiny_model_dir: Path, mini_data: Path):
        self.cfg, self.tiny_model_dir, self.mini_data = cfg, tiny_model_dir, mini_data
        self._model = None

    def is_hub_model(self) -> bool:
        path = self.cfg.model.get("path")
        return bool(path) and not Path(str(path)).expanduser().exists()

    def model_and_tokenizer(self):
        if self._model is None:
            if self.is_hub_model():
                cfg = copy.deepcopy(self.cfg)
                cfg.model.path = str(self.tiny_model_dir)
                cfg.model.dtype, cfg.model.quantization, cfg.model.gradient_checkpointing = "float32", None, False
                _, model, tok = build_model(cfg)
            else:
                _, model, tok = build_model(self.cfg)
            self._model = (model, tok)
        return self._model

    def model(self):
        m = self.cfg.model
        for key in ("name", "path", "dtype", "attn_implementation", "gradient_checkpointing", "quantization", "lora"):
            assert key in m, f"model config lacks {key}"
        assert m.dtype in DTYPES
        if self.is_hub_model():
            path = str(m.path)
            assert path.count("/") == 1, path
            assert resolve_model_path(m, self.cfg.paths.cache_dir) == path  # a hub id, not looked up here
            if m.name in HUB_MODELS:
                assert path == HUB_MODELS[m.name]
            return
        model, tok = self.model_and_tokenizer()
        path = resolve_model_path(m, self.cfg.paths.cache_dir)
        assert (Path(path) / "config.json").is_file()
        assert model.dtype == DTYPES[m.dtype]
        assert tok.chat_template and tok.pad_token_id is not None
        out = model(input_ids=torch.tensor([[1, 2, 3]]))
        assert out.logits.shape[-1] == len(tok)

    def data(self):
        _, tok = self.model_and_tokenizer()
        data_cfg = self.cfg.data
        if OmegaConf.is_missing(data_cfg, "path") or not (data_cfg.get("path") or data_cfg.get("synth")):
            data_cfg = copy.deepcopy(data_cfg)
            data_cfg.path = str(self.mini_data)
        dm = instantiate(data_cfg, tokenizer=tok, _convert_="partial")
        assert isinstance(dm, L.LightningDataModule)
        key = OmegaConf.to_yaml(data_cfg, resolve=True)
        if key in Parts._data_done:
            return dm
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch is not None and len(batch) > 0
        if "labels" in batch:
            assert (batch["labels"] != -100).any()
        Parts._data_done.add(key)
        return dm

    def algorithm(self):
        model, tok = self.model_and_tokenizer()
        module = build_module(self.cfg, model, tok)
        check_trainer_for(type(module), self.cfg.trainer)
        assert isinstance(module, L.LightningModule)
        algo = self.cfg.algorithm
        if "optim" in algo:
            from secreason.optim import build_optimizer, build_scheduler

            opt = build_optimizer(module.parameters(), **OmegaConf.to_container(algo.optim, resolve=True))
            if "scheduler" in algo:
                build_scheduler(opt, 100, OmegaConf.to_container(algo.scheduler, resolve=True))
        return module

    def callbacks(self):
        cbs = instantiate_dict(self.cfg.get("callbacks"))
        assert all(isinstance(c, L.Callback) for c in cbs)
        return cbs

    def logger(self):
        loggers = instantiate_dict(self.cfg.get("logger"))
        assert all(isinstance(lg, L.pytorch.loggers.Logger) for lg in loggers)
        return loggers

    def trainer(self):
        tcfg = self.cfg.trainer
        kwargs = {}
        if tcfg.get("accelerator") == "gpu" and not torch.cuda.is_available():
            kwargs["accelerator"] = "cpu"  # the rest of the config is still the gpu one
        trainer = instantiate(tcfg, callbacks=self.callbacks(), logger=self.logger() or False, **kwargs)
        assert isinstance(trainer, L.Trainer)
        return trainer

    def sampler(self):
        if self.cfg.get("sampler") is None:
            return None
        sampler = instantiate(self.cfg.sampler)
        assert isinstance(sampler, L.Callback)
        return sampler

    def paths(self):
        p = self.cfg.paths
        assert Path(p.root_dir) == REPO
        assert p.cache_dir == os.environ["SECREASON_CACHE"]
        assert p.data_dir == os.environ.get("SECREASON_DATA_DIR")  # no default: a clone has no benchmark data
        for key in p:
            assert p[key] or key == "data_dir", key

    def generic(self, group: str):
        node = OmegaConf.select(self.cfg, group.replace("/", "."))
        assert node is not None, f"{group} left nothing in the config"
        objs = [instantiate(t, _convert_="partial") for t in targets(node)]
        return objs

    def everything(self):
        self.model()
        self.data()
        self.algorithm()
        self.trainer()
        self.sampler()


@pytest.fixture(scope="module")
def mini_data(synth_dir, tmp_path_factory) -> Path:
    """A dir with the first 48 rows of every split of the synthetic set: fits any `data.path=???`."""
    d = tmp_path_factory.mktemp("mini_data")
    for f in synth_dir.glob("*.jsonl"):
        (d / f.name).write_text("\n".join(f.read_text().splitlines()[:48]) + "\n")
    return d


@pytest.fixture
def composed(tmp_path):
    def _compose(root: str, overrides: list[str], hydra_cfg: bool = True) -> DictConfig:
        cfg = raw_compose(root, [f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", *overrides], hydra_cfg)
        if hydra_cfg:
            HydraConfig.instance().set_config(cfg)
        return cfg

    return _compose


def build_group(cfg: DictConfig, group: str, option: str, parts: Parts) -> None:
    top = group.split("/")[0]
    if is_global(group, option):
        parts.everything()
    elif top == "model":
        parts.model()
    elif top == "data":
        parts.data()
    elif top == "algorithm":
        parts.algorithm()
    elif top == "trainer":
        parts.trainer()
    elif top == "logger":
        parts.logger()
    elif top == "callbacks":
        parts.callbacks()
    elif top == "sampler":
        parts.generic(group)
        parts.sampler()
    elif top == "paths":
        parts.paths()
    elif top == "hydra":
        assert cfg.hydra.run.dir and cfg.hydra.sweep.dir
    elif root_for(group) == "eval":
        parts.generic(group)
        from secreason.eval import runner

        if cfg.data_dir is None or not Path(cfg.data_dir).is_dir():
            pytest.skip(f"no benchmark data at data_dir={cfg.data_dir} (set SECREASON_DATA_DIR)")
        runner.validate(cfg)
    else:  # GRPO pieces and groups this file does not know: their targets + the module using them
        parts.generic(group)
        parts.algorithm()


@pytest.mark.parametrize("group,option", all_options(), ids=[f"{g}={o}" for g, o in all_options()])
def test_option_composes_and_instantiates(group, option, composed, tiny_model_dir, mini_data):
    root, overrides = overrides_for(group, option)
    cfg = composed(root, overrides)
    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(body, resolve=True, throw_on_missing=False)  # every interpolation resolves
    if root == "train":
        assert cfg.hydra.runtime.choices.get(group.replace("/", "."), cfg.hydra.runtime.choices.get(group)) == option
    build_group(cfg, group, option, Parts(cfg, tiny_model_dir, mini_data))


def test_every_group_has_options():
    groups = {g for g, _ in all_options()}
    for root in ROOTS:
        for group in root_groups(root):
            if group not in ("debug", "hparams_search"):
                assert group in groups, f"{root}.yaml uses group {group} but conf/{group}/ has no options"
    assert {"model", "data", "trainer", "logger", "callbacks", "paths", "hydra", "algorithm", "debug",
            "hparams_search", "experiment"} <= groups


# --- experiments and precedence ---------------------------------------------------------------------

def test_experiment_is_not_in_root_defaults(compose_train):
    cfg = compose_train(return_hydra_config=True)
    assert "experiment" not in cfg.hydra.runtime.choices
    assert cfg.algorithm.name == "sft"
    assert cfg.hydra.runtime.choices["debug"] is None and cfg.hydra.runtime.choices["hparams_search"] is None


def test_plus_experiment_sft_composes(composed):
    cfg = composed("train", ["+experiment=sft"])
    assert cfg.task_name == "sft" and cfg.algorithm.name == "sft"
    assert cfg.algorithm.optim.lr == 1e-3  # the experiment's value beats the group's 2e-5
    assert cfg.hydra.runtime.choices["experiment"] == "sft"


@pytest.mark.skipif(not HAS_GRPO, reason="no conf/experiment/grpo.yaml yet")
def test_plus_experiment_grpo_composes(composed):
    cfg = composed("train", ["+experiment=grpo"])
    assert cfg.algorithm.name == "grpo" and cfg.task_name == "grpo"


@pytest.mark.parametrize("overrides,check", [
    (["+experiment=sft", "trainer=gpu"], lambda c: c.trainer.accelerator == "gpu"),
    (["+experiment=sft", "logger=csv"], lambda c: list(c.logger) == ["csv"]),
    (["+experiment=sft", "data=jsonl"], lambda c: c.data.path is None and c.data.synth is None and c.data.max_length == 4096),
    (["+experiment=sft", "model=small"], lambda c: c.model.name == "small"),
    (["trainer=gpu", "+experiment=sft"], lambda c: c.trainer.accelerator == "gpu"),  # order does not matter
    (["+experiment=sft", "algorithm.optim.lr=0.5"], lambda c: c.algorithm.optim.lr == 0.5),
])
def test_command_line_beats_experiment(composed, overrides, check):
    assert check(composed("train", overrides))


@pytest.mark.skipif(not HAS_GRPO, reason="no conf/experiment/grpo.yaml yet")
def test_command_line_algorithm_beats_experiment_override(composed):
    cfg = composed("train", ["+experiment=sft", "algorithm=grpo"])  # sft.yaml says override /algorithm: sft
    assert cfg.algorithm.name == "grpo" and cfg.hydra.runtime.choices["algorithm"] == "grpo"
    cfg = composed("train", ["+experiment=grpo", "algorithm=sft", "data=synth"])
    assert cfg.algorithm.name == "sft" and cfg.data._target_.endswith("SFTDataModule")


def test_sft_foundation_sec_8b_experiment(composed, tiny_model_dir, mini_data):
    """The report's SFT (§3.1): 3 epochs, cosine, peak lr 2e-5, on Foundation-Sec-8B, bf16-mixed on fp32 weights, the report mix."""
    from secreason.data.sft import REPORT_MIX

    cfg = composed("train", ["+experiment=sft_foundation_sec_8b"])
    ch = cfg.hydra.runtime.choices
    assert (ch["model"], ch["trainer"], ch["data"], ch["algorithm"]) == ("foundation_sec_8b", "gpu", "jsonl", "sft")
    assert cfg.model.path == "fdtn-ai/Foundation-Sec-8B" and cfg.model.dtype == "float32"  # fp32 master weights
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.max_steps == -1
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.algorithm.optim.lr == 2e-5 and cfg.algorithm.scheduler.name == "cosine"
    assert cfg.data.max_length == 4096 and dict(cfg.data.mix) == REPORT_MIX
    assert cfg.data.path is None and cfg.data.synth is None  # the user names their SFT rows
    assert abs(sum(REPORT_MIX.values()) - 1) < 1e-9 and REPORT_MIX["security"] == 0.268
    # everything but the 8B weights builds here (the tiny model stands in)
    Parts(cfg, tiny_model_dir, mini_data).everything()


def test_jsonl_without_path_names_data_path(composed, tokenizer):
    from secreason.data.rows import DataError

    cfg = composed("train", ["+experiment=sft", "data=jsonl"])
    dm = instantiate(cfg.data, tokenizer=tokenizer, _convert_="partial")
    with pytest.raises(DataError, match=r"data\.path"):
        dm.setup("fit")


# --- model options ----------------------------------------------------------------------------------

def test_lora_option_wraps_with_peft(composed):
    cfg = composed("train", ["+experiment=sft", "model.lora.r=4"])
    _, model, _ = build_model(cfg)
    assert hasattr(model, "peft_config") and model.peft_config["default"].r == 4
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_nf4_option_builds_qlora(composed):
    cfg = composed("train", ["+experiment=sft", "model.quantization=nf4", "model.lora.r=4"])
    _, model, _ = build_model(cfg)
    assert hasattr(model, "peft_config")
    assert getattr(model, "is_loaded_in_4bit", False) or model.base_model.model.is_loaded_in_4bit


def test_nf4_without_lora_names_the_key(composed):
    cfg = composed("train", ["+experiment=sft", "model.quantization=nf4"])
    with pytest.raises(ValueError, match=r"model\.quantization"):
        build_model(cfg)


def test_adamw8bit_option(composed, tiny_model_dir, mini_data):
    cfg = composed("train", ["+experiment=sft", "algorithm.optim.name=adamw8bit"])
    module = Parts(cfg, tiny_model_dir, mini_data).algorithm()
    import bitsandbytes as bnb
    from secreason.optim import build_optimizer

    assert isinstance(build_optimizer(module.parameters(), **cfg.algorithm.optim), bnb.optim.AdamW8bit)


# --- construction: one path for every module, each value checked once, one think_tags key -------------

ALGORITHMS = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_build_module_only_instantiates_the_algorithm_module_node(composed, algorithm):
    """run.build_module is the same one line for SFT and GRPO: whatever `algorithm.module` names is
    called with the model and tokenizer, and nothing is added or re-cast on the way."""
    import inspect

    from hydra.utils import get_class

    cfg = composed("train", [f"+experiment={base_experiment('algorithm', algorithm)}", f"algorithm={algorithm}"])
    node = cfg.algorithm.module
    args = {k for k in node if not k.startswith("_")}
    params = inspect.signature(get_class(node._target_)).parameters
    assert args <= set(params), f"{algorithm}: {args - set(params)} are not {node._target_} arguments"
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= args | {"model", "tokenizer"}, algorithm
    node._target_ = "builtins.dict"  # a stand-in that returns exactly what it was called with
    built = build_module(cfg, "MODEL", "TOKENIZER")
    assert set(built) == args | {"model", "tokenizer"}
    assert (built["model"], built["tokenizer"]) == ("MODEL", "TOKENIZER")
    plain = {k: OmegaConf.to_container(node, resolve=True)[k] for k in args if k != "reward_set"}
    assert {k: built[k] for k in plain} == plain


def test_grpo_module_takes_the_reward_set_and_keys_of_its_groups(composed, tiny_model_dir, mini_data):
    from secreason.rewards.format_penalty import RequireThink
    from secreason.rewards.sets import RewardSet

    cfg = composed("train", ["+experiment=grpo", "rewards=mcqa_only", "format_penalty=require_think",
                             "loss_agg=token_mean", "advantage=rloo", "sampler.max_tokens=17"])
    module = Parts(cfg, tiny_model_dir, mini_data).algorithm()
    assert isinstance(module.reward_set, RewardSet) and list(module.reward_set.rewards) == ["mcqa"]
    assert isinstance(module.reward_set.format_penalty, RequireThink)
    from secreason.algos import ADVANTAGES, LOSS_AGG

    assert module.loss_agg is LOSS_AGG.get("token_mean") and module.advantage_fn is ADVANTAGES.get("rloo")
    assert module.max_len == 17


GRPO_BAD = [
    ("algorithm.kl.beta=-1", "algorithm.kl.beta=-1.0: must be ≥ 0"),
    ("algorithm.kl.estimator=k9", "algorithm.kl.estimator='k9' unknown; choose one of: k1, k2, k3"),
    ("algorithm.num_generations=1", "algorithm.num_generations=1: must be ≥ 2"),
    ("algorithm.updates_per_batch=0", "algorithm.updates_per_batch=0: must be ≥ 1"),
    ("algorithm.micro_batch_size=0", "algorithm.micro_batch_size=0: must be ≥ 1"),
    ("algorithm.clip_eps_low=1.5", "algorithm.clip_eps_low=1.5: must be in [0, 1)"),
    ("algorithm.clip_eps_high=-0.1", "algorithm.clip_eps_high=-0.1: must be ≥ 0"),
    ("algorithm.is_cap=0", "algorithm.is_cap=0: must be > 0 or null"),
    ("algorithm.old_logprobs=cached", "algorithm.old_logprobs='cached': choose one of: recompute, sampler"),
    ("algorithm.overlong.mode=drop", "algorithm.overlong.mode='drop' unknown; choose one of: mask, none, soft_penalty"),
    ("algorithm.optim.name=adam9", "algorithm.optim.name='adam9' unknown; choose one of: adamw, adamw8bit, sgd"),
    ("algorithm.optim.lr=0", "algorithm.optim.lr=0: must be > 0"),
    ("algorithm.scheduler.name=linear", "algorithm.scheduler.name='linear' unknown; choose one of: constant, cosine"),
]


@pytest.mark.parametrize("override,message", GRPO_BAD, ids=[o.split("=")[0] for o, _ in GRPO_BAD])
def test_bad_grpo_value_fails_when_the_module_is_built(composed, tiny_model, tokenizer, override, message):
    from secreason.errors import ConfigError

    cfg = composed("train", ["+experiment=grpo", override])
    with pytest.raises(ConfigError) as e:
        build_module(cfg, tiny_model, tokenizer)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("override", ["algorithm.optim.name=adam9", "algorithm.scheduler.name=linear"])
def test_bad_sft_optimizer_fails_when_the_module_is_built(composed, tiny_model, tokenizer, override):
    from secreason.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]}="):
        build_module(composed("train", ["+experiment=sft", override]), tiny_model, tokenizer)


@pytest.mark.parametrize("override,message", [
    ("trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val=1.0: GRPOModule steps its optimizer by hand"),
    ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2: GRPOModule steps its optimizer by hand"),
])
def test_trainer_settings_of_automatic_optimization_fail_with_grpo_only(composed, tiny_model, tokenizer, override,
                                                                         message):
    from secreason.errors import ConfigError

    grpo = composed("train", ["+experiment=grpo", override])
    with pytest.raises(ConfigError) as e:
        check_trainer_for(type(build_module(grpo, tiny_model, tokenizer)), grpo.trainer)
    assert str(e.value).startswith(message)
    sft = composed("train", ["+experiment=sft", override])
    check_trainer_for(type(build_module(sft, tiny_model, tokenizer)), sft.trainer)  # SFT: Lightning's own settings


THINK_TAGS = ("<think>", "</think>")


def yaml_strings(node, path: str = ""):
    """(dotted key, string) of every string value in a loaded YAML tree (comments are not values)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from yaml_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from yaml_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_think_tags_are_spelled_only_in_the_root_configs():
    import yaml

    spelled = []
    for f in sorted(CONF.rglob("*.yaml")):
        for key, value in yaml_strings(yaml.safe_load(f.read_text())):
            if any(tag in value for tag in THINK_TAGS):
                spelled.append(f"{f.relative_to(CONF)}:{key}")
    assert sorted(spelled) == ["reasoning/think.yaml:think_tags[0]", "reasoning/think.yaml:think_tags[1]"]


def test_one_think_tags_override_reaches_every_user(composed, tiny_model, tokenizer):
    """`think_tags=[…]` changes the data, every reward, the format penalty, the module and the
    in-training eval at once."""
    tags = ["<r>", "</r>"]
    cfg = composed("train", ["+experiment=grpo", "callbacks=with_eval", "think_tags=[\"<r>\",\"</r>\"]"])
    body = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    users = [key for key, _ in yaml_strings(body) if key.endswith(("think_tags[0]", "think_tags[1]"))]
    assert {"data.think_tags[0]", "rewards.rewards.mcqa.fn.think_tags[0]", "format_penalty.think_tags[0]",
            "algorithm.module.think_tags[0]", "callbacks.in_training_eval.think_tags[0]"} <= set(users) or users
    assert all(OmegaConf.select(cfg, key.replace("[0]", "").replace("[1]", ""))[0] == tags[0] for key in users)
    module = build_module(cfg, tiny_model, tokenizer)
    assert module.think_tags == tuple(tags) and module.reward_set.format_penalty.think_tags == tuple(tags)
    assert all(r.fn.think_tags == tuple(tags) for r in module.reward_set.rewards.values())


# --- paths, hydra, sweeps ---------------------------------------------------------------------------

def test_paths_resolve_from_hydra_runtime(tmp_path, monkeypatch):
    """Without the test's path overrides, paths come from the Hydra runtime and the env vars."""
    cfg = raw_compose("train", [], hydra_cfg=True)
    cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    assert cfg.paths.root_dir == cfg.hydra.runtime.cwd
    assert cfg.paths.output_dir == str(tmp_path)
    assert cfg.paths.cache_dir == os.environ["SECREASON_CACHE"]
    monkeypatch.delenv("SECREASON_CACHE")
    assert cfg.paths.cache_dir == f"{cfg.hydra.runtime.cwd}/.cache"


def test_hparams_search_sweeps_real_keys(composed):
    """Every hparams_search option sweeps keys that exist in its experiment's config, over values that
    compose: each value of a list, the bounds of an Optuna interval, a fixed (unswept) override as is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parser = OverridesParser.create()
    for option in sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")):
        experiment = "+experiment=grpo" if option.startswith("grpo") else "+experiment=sft"
        cfg = composed("train", [experiment, f"hparams_search={option}"])
        assert cfg.hydra.mode.name == "MULTIRUN"
        params = cfg.hydra.sweeper.params
        assert params, option
        swept = 0
        for key, values in params.items():
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{option} sweeps {key}, not in the config"
            override = parser.parse_override(f"{key}={values}")
            if isinstance(override.value(), IntervalSweep):
                choices = [str(override.value().start), str(override.value().end)]
            else:
                choices = str(values).split(",")
            swept += len(choices) >= 2
            for v in choices:  # every swept value is a valid override
                composed("train", [experiment, f"{key}={v.strip()}"])
        assert swept, f"{option} sweeps nothing"