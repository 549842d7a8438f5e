"""The config schema: every key jaxpref reads, declared once, with its default, meaning and valid range.

Config files in ``configs/`` start from :func:`base_config` and override what they need; the command
line overrides further (``--config.train.learning_rate=5e-7``). Code reads keys directly
(``cfg.train.learning_rate``) and never restates a default. :func:`validate` checks a finished config
against this schema: an unknown key (with the nearest valid name), a value of the wrong type or outside
its range is one :class:`jaxpref.errors.ConfigError` line. :func:`check_resume` compares a run's config
with the one its workdir was started with.
"""

from __future__ import annotations

import difflib
import json
import math

import ml_collections

from jaxpref.errors import ConfigError


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (what ``--config=path`` loads), for tests and derived configs."""
    import importlib.util
    import os

    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"jaxpref_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.algorithm = "dpo"  # dpo | ropo | reward_conditioned | apo | reward_model
    c.seed = 0  # seeds model init, data order, eval split, label flips and sampling

    c.model = ml_collections.ConfigDict()
    c.model.hf_dir = ""  # local Hugging Face model directory (config.json + safetensors) or a Hub id in the local cache; wins over preset
    c.model.preset = ""  # or a jaxpref.models.PRESETS name, randomly initialised from `seed`
    c.model.overrides = ml_collections.ConfigDict()  # ModelConfig fields replacing the preset's (e.g. vocab_size)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # parameter dtype: float32 | bfloat16
    c.model.remat_policy = "none"  # none | full | dots | dots_with_no_batch_dims

    c.tokenizer = ml_collections.ConfigDict()
    # "" = the model's own (model.hf_dir); "mistral" / "mistral:v3" (shipped, offline), a HF tokenizer
    # directory, a .model file, or "int:V" (the gold-reward task's integer tokens)
    c.tokenizer.path = ""
    c.tokenizer.chat_template = ""  # "" = the tokenizer's own; else Jinja text or a .jinja file replacing it

    c.data = ml_collections.ConfigDict()
    # "hh" = the shipped Anthropic HH sample; or a .jsonl(.gz)/.json/.csv/.parquet/.arrow file, a save_to_disk
    # directory ("dir:split" picks a split; default train) or a Hub dataset name found in the local cache
    c.data.train_path = "hh"
    c.data.format = "auto"  # auto | explicit | implicit | conversational
    c.data.skip_invalid = True  # skip (count, report) bad rows instead of stopping
    c.data.max_rows = ml_collections.FieldReference(None, field_type=int)  # use only the first N valid rows
    c.data.eval_path = ""  # held-out pairs; else the train source's "test" split if it has one; else eval_fraction
    c.data.eval_fraction = 0.0  # seeded fraction of train rows held out for evaluation
    c.data.flip_rate = 0.0  # inject symmetric label noise into the train rows (ground truth recorded)
    c.data.max_length = 512  # prompt + response tokens (keep_start truncation, as TRL 1.16)
    c.data.max_prompt_length = 256  # prompt tokens (truncation per prompt_truncation)
    c.data.prompt_truncation = "keep_end"  # keep_end | keep_start
    c.data.buckets = (128, 256, 512)  # padded lengths; XLA compiles one program per bucket
    c.data.sort_window = 8  # sort by length within windows of this many batches (less padding); 0 = off
    c.data.packing = False  # pack whole pairs into rows of the largest bucket
    c.data.rows_per_batch = ml_collections.FieldReference(None, field_type=int)  # packed rows per batch

    c.train = ml_collections.ConfigDict()
    c.train.pairs_per_batch = 8  # global pairs per micro-batch (multiple of mesh data x fsdp)
    c.train.grad_accum_steps = 1  # micro-batches per optimizer step (exact accumulation)
    c.train.num_steps = 0  # optimizer steps; 0 = num_epochs over the data
    c.train.num_epochs = 1.0
    c.train.learning_rate = 5e-7
    c.train.schedule = "cosine"  # cosine | linear | constant (after warmup)
    c.train.warmup_steps = 0  # or warmup_ratio of the total steps
    c.train.warmup_ratio = 0.1
    c.train.weight_decay = 0.0
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.999
    c.train.adam_eps = 1e-8
    c.train.max_grad_norm = 1.0  # global-norm clipping; 0 = off
    c.train.vocab_chunk = 8192  # vocabulary chunk of the fused LM-head log-softmax
    # sequences per call of the KV-cache sampler (ROPO's rejection sampling, APO's samples); bounds its KV cache
    c.train.sample_batch_size = 256
    c.train.log_every = 1
    c.train.eval_every = 0  # steps between evaluations on the eval split; 0 = only at the end
    c.train.save_every = 0  # steps between checkpoints (always one at the end); 0 = end only
    c.train.keep_checkpoints = 2
    c.train.async_checkpointing = True

    c.loss = ml_collections.ConfigDict()
    c.loss.type = "sigmoid"  # any jaxpref.losses.DPO_LOSS_TYPES name (or a list, with loss_weights)
    c.loss.loss_weights = ()
    c.loss.beta = 0.1
    c.loss.label_smoothing = 0.0  # cDPO / robust DPO / EXO epsilon
    c.loss.f_divergence_type = "reverse_kl"
    c.loss.f_alpha_divergence_coef = 1.0
    c.loss.discopop_tau = 0.05
    c.loss.reference_free = False

    c.lora = lora_config()

    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "frozen"  # frozen (reference forward every step) | cached (precomputed once, on disk)
    c.reference.cache_dir = ""  # default <workdir>/ref_cache; per host, keyed by a fingerprint

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1  # pure data parallelism
    c.mesh.fsdp = -1  # sharded data parallelism (-1 = all remaining devices)
    c.mesh.tensor = 1  # tensor parallelism over heads / MLP / vocab
    c.mesh.num_devices = 0  # use only the first N local devices (single-host tests/debugging); 0 = all

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = "auto"  # auto | true | false (see jaxpref.train.runtime.maybe_initialize_distributed)
    c.distributed.coordinator_address = ""  # host:port of process 0, for explicit multi-process runs
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.cpu_collectives = ""  # "gloo" for multi-process CPU runs

    c.ropo = ropo_config()
    c.reward_conditioned = reward_conditioned_config()
    c.reward_model = reward_model_config(c.train)
    c.apo = apo_config()
    c.task = gold_task_config()

    c.export = ml_collections.ConfigDict()
    c.export.hf = True  # write <workdir>/hf_export as a Hugging Face directory at the end
    return c


def lora_config() -> ml_collections.ConfigDict:
    """``config.lora``: low-rank adapters (see ``jaxpref/models/lora.py``). With ``rank > 0`` only the adapters
    train (plus a reward model's scalar head, ``train_score_head``); the base weights stay frozen in
    ``model.param_dtype`` and, with adapters off, are the DPO/ROPO reference -- one copy of the weights.
    Checkpoints hold the adapters and their optimizer state; ``hf_export/`` is the merged model and
    ``hf_adapter/`` a PEFT adapter directory. Names and defaults are PEFT's ``LoraConfig``'s."""
    lo = ml_collections.ConfigDict()
    lo.rank = 0  # r; 0 = off (full fine-tuning: every weight trains)
    lo.alpha = 8.0  # lora_alpha: the update is scaled by alpha / rank
    lo.dropout = 0.0  # lora_dropout on the adapter input, during training steps only
    # PEFT module names among q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (PEFT's Llama default: q, v)
    lo.target_modules = ("q_proj", "v_proj")
    lo.train_score_head = True  # reward models: the scalar head trains with the adapters (False: it stays at its init)
    return lo


def ropo_config() -> ml_collections.ConfigDict:
    """``config.ropo``: read only when ``algorithm == "ropo"``; see ``jaxpref/algorithms/ropo.py``.

    The paper leaves the loop's details open; these defaults are jaxpref's documented choices."""
    r = ml_collections.ConfigDict()
    r.rounds = 2  # theta-steps; a w-step (filter + rejection sampling) runs between consecutive ones
    r.filter_ratio = 0.2  # rho: fraction of the current pairs dropped at each w-step
    r.alpha = 14.0  # trade-off of the noise-aware term (ablation: 6, 14, 30)
    r.train_loss = "ropo"  # ropo | dpo (ablation)
    r.filter_loss = "ropo"  # ropo | dpo: the per-pair loss that ranks pairs in the w-step
    r.rejection_sampling = True  # refill discarded prompts with new pairs from the current policy
    r.num_candidates = 4  # K samples per discarded prompt
    r.include_originals = True  # the two original responses are candidates too
    r.temperature = 1.0
    r.top_p = 1.0
    r.max_new_tokens = 128
    r.restart_from_initial = False  # restart each theta-step from pi_0 instead of the previous round's policy
    return r


def reward_conditioned_config() -> ml_collections.ConfigDict:
    """``config.reward_conditioned``: read only when ``algorithm == "reward_conditioned"``; see
    ``jaxpref/algorithms/reward_conditioned.py`` and ``jaxpref/data/relabel.py``."""
    from jaxpref.data.relabel import DEFAULT_GOAL_TEMPLATE

    r = ml_collections.ConfigDict()
    r.template = DEFAULT_GOAL_TEMPLATE  # goal text; {score}, {min}, {max} are filled in (8 not 8.0)
    r.ties = "keep"  # keep (authors' behaviour: two contradicting pairs -> "no preference") | drop | error
    r.half = False  # keep a seeded random half of the 2N relabelled pairs (the paper's same-size ablation)
    # which relabelled pairs train: both (the method) | goal_chosen (only goal = r_w, original order) |
    # goal_rejected (only goal = r_l, swapped): the two halves as controls
    r.pairs = "both"
    r.scale_min = 1.0  # the score scale; scores outside it are a DataError
    r.scale_max = 10.0
    r.inference_goal = ml_collections.FieldReference(None, field_type=float)  # goal at inference; None = scale_max
    r.system_role = "auto"  # goal as a system message: auto (if the chat template has one) | True | False
    r.scores = "data"  # data (score_chosen/score_rejected) | implicit (a DPO policy's implicit reward, rank-scaled)
    r.implicit_policy_dir = ""  # for scores=implicit: a trained DPO policy (HF dir); empty = train one first
    return r


def reward_model_config(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.reward_model``: the reward model of ``algorithm = "reward_model"`` and of APO; see
    ``jaxpref/algorithms/reward_model.py``. ``train`` has every key of ``config.train``; a key left ``None``
    takes the policy's value at run time (so ``--config.train.pairs_per_batch`` applies to both), a key set
    here is the RM's own. The RM's learning rate and epochs default to the APO paper's RM recipe."""
    r = ml_collections.ConfigDict()
    r.train = ml_collections.ConfigDict(
        {k: ml_collections.FieldReference(None, field_type=type(v)) for k, v in train.items()})
    r.train.learning_rate = 1e-6  # APO's RM lr
    r.train.num_epochs = 1.0
    r.margin = 0.0  # Bradley-Terry margin on human pairs (0 = none)
    r.label_smoothing = 0.0
    r.head_seed = 0  # seed of the fresh scalar head
    return r


def resolved_train_section(cfg, section: str = "train") -> ml_collections.ConfigDict:
    """``config.train`` (``section="train"``) or the reward model's: ``config.train`` overlaid with the
    non-``None`` keys of ``config.reward_model.train`` (``section="reward_model"``)."""
    out = cfg.train.copy_and_resolve_references()
    if section == "reward_model":
        for k, v in cfg.reward_model.train.items():
            if v is not None:
                out[k] = v
    elif section != "train":
        raise ValueError(f"unknown train section {section!r}")
    return out


def apo_config() -> ml_collections.ConfigDict:
    """``config.apo``: adversarial preference optimization (Cheng et al. 2023; not TRL's anchored ``apo_zero``);
    see ``jaxpref/algorithms/apo.py``."""
    a = ml_collections.ConfigDict()
    a.rounds = 3
    a.samples_per_prompt = 4  # K: policy samples per prompt, for both the RM's adversarial pairs and best-of-K
    a.rank_weight = 1.0  # c_rank: human-pair Bradley-Terry term (0 = the paper's GAIL-style ablation)
    # c_apo: adversarial (golden vs sample) term; 0 = the base-RM baseline (same compute). 0.1 is the paper's;
    # on the gold-reward task only 1.0 beat the base RM (BENCHMARKS.md)
    a.apo_weight = 0.1
    a.form = "ranking"  # ranking (-log sigma(r_gold - r_sample)) | diff (-(r_gold - r_sample), WGAN-style)
    a.rm_reinit = True  # re-initialise the RM from its base every round (the paper found continuing worse)
    a.policy_update = "rejection_sampling"  # rejection_sampling (SFT on the best of K) | dpo (best vs worst of K)
    a.policy_learning_rates = (5e-6, 2e-6, 9e-7)  # per round (the last repeats); empty = config.train.learning_rate
    a.temperature = 1.2  # sampling for RM and policy data
    a.top_p = 1.0
    a.max_new_tokens = 256
    # False: the adversarial (golden, sample) pairs of round 1 -- samples of the SFT policy -- are reused every
    # round (a control: is the gain the game, or just more golden answers?)
    a.refresh_adversarial = True
    a.golden_field = "golden"  # real data: the row field holding the golden (stronger-model) answer
    a.policy_prompt_fraction = 0.5  # real data: share of the rows whose prompts feed the policy step
    return a


def gold_task_config() -> ml_collections.ConfigDict:
    """``config.task``: which task adapter feeds the algorithm. ``name = ""`` (default) is real data from
    ``config.data``; ``"gold"`` is the gold-reward task of ``jaxpref/tasks/gold.py`` (a tiny policy is SFT-ed,
    its samples are labelled by an exact gold reward, ``data.flip_rate`` flips labels), with these settings."""
    t = ml_collections.ConfigDict()
    t.name = ""  # "" (real data) | "gold"
    t.vocab_size = 32  # PAD, BOS, EOS + 29 content tokens
    t.prompt_length = 6
    t.length_penalty = 0.5
    t.num_sft_prompts = 4096
    t.sft_steps = 1500
    t.num_pair_prompts = 512  # one pair per prompt (fewer if all samples tie)
    t.samples_per_prompt = 4
    t.labeling = "deterministic"  # deterministic | bradley_terry
    t.selection = "random"  # random | best_worst
    t.num_eval_prompts = 256  # test split: held-out prompts (and as many clean pairs) for the final metrics
    # validation split for tuning: prompts and clean pairs drawn apart from the test split (0 = none)
    t.num_val_prompts = 0
    t.eval_split = "test"  # test | validation: the split evaluation reports (tune on validation only)
    t.hidden = 64
    t.layers = 2
    t.goal_tokens = 0  # reward-conditioned DPO: goal-score tokens 1..goal_tokens appended to the vocabulary
    # goal tokens in SFT (half the examples): random (known, meaningless) | score (the response's own goal score)
    t.sft_goals = "random"
    t.num_policy_prompts = 512  # APO: fresh prompts for the policy step
    # APO: the golden answer keeps each ideal token with a probability drawn per prompt from [min, max] (else a
    # distractor/random token, as SFT errors): (1, 1) = the task's exact optimum; e.g. (0.7, 0.95) = good, not optimal
    t.golden_quality = (1.0, 1.0)
    return t


def dpo_7b_config(hf_dir: str, tokenizer_path: str) -> ml_collections.ConfigDict:
    """DPO on a 7B-class checkpoint (bf16, remat, cached reference, FSDP over all devices); used by
    ``configs/dpo_llama2.py`` and ``configs/dpo_mistral.py``, which differ only in the checkpoint."""
    c = base_config()
    c.algorithm = "dpo"
    c.model.hf_dir = hf_dir  # a local HF directory; a clear error if missing
    c.model.dtype = "bfloat16"  # bf16 compute ...
    c.model.param_dtype = "float32"  # ... on float32 master weights (bf16 weights lose updates below half an ulp)
    c.model.remat_policy = "dots_with_no_batch_dims"
    c.tokenizer.path = tokenizer_path
    c.data.train_path = "hh"
    c.data.max_length = 1024
    c.data.max_prompt_length = 512
    c.data.buckets = (256, 512, 768, 1024)
    # 16 pairs x 8 micro-batches = 128 pairs per update. 64 x 2 needed 26.2 GiB per chip on v5e:4x4 (15.75
    # usable); 16 x 8 needs 14.1 GiB there (python -m jaxpref.aot; BENCHMARKS.md has the table)
    c.train.pairs_per_batch = 16
    c.train.grad_accum_steps = 8
    c.train.sample_batch_size = 64  # a 256-sequence sampler call needs 16.2 GiB per chip on v5e:4x4
    c.train.num_epochs = 1.0
    c.train.learning_rate = 5e-7
    c.train.warmup_ratio = 0.1
    c.train.save_every = 200
    c.loss.beta = 0.1
    c.reference.mode = "cached"
    c.mesh.fsdp = -1
    return c


def ropo_7b_config(hf_dir: str, tokenizer_path: str) -> ml_collections.ConfigDict:
    """ROPO on a 7B-class checkpoint (Mistral-7B / Llama-2-7B as in the paper): the DPO 7B setup plus
    ``config.ropo`` (the paper's loop details are open; see ``ropo_config``)."""
    c = dpo_7b_config(hf_dir, tokenizer_path)
    c.algorithm = "ropo"
    c.reference.mode = "frozen"  # rejection-sampled pairs need reference log-probs of new responses
    c.ropo.rounds = 3
    c.ropo.filter_ratio = 0.2
    c.ropo.alpha = 14.0
    c.ropo.max_new_tokens = 256
    c.model.remat_policy = "full"  # the frozen reference's copy and forward: 11.1 GiB per chip on v5e:4x4
    return c


# ---- validation ------------------------------------------------------------------------------------------

ALGORITHM_NAMES = ("dpo", "ropo", "reward_conditioned", "apo", "reward_model")
# jaxpref.models.lora.TARGETS (not imported: the schema stays free of model code)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PROBABILITY = (0.0, 1.0)


def _choice(*names):
    allowed = tuple(str(n).lower() for n in names)
    return (lambda v: str(v).lower() in allowed), f"one of {', '.join(repr(n) for n in names)}"


def _at_least(lo):
    return (lambda v: v is None or v >= lo), f">= {lo}"


def _above(lo):
    return (lambda v: v is not None and math.isfinite(v) and v > lo), f"> {lo} (finite)"


def _in_range(lo, hi, *, hi_open: bool = True):
    if hi_open:
        return (lambda v: lo <= v < hi), f"in [{lo}, {hi})"
    return (lambda v: lo < v <= hi), f"in ({lo}, {hi}]"


# Valid values of every key that has a range or a set of choices (types come from the defaults above).
CONSTRAINTS = {
    "algorithm": _choice(*ALGORITHM_NAMES),
    "seed": _at_least(0),
    "model.dtype": _choice("float32", "bfloat16", "float16"),
    "model.param_dtype": _choice("float32", "bfloat16", "float16"),
    "model.remat_policy": _choice("none", "full", "dots", "dots_with_no_batch_dims"),
    "data.format": _choice("auto", "explicit", "implicit", "conversational"),
    "data.max_rows": _at_least(1),
    "data.eval_fraction": _in_range(0.0, 1.0),
    "data.flip_rate": _in_range(0.0, 1.0),
    "data.max_length": _at_least(2),
    "data.max_prompt_length": _at_least(1),
    "data.prompt_truncation": _choice("keep_end", "keep_start"),
    "data.buckets": ((lambda v: len(v) > 0 and all(int(b) >= 2 for b in v)), "a non-empty list of lengths >= 2"),
    "data.sort_window": _at_least(0),
    "data.rows_per_batch": _at_least(1),
    "train.pairs_per_batch": _at_least(1),
    "train.grad_accum_steps": _at_least(1),
    "train.num_steps": _at_least(0),
    "train.num_epochs": _above(0.0),
    "train.learning_rate": _above(0.0),
    "train.schedule": _choice("cosine", "linear", "constant"),
    "train.warmup_steps": _at_least(0),
    "train.warmup_ratio": _in_range(0.0, 1.0),
    "train.weight_decay": _at_least(0.0),
    "train.adam_b1": _in_range(0.0, 1.0),
    "train.adam_b2": _in_range(0.0, 1.0),
    "train.adam_eps": _above(0.0),
    "train.max_grad_norm": _at_least(0.0),
    "train.vocab_chunk": _at_least(1),
    "train.sample_batch_size": _at_least(1),
    "train.log_every": _at_least(1),
    "train.eval_every": _at_least(0),
    "train.save_every": _at_least(0),
    "train.keep_checkpoints": _at_least(1),
    "loss.beta": _above(0.0),
    "loss.label_smoothing": _in_range(0.0, 1.0),
    "loss.discopop_tau": _above(0.0),
    "reference.mode": _choice("frozen", "cached"),
    "lora.rank": _at_least(0),
    "lora.alpha": _above(0.0),
    "lora.dropout": _in_range(0.0, 1.0),
    "lora.target_modules": ((lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(LORA_TARGETS)),
                            f"a non-empty list of distinct names among {', '.join(LORA_TARGETS)}"),
    "mesh.data": _at_least(1),
    "mesh.fsdp": ((lambda v: v == -1 or v >= 1), "-1 (all remaining devices) or >= 1"),
    "mesh.tensor": _at_least(1),
    "mesh.num_devices": _at_least(0),
    "distributed.initialize": _choice("auto", "true", "false"),
    "ropo.rounds": _at_least(1),
    "ropo.filter_ratio": _in_range(0.0, 1.0),
    "ropo.alpha": _above(0.0),
    "ropo.train_loss": _choice("ropo", "dpo"),
    "ropo.filter_loss": _choice("ropo", "dpo"),
    "ropo.num_candidates": _at_least(1),
    "ropo.temperature": _above(0.0),
    "ropo.top_p": _in_range(0.0, 1.0, hi_open=False),
    "ropo.max_new_tokens": _at_least(1),
    "reward_conditioned.ties": _choice("keep", "drop", "error"),
    "reward_conditioned.system_role": _choice("auto", "true", "false"),
    "reward_conditioned.scores": _choice("data", "implicit"),
    "reward_conditioned.pairs": _choice("both", "goal_chosen", "goal_rejected"),
    "apo.rounds": _at_least(1),
    "apo.samples_per_prompt": _at_least(1),
    "apo.rank_weight": _at_least(0.0),
    "apo.apo_weight": _at_least(0.0),
    "apo.form": _choice("ranking", "diff"),
    "apo.policy_update": _choice("rejection_sampling", "dpo"),
    "apo.temperature": _above(0.0),
    "apo.top_p": _in_range(0.0, 1.0, hi_open=False),
    "apo.max_new_tokens": _at_least(1),
    "apo.policy_prompt_fraction": _in_range(0.0, 1.0, hi_open=False),
    "task.name": _choice("", "gold"),
    "task.eval_split": _choice("test", "validation"),
    "task.sft_goals": _choice("random", "score"),
    "task.num_val_prompts": _at_least(0),
}
# the reward model's train section has the same ranges (None = inherit from config.train)
CONSTRAINTS.update({f"reward_model.{k}": v for k, v in list(CONSTRAINTS.items()) if k.startswith("train.")})
FREE_FORM = ("model.overrides",)  # ModelConfig fields, checked when the model is built


def _keys(cfg, prefix=""):
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict) and path not in FREE_FORM:
            yield from _keys(v, path + ".")
        else:
            yield path, v


