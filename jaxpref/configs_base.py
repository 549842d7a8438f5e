"""The base run config: every key jaxpref reads, with its default and meaning.

Config files in ``configs/`` start from :func:`base_config` and override what they need; the command
line overrides further (``--config.train.learning_rate=5e-7``).
"""

from __future__ import annotations

import ml_collections


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
    c.model.hf_dir = ""  # local Hugging Face model directory (config.json + safetensors); wins over preset
    c.model.preset = ""  # or a jaxpref.models.PRESETS name, randomly initialised from `seed`
    c.model.overrides = ml_collections.ConfigDict()  # ModelConfig fields replacing the preset's (e.g. vocab_size)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # parameter dtype: float32 | bfloat16
    c.model.remat_policy = "none"  # none | full | dots | dots_with_no_batch_dims

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = "mistral"  # "mistral" (shipped, offline), a HF tokenizer directory, or a .model file

    c.data = ml_collections.ConfigDict()
    c.data.train_path = "hh"  # "hh" = shipped Anthropic HH sample; or .jsonl(.gz)/.parquet/.arrow/save_to_disk dir
    c.data.format = "auto"  # auto | explicit | implicit | conversational
    c.data.skip_invalid = True  # skip (count, report) bad rows instead of stopping
    c.data.max_rows = ml_collections.FieldReference(None, field_type=int)  # use only the first N valid rows
    c.data.eval_path = ""  # held-out pairs file; else eval_fraction of the train file
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

    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "frozen"  # frozen (reference forward every step) | cached (precomputed once, on disk)
    c.reference.cache_dir = ""  # default <workdir>/ref_cache; per host, keyed by a fingerprint

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1  # pure data parallelism
    c.mesh.fsdp = -1  # sharded data parallelism (-1 = all remaining devices)
    c.mesh.tensor = 1  # tensor parallelism over heads / MLP / vocab
    c.mesh.num_devices = 0  # use only the first N local devices (single-host tests/debugging); 0 = all

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = "auto"  # auto | True | False (see jaxpref.train.trainer.maybe_initialize_distributed)
    c.distributed.coordinator_address = ""  # host:port of process 0, for explicit multi-process runs
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.cpu_collectives = ""  # "gloo" for multi-process CPU runs

    c.ropo = ropo_config()
    c.reward_conditioned = reward_conditioned_config()
    c.reward_model = reward_model_config(c.train)
    c.apo = apo_config()

    c.export = ml_collections.ConfigDict()
    c.export.hf = True  # write <workdir>/hf_export as a Hugging Face directory at the end
    return c


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
    r.scale_min = 1.0  # the score scale; scores outside it are a DataError
    r.scale_max = 10.0
    r.inference_goal = ml_collections.FieldReference(None, field_type=float)  # goal at inference; None = scale_max
    r.system_role = "auto"  # goal as a system message: auto (if the chat template has one) | True | False
    r.scores = "data"  # data (score_chosen/score_rejected) | implicit (a DPO policy's implicit reward, rank-scaled)
    r.implicit_policy_dir = ""  # for scores=implicit: a trained DPO policy (HF dir); empty = train one first
    return r


def reward_model_config(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.reward_model``: the reward model of ``algorithm = "reward_model"`` and of APO; see
    ``jaxpref/algorithms/reward_model.py``. ``train`` is the RM's own optimizer/schedule section (same keys
    as ``config.train``); it starts as a copy of the policy's with the APO paper's RM recipe."""
    r = ml_collections.ConfigDict()
    r.train = train.copy_and_resolve_references()
    r.train.learning_rate = 1e-6  # APO's RM lr
    r.train.num_epochs = 1.0
    r.margin = 0.0  # Bradley-Terry margin on human pairs (0 = none)
    r.label_smoothing = 0.0
    r.head_seed = 0  # seed of the fresh scalar head
    return r


def apo_config() -> ml_collections.ConfigDict:
    """``config.apo``: adversarial preference optimization (Cheng et al. 2023; not TRL's anchored ``apo_zero``);
    see ``jaxpref/algorithms/apo.py``."""
    a = ml_collections.ConfigDict()
    a.rounds = 3
    a.samples_per_prompt = 4  # K: policy samples per prompt, for both the RM's adversarial pairs and best-of-K
    a.rank_weight = 1.0  # c_rank: human-pair Bradley-Terry term (0 = the paper's GAIL-style ablation)
    # c_apo: adversarial (golden vs sample) term; 0 = the base-RM baseline (same compute). 0.1 is the paper's;
    # on the gold-reward task only 1.0 beat the base RM (BENCHMARKS.md, issue 11)
    a.apo_weight = 0.1
    a.form = "ranking"  # ranking (-log sigma(r_gold - r_sample)) | diff (-(r_gold - r_sample), WGAN-style)
    a.rm_reinit = True  # re-initialise the RM from its base every round (the paper found continuing worse)
    a.policy_update = "rejection_sampling"  # rejection_sampling (SFT on the best of K) | dpo (best vs worst of K)
    a.policy_learning_rates = (5e-6, 2e-6, 9e-7)  # per round (the last repeats); empty = config.train.learning_rate
    a.temperature = 1.2  # sampling for RM and policy data
    a.top_p = 1.0
    a.max_new_tokens = 256
    a.golden_field = "golden"  # real data: the row field holding the golden (stronger-model) answer
    a.policy_prompt_fraction = 0.5  # real data: share of the rows whose prompts feed the policy step
    return a


def dpo_7b_config(hf_dir: str, tokenizer_path: str) -> ml_collections.ConfigDict:
    """DPO on a 7B-class checkpoint (bf16, remat, cached reference, FSDP over all devices); used by
    ``configs/dpo_llama2.py`` and ``configs/dpo_mistral.py``, which differ only in the checkpoint."""
    c = base_config()
    c.algorithm = "dpo"
    c.model.hf_dir = hf_dir  # a local HF directory; a clear error if missing
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat_policy = "dots_with_no_batch_dims"
    c.tokenizer.path = tokenizer_path
    c.data.train_path = "hh"
    c.data.max_length = 1024
    c.data.max_prompt_length = 512
    c.data.buckets = (256, 512, 768, 1024)
    c.train.pairs_per_batch = 64
    c.train.grad_accum_steps = 2
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
    return c