def unknown_key_message(path: str, schema: ml_collections.ConfigDict | None = None) -> str | None:
    """``"unknown config key config.<path>; did you mean ...?"`` when ``path`` (dotted, without ``config.``) is
    not a key of the schema, else None."""
    known = dict(_keys(schema or base_config()))
    if path in known or any(path.startswith(f + ".") for f in FREE_FORM):
        return None
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    if path in sections:
        return None
    close = difflib.get_close_matches(path, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean config.{close[0]}?" if close else "; see jaxpref/configs_base.py for every key."
    return f"unknown config key config.{path}{hint}"


def _type_ok(value, expected) -> bool:
    if value is None:
        return True
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (tuple, list):
        return isinstance(value, (tuple, list))
    return isinstance(value, expected)


def _schema_type(schema, path):
    node = schema
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    try:
        return node.get_type(leaf)
    except (AttributeError, KeyError):
        return type(node[leaf])


def validate(cfg, schema: ml_collections.ConfigDict | None = None) -> None:
    """Check ``cfg`` against the schema (:func:`base_config`): every key known, of the declared type, in range.

    Raises :class:`ConfigError` with one line naming the first bad key (``config.train.learnin_rate``), its
    value, what is allowed and, for an unknown key, the nearest valid name."""
    schema = schema or base_config()
    known = dict(_keys(schema))
    for path, value in _keys(cfg):
        if path.startswith(FREE_FORM):
            continue
        if path not in known:
            raise ConfigError(unknown_key_message(path, schema))
        expected = _schema_type(schema, path)
        if expected is not type(None) and not _type_ok(value, expected):
            raise ConfigError(f"config.{path}={value!r} must be of type {expected.__name__}, "
                              f"not {type(value).__name__}.")
        rule = CONSTRAINTS.get(path)
        if rule is not None and value is not None:
            check, allowed = rule
            try:
                ok = bool(check(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"config.{path}={value!r} is not valid; it must be {allowed}.")
    if cfg.data.max_prompt_length >= cfg.data.max_length:
        raise ConfigError(f"config.data.max_prompt_length={cfg.data.max_prompt_length} must be below "
                          f"config.data.max_length={cfg.data.max_length} (responses need room).")
    if max(cfg.data.buckets) < cfg.data.max_length and not cfg.data.packing:
        raise ConfigError(f"config.data.buckets={tuple(cfg.data.buckets)}: the largest bucket must hold "
                          f"config.data.max_length={cfg.data.max_length}.")


# ---- the run's config in its workdir ----------------------------------------------------------------------

# Keys that may change between a run and its resumption without changing what is trained: how long
# (extending num_steps / num_epochs), logging and checkpoint cadence, where things run and what is exported.
# (config.lora.* is not among them: a LoRA checkpoint holds adapters of one rank and set of target modules.)
RESUMABLE_CHANGES = (
    "train.num_steps", "train.num_epochs", "train.log_every", "train.eval_every", "train.save_every",
    "train.keep_checkpoints", "train.async_checkpointing",
    "reward_model.train.num_steps", "reward_model.train.num_epochs", "reward_model.train.log_every",
    "reward_model.train.eval_every", "reward_model.train.save_every", "reward_model.train.keep_checkpoints",
    "reward_model.train.async_checkpointing",
    "data.eval_path", "export.", "distributed.", "mesh.", "reference.cache_dir",
)
CONFIG_FILE = "config.json"


def config_to_dict(cfg) -> dict:
    """The resolved config as plain JSON-able data (tuples become lists)."""
    return json.loads(cfg.to_json_best_effort(sort_keys=True))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts (added and removed keys included)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def training_changes(old: dict, new: dict) -> list[str]:
    """The changed keys that alter what is trained (everything outside :data:`RESUMABLE_CHANGES`)."""
    return [k for k in changed_keys(old, new)
            if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)]


def check_resume(workdir, cfg, *, allow_changes: bool = False) -> dict | None:
    """Compare ``cfg`` with ``<workdir>/config.json`` (the config the run was started with).

    Returns the stored config (None for a new workdir). Raises :class:`ConfigError` naming the changed keys
    when a resumed run would train something else (loss, learning rate, data, model, algorithm settings),
    unless ``allow_changes`` (the CLI's ``--allow_config_changes``, e.g. to lower the learning rate after a
    non-finite loss)."""
    from etils import epath

    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists() or not has_training_state(workdir):
        return None  # a new workdir, or one whose earlier start failed before anything was trained
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable run config ({e}); move the workdir aside or repair the file.") from None
    changes = training_changes(old, config_to_dict(cfg))
    if changes and not allow_changes:
        shown = ", ".join(f"config.{k}" for k in changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")
        raise ConfigError(f"{workdir} was started with another config; changed: {shown}. Use a new --workdir, or "
                          "pass --allow_config_changes to resume with the new values.")
    return old


def has_training_state(workdir) -> bool:
    """Whether ``workdir`` holds results or a checkpoint of any phase (``[*/[*/]]checkpoints/<step>``)."""
    from etils import epath

    root = epath.Path(workdir)
    if (root / "results.json").exists():
        return True
    patterns = ("checkpoints/*", "*/checkpoints/*", "*/*/checkpoints/*")  # a run, ROPO rounds, APO phases
    return any(p.name.isdigit() for pattern in patterns for p in root.glob(pattern))


def write_run_config(workdir, cfg) -> None:
    """Write the resolved config to ``<workdir>/config.json`` (process 0; atomic)."""
    import jax

    from jaxpref import paths

    if jax.process_index() != 0:
        return
    paths.write_json(paths.join(workdir, CONFIG_FILE), config_to_dict(cfg), indent=1, sort_keys=True)
