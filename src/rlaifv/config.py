"""Configuration: one pydantic model per stage, loadable from YAML, echoed into every output folder.

Every field says what it does where it is declared. The synthetic world's own configs (`WorldConfig` and the shapes
and training of its tiny models) live with the world, in `rlaifv.world.config`. This module imports no torch.

Two sets of defaults, never mixed:

- **the paper's** (`PAPER`, below): what RLAIF-V used. The stage configs take their defaults from it, so a run on your
  own data gets them unless a config says otherwise. `paper_deviations(cfg)` lists every setting of a resolved config
  that differs from it; runs write that list into their summary and report.
- **the synthetic world's** (`rlaifv.world.config.WORLD_ROUNDS`): sizes and pairing tuned for the tiny world models
  on a CPU, applied only where the prompts are the world's.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")
    # Fields a rerun into an existing output folder may change: only those that cannot change what is stored
    # (rlaifv.store.bind_config refuses a change to any other). Each class declares its own; a nested config
    # declares its own fields.
    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset()


# ---------------------------------------------------------------- the paper's settings: the defaults for your data

# The RLAIF-V paper's settings (its reference code where the paper is silent), by the config section and field that
# hold each. This is the one place they are declared: the configs below take their defaults from here, except where
# a note in PAPER_NOTES says why the project's default differs, and `paper_deviations` compares against it.
PAPER: dict[str, dict[str, Any]] = {
    "sample": {"n": 10, "temperature": 0.7, "max_new_tokens": 512},
    # two fine-tuned Llama-3-8B-Instruct models: statements, then one yes/no question per statement
    "claims": {"splitter": "llm", "temperature": 0.2, "max_new_tokens": 256, "max_words": 300,
               "existence_claims": False},
    "judge": {"mode": "claims"},
    "pairs": {"min_gap": 1.0, "max_pairs_per_prompt": 2, "length_balance": True, "keep_accepted": False,
              "closest_length": 0, "closest_by": "words"},
    # learning_rate: 5e-7 full fine-tuning, 1e-5 with LoRA (LR_FULL, LR_LORA); global batch 8 over 8 GPUs
    "dpo": {"beta": 0.1, "loss_type": "sigmoid", "rpo_alpha": None, "average_log_prob": False, "weight_decay": 0.01,
            "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "num_train_epochs": 4.0,
            "freeze_vision_tower": True, "lora_r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "stop_fraction": 1.0},
    # ~4k fresh instructions a round; the best checkpoint by a held-out hallucination benchmark (chair or amber)
    # cover_bound_closest_by: every round pairs as the first did (the paper's rounds have no Cover-bound notion)
    "rounds": {"rounds": 4, "prompts_per_round": 4000, "fresh_prompts": True, "select_on": "chair",
               "cover_bound_closest_by": None},
    # self-feedback best-of-N: the length-normalised implicit reward with the DPO beta
    "bon": {"beta": 0.1, "reward": "mean", "temperature": 0.7, "max_new_tokens": 512},
}
LR_FULL, LR_LORA = 5e-7, 1e-5  # the paper's learning rates (REFERENCE 5): full fine-tuning, LoRA

# Why a default here is not the paper's, or what a common deviation costs; shown beside the deviation.
PAPER_NOTES: dict[str, str] = {
    "claims.splitter": "the paper's splitter is two fine-tuned LLMs; 'rules' is deterministic and meant for simple "
                       "English: for free-form answers set claims.splitter: llm and a claims.splitter_model",
    "claims.temperature": "greedy, so that a rerun splits the same responses the same way",
    "pairs.length_balance": "without it DPO can learn that shorter answers win (fewer claims, fewer rejections)",
    "claims.existence_claims": "not in the paper: asks whether each object named with details is there at all",
    "pairs.keep_accepted": "not in the paper: drops pairs whose chosen answer says fewer true things",
    "pairs.closest_length": "not in the paper: keeps the pairs whose answers are closest in length",
    "pairs.closest_by": "not in the paper: ranks a prompt's pairs by how many more claims of the chosen answer the "
                        "labeler accepted",
    "dpo.learning_rate": "the paper: 5e-7 for full fine-tuning, 1e-5 with LoRA",
    "dpo.rpo_alpha": "not in the paper's recipe: an SFT term on the chosen answer (its code has one, off by default)",
    "dpo.stop_fraction": "not in the paper: the run stops before its learning-rate schedule ends",
    "rounds.prompts_per_round": "the paper draws ~4k fresh instructions a round",
    "rounds.fresh_prompts": "every round uses the whole prompts file again: its pairs come from prompts the policy "
                            "has already been trained on",
    "rounds.cover_bound_closest_by": "not in the paper: once a round is Cover-bound, later rounds add pairs whose "
                                     "chosen answer names more of what is there",
    "rounds.select_on": "the paper keeps the checkpoint that does best on a held-out hallucination benchmark "
                        "(select_on chair or amber with a held-out file)",
    "bon.reward": "'likelihood' is the policy's own mean log-prob per token and reads no reference; 'sum' prefers "
                  "short answers",
}


def _paper(section: str, name: str) -> Any:
    """A default taken from PAPER."""
    return PAPER[section][name]


class EvalConfig(StrictModel):
    """World evaluation: greedy descriptions and labeler accuracy on held-out scenes."""

    split: Literal["val", "test"] = Field("test", description="'test' for every reported metric, 'val' for selection")
    n_scenes: int = Field(500, ge=1, description="scenes to describe (the test split needs >= 500 for reporting)")
    labeler_questions_per_scene: int = Field(6, ge=2, description="balanced yes/no questions per scene for the labeler")
    max_new_tokens: int = Field(96, ge=1, description="cap on a description's length in tokens")
    batch_size: int = Field(64, ge=1, description="prompts per generation batch")


# ---------------------------------------------------------------- feedback (`rlaifv collect`)


class EngineConfig(StrictModel):
    """Where a model runs; each role (policy, labeler, ...) picks its own. Two kinds, selected by `kind`, each with
    only its own fields: `HFEngineConfig` (`kind: hf`, the default: the model is loaded in this process) and
    `OpenAIEngineConfig` (`kind: openai`: OpenAI-compatible servers such as vLLM or SGLang; engines.openai_vlm).
    A config field that takes either is an `AnyEngineConfig`; code tells them apart by `kind`."""

    kind: str

    @property
    def name(self) -> str:
        """What stored records name as their model."""
        raise NotImplementedError

    @model_validator(mode="before")
    @classmethod
    def _no_fields_of_the_other_kind(cls, data: Any) -> Any:
        """A field of the other kind is named as such, rather than as merely unknown."""
        if isinstance(data, dict) and cls is not EngineConfig:
            for other in EngineConfig.__subclasses__():
                misplaced = sorted(set(data) & (set(other.model_fields) - set(cls.model_fields)))
                if other is not cls and misplaced:
                    kind, mine = other.model_fields["kind"].default, cls.model_fields["kind"].default
                    raise ValueError(f"{', '.join(misplaced)}: only an engine of kind {kind!r} has "
                                     f"{'this field' if len(misplaced) == 1 else 'these fields'}; this one is of "
                                     f"kind {mine!r}")
        return data


class HFEngineConfig(EngineConfig):
    """A model loaded in this process: `path` is a folder or hub id that `AutoModelForImageTextToText` loads."""

    kind: Literal["hf"] = Field("hf", description="'hf': load the model here")
    path: str = Field("", description="model folder or hub id; empty means the stage's default (the world's model)")
    device: str = Field("cpu", description="torch device, e.g. 'cpu', 'cuda', 'cuda:1'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights and compute dtype")
    trust_remote_code: bool = Field(False, description="run code shipped with the model; only for models you trust")

    @property
    def name(self) -> str:
        """The folder or hub id."""
        return self.path


class OpenAIEngineConfig(EngineConfig):
    """A model on OpenAI-compatible servers: requests spread over `urls`, all serving `model`."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"api_key_env", "concurrency", "timeout_s", "max_retries"})

    kind: Literal["openai"] = Field("openai", description="'openai': send requests to `urls`")
    urls: list[str] = Field(default_factory=list, description="server base URLs (http://host:8000/v1); requests "
                                                              "spread over all of them")
    model: str = Field("", description="the model name the servers serve (vLLM: --served-model-name, or the path it "
                                       "was started with)")
    path: str = Field("", description="the local folder of the served weights, for a step that also needs them "
                                      "here: `rlaifv iterate` trains round 1 from it (required there); unused "
                                      "elsewhere")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the API key "
                                                           "(unset or empty: none sent). Only the name is ever "
                                                           "written to configs and logs")
    concurrency: int = Field(8, ge=1, description="requests in flight per URL")
    timeout_s: float = Field(300.0, gt=0, description="seconds per request before it is retried")
    max_retries: int = Field(5, ge=0, description="retries of a request after a timeout, a connection error, 429 or "
                                                  "5xx, with exponential backoff; other 4xx answers are not retried "
                                                  "(the record is quarantined with the server's message)")
    top_logprobs: int = Field(20, ge=2, le=20, description="judging: alternatives returned for the verdict token; "
                                                            "yes/no spellings outside them count as 0 (vLLM's "
                                                            "default --max-logprobs is 20)")

    def model_post_init(self, context: Any) -> None:
        if not self.urls or not self.model:
            raise ValueError("an engine of kind 'openai' needs `urls` (at least one server) and `model`")

    @property
    def name(self) -> str:
        """model@first-URL."""
        return f"{self.model}@{self.urls[0]}"


def _engine_kind(data: Any) -> str:
    """The kind of an engine given as a mapping or a config; a mapping without `kind` is a local model."""
    return data.get("kind", "hf") if isinstance(data, dict) else getattr(data, "kind", "hf")


AnyEngineConfig = Annotated[
    Annotated[HFEngineConfig, Tag("hf")] | Annotated[OpenAIEngineConfig, Tag("openai")],
    Discriminator(_engine_kind, custom_error_type="engine_kind",
                  custom_error_message="kind must be 'hf' (a model loaded here) or 'openai' (servers)"),
]


class SampleConfig(StrictModel):
    """Deconfounded sampling: N responses per prompt, all with one decoding setting (REFERENCE 1)."""

    policy: AnyEngineConfig = Field(default_factory=HFEngineConfig, description="the policy that answers")
    n: int = Field(_paper("sample", "n"), ge=1, description="responses per prompt (the paper: 10)")
    temperature: float = Field(_paper("sample", "temperature"), gt=0,
                               description="sampling temperature, the same for every sample (paper: 0.7)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1.0 = off")
    max_new_tokens: int = Field(_paper("sample", "max_new_tokens"), ge=1,
                                description="cap on a response's length (paper: 512)")
    prompts_per_batch: int = Field(8, ge=1, description="prompts prefilled together; their n samples decode in one "
                                                        "batch of prompts_per_batch * n rows. Part of the seed's "
                                                        "meaning: changing it changes the samples")
    seed: int = Field(0, description="seeds every batch, so a rerun (or a resumed run) gives the same candidates")


class ClaimsConfig(StrictModel):
    """Divide: responses into atomic statements, statements into yes/no questions (REFERENCE 2)."""

    splitter: Literal["rules", "llm"] = Field("rules", description="'rules': deterministic, for simple English; "
                                                                   "'llm': a chat causal LM (splitter_model)")
    splitter_model: AnyEngineConfig = Field(default_factory=HFEngineConfig,
                                            description="the 'llm' splitter's model")
    max_new_tokens: int = Field(_paper("claims", "max_new_tokens"), ge=1,
                                description="cap on the splitter's output (paper: 256)")
    temperature: float = Field(0.0, ge=0, description="splitter sampling temperature; 0 = greedy (paper: 0.2)")
    max_words: int = Field(_paper("claims", "max_words"), ge=1,
                           description="responses are cut to this many words before splitting (paper: 300)")
    question_suffix: str = Field("Answer yes or no.", description="appended to every question; '' for none")
    existence_claims: bool = Field(
        _paper("claims", "existence_claims"),
        description="not in the paper: before a claim that names an object with details (\"There is a red cup on "
                    "the left\"), also ask whether the object is there at all (\"Is there a cup?\"), so a real "
                    "object named with a wrong detail still earns an accepted claim and `pairs.keep_accepted` drops "
                    "the pairs that win by leaving it out. The added claim only supports: its 'no' never lowers the "
                    "score, which the detailed claim already does. Read from statements in simple English (the "
                    "rules' forms)")


class JudgeConfig(StrictModel):
    """Conquer: the labeler's yes/no verdict on each claim; score = -rejected claims (REFERENCE 3)."""

    labeler: AnyEngineConfig = Field(default_factory=HFEngineConfig, description="the labeler VLM")
    mode: Literal["claims", "holistic"] = Field(_paper("judge", "mode"),
                                                description="'claims': divide-and-conquer, one verdict per claim; "
                                                            "'holistic': one yes/no on the whole response (the "
                                                            "paper's ablation)")
    shared_prefix: bool = Field(True, description="encode each image and prompt prefix once and score all of its "
                                                  "questions in one packed sequence; False = one forward per claim")
    questions_per_pack: int = Field(64, ge=1, description="questions packed behind one image prefix in a row")
    prompts_per_batch: int = Field(32, ge=1, description="prompts judged together, the unit a crash recomputes: "
                                                         "their packed rows are ordered by length before they are "
                                                         "split into forwards, so rows of one forward pad little. "
                                                         "With a server labeler: images whose claims are in flight "
                                                         "together")
    packs_per_forward: int = Field(8, ge=1, description="packed rows per forward (HF labeler). A few short rows per "
                                                        "forward measured faster on a CPU than many")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """`packs_per_batch` once meant the prompts judged together and later the packed rows per forward; an old
        file that sets it would silently mean something else, so it is refused with what to write instead."""
        if isinstance(data, dict) and "packs_per_batch" in data:
            raise ValueError("packs_per_batch is no longer read: the packed rows per forward are `packs_per_forward` "
                             "(default 8), and the prompts judged together, what packs_per_batch meant before, are "
                             "`prompts_per_batch` (default 32); set the one you mean")
        return data


class PairsConfig(StrictModel):
    """Preference pairs from scored candidates (REFERENCE 4)."""

    min_gap: float = Field(_paper("pairs", "min_gap"), gt=0,
                           description="smallest score difference that makes a pair; ties never pair")
    max_pairs_per_prompt: int = Field(_paper("pairs", "max_pairs_per_prompt"), ge=1,
                                      description="pairs kept per prompt, drawn with the seed (paper: 2)")
    length_balance: bool = Field(_paper("pairs", "length_balance"),
                                 description="drop pairs whose rejected answer is much longer than the chosen one "
                                             "until mean lengths match, so DPO does not learn 'shorter is better'")
    keep_accepted: bool = Field(_paper("pairs", "keep_accepted"),
                                description="drop a pair whose chosen answer has fewer accepted claims than the "
                                            "rejected one: it wins by saying less that is true (e.g. stopping before "
                                            "the last object), and DPO then learns to say less. Not in the paper; the"
                                            " world's rounds turn it on")
    closest_length: int = Field(_paper("pairs", "closest_length"), ge=0,
                                description="of the pairs kept per prompt, this many are those whose two answers are "
                                            "closest in length (in words); the rest are drawn at random. Drawn pairs "
                                            "favour a shorter chosen answer (the one without an invented sentence), "
                                            "so DPO on them also learns to stop early; length-matched ones teach what"
                                            " to say instead. 0 = all drawn (the paper); the world's rounds use 2")
    closest_by: Literal["words", "accepted_gain", "mixed"] = Field(
        _paper("pairs", "closest_by"),
        description="what ranks the `closest_length` pairs: 'words' = the smallest length gap; 'accepted_gain' = "
                    "the most claims of the chosen answer the labeler accepted beyond the rejected one's, then the "
                    "smallest length gap; 'mixed' = the ranked places alternate, 'words' first. 'accepted_gain' "
                    "pairs teach naming more of what is there: on the world's "
                    "development seeds 0-4 (`val`) the rounds kept 0.03-0.06 more Cover than with 'words' but cut "
                    "CHAIRs less on four of five seeds, and one round's pair precision fell to 0.947 "
                    "(benchmarks/RESULTS.md); 'mixed' in every round held 0.01-0.06 more Cover too and cut CHAIRs "
                    "more on seeds 2 and 3, less on 0, 1 and 4. The world's rounds keep 'words' and switch to "
                    "'mixed' once a round is Cover-bound (IterateConfig.cover_bound_closest_by)")
    seed: int = Field(0, description="seeds the choice among a prompt's pairs")
    round: int = Field(0, ge=0, description="iterative round recorded in each pair")


class CollectConfig(StrictModel):
    """`rlaifv collect`: sample -> claims -> judge -> pairs, each stage in its own folder under the output."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"shard_size"})

    sample: SampleConfig = Field(default_factory=SampleConfig, description="deconfounded sampling")
    claims: ClaimsConfig = Field(default_factory=ClaimsConfig, description="divide")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="conquer")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="pairing")
    shard_size: int = Field(1000, ge=1, description="records per Parquet shard; a crash loses at most one shard's "
                                                    "worth of work, and the rerun redoes only that")


def read_config(model: type[BaseModel], path: Path | None, options: dict[tuple[str, ...], Any] | None = None,
                start: dict[str, Any] | None = None) -> Any:
    """A config from `start` (field values such as a preset's or the world's defaults; default: none), the YAML
    file's fields over them (section by section: a file that sets `collect.sample.n` keeps what `start` says about
    the rest of `collect`), then the command-line options that were given, validated once; errors name the bad field.

    Each key of `options` is the path of a field, e.g. ("sample", "policy", "path"); a None value means the option
    was not given. An option is written into the file's data, so a field derived from others (DPOConfig's learning
    rate from `use_peft`) follows it. Where its path enters a section the data leaves out, the section is first
    filled with what the config holds there (its defaults, e.g. IterateConfig's world-sized `collect`), so an option
    changes its one field and nothing else.
    """
    data: dict[str, Any] = copy.deepcopy(dict(start or {}))
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = merge_config_data(data, loaded or {})
    for keys, value in (options or {}).items():
        if value is None:
            continue
        node = data
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                node[key] = _section(model, data, keys[: depth + 1])
            node = node[key]
        node[keys[-1]] = value
    return model.model_validate(data)


def merge_config_data(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s fields on top of `base`'s, section by section. An engine whose `kind` changes is replaced whole, since
    the two kinds have different fields."""
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and old.get("kind", value.get("kind")) == value.get(
                "kind", old.get("kind")):
            merged[key] = merge_config_data(old, value)
        else:
            merged[key] = value
    return merged


def _section(model: type[BaseModel], data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The nested config at `keys` of `data` once validated, as plain data."""
    value: Any = model.model_validate(data)
    for key in keys:
        value = getattr(value, key)
    return value.model_dump()


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- training (`rlaifv train`)


class DPOConfig(StrictModel):
    """DPO of a VLM on preference pairs (REFERENCE 5). Field names follow TRL's `DPOConfig` where the meaning is the
    same; the defaults are the paper's recipe where it has one (beta 0.1, cosine schedule, warmup 0.05, weight decay
    0.01, global batch 8, 4 epochs, LoRA r 64 / alpha 16 / dropout 0.05, frozen vision tower)."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"output_dir", "report_to"})  # where, and which trackers

    output_dir: str = Field("", description="folder for checkpoints, metrics and the final model; `rlaifv train "
                                            "--out` and the `out_dir` argument of `train_dpo` override it")
    beta: float = Field(_paper("dpo", "beta"), gt=0,
                        description="strength of the KL anchor to the reference: larger keeps the policy closer to it"
                                    " (paper: 0.1)")
    loss_type: Literal["sigmoid"] = Field(_paper("dpo", "loss_type"),
                                          description="'sigmoid': -log sigmoid(beta * (policy log-ratio - reference "
                                                      "log-ratio)), the DPO paper's loss")
    rpo_alpha: float | None = Field(_paper("dpo", "rpo_alpha"), ge=0,
                                    description="weight of an SFT term on the chosen response (its mean per-token "
                                                "NLL, per pair) added to the DPO loss; None or 0 = off (paper: off)")
    average_log_prob: bool = Field(_paper("dpo", "average_log_prob"),
                                   description="use per-token mean log-probs instead of sums (policy and reference "
                                               "alike), so long responses weigh no more than short ones; False = "
                                               "sums, as in the paper")
    learning_rate: float | None = Field(None, gt=0, description="peak AdamW learning rate; None = the paper's: "
                                                                   f"{LR_FULL} full fine-tuning, {LR_LORA} with LoRA")
    weight_decay: float = Field(_paper("dpo", "weight_decay"), ge=0,
                                description="AdamW weight decay on matrices (not on biases and norms)")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient norm clipped to this before each optimizer step")
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        _paper("dpo", "lr_scheduler_type"),
        description="learning-rate schedule after warmup (transformers.get_scheduler names)")
    warmup_ratio: float = Field(_paper("dpo", "warmup_ratio"), ge=0, lt=1,
                                description="share of the optimizer steps spent warming up linearly from 0")
    per_device_train_batch_size: int = Field(8, ge=1, description="pairs per forward on each process; a pair is one "
                                                                  "packed row (prompt + chosen + rejected)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="forwards per optimizer step; global batch = "
                                                                  "per_device_train_batch_size x processes x this")
    num_train_epochs: float = Field(_paper("dpo", "num_train_epochs"), gt=0,
                                    description="passes over the pairs (paper: 4 per round); ignored when max_steps >"
                                                " 0")
    max_steps: int = Field(-1, description="optimizer steps to run; -1 = as many as num_train_epochs needs")
    stop_fraction: float = Field(
        _paper("dpo", "stop_fraction"), gt=0, le=1,
        description="share of the schedule's steps that run: warmup and decay still span all of them "
                    "(num_train_epochs or max_steps), so each step that runs is the step it would be in the whole "
                    "schedule, and the decay's flat tail can be left out (1 = the whole schedule, as in the paper)",
    )
    max_length: int | None = Field(None, ge=2, description="longest prompt + response in tokens (image tokens "
                                                              "included); longer pairs are quarantined with a reason, "
                                                              "never truncated. None = the model's context length")
    precompute_ref_batch_size: int | None = Field(None, ge=1, description="pairs per forward of the reference "
                                                                             "pass; None = per_device_train_batch_"
                                                                             "size")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: much less "
                                                            "memory for ~30-50 % more time")
    bf16: bool = Field(False, description="bf16 autocast with fp32 master weights (the base weights are bf16 too "
                                          "with LoRA); use it on GPUs, it is slow on most CPUs")
    use_cpu: bool = Field(False, description="train on the CPU even when a GPU is present")
    disable_dropout: bool = Field(True, description="set every dropout to 0, so the policy's log-probs match the "
                                                    "reference's at step 0 (LoRA dropout is kept)")
    freeze_vision_tower: bool = Field(_paper("dpo", "freeze_vision_tower"),
                                      description="the vision tower gets no gradient (paper); the projector and the "
                                                  "language model train")
    use_peft: bool = Field(False, description="train LoRA adapters instead of the full model; merged into the saved "
                                              "model at the end")
    lora_r: int = Field(_paper("dpo", "lora_r"), ge=1, description="LoRA rank (paper: 64)")
    lora_alpha: int = Field(_paper("dpo", "lora_alpha"), ge=1,
                            description="LoRA scale numerator; the update is scaled by alpha / r (paper: 16)")
    lora_dropout: float = Field(_paper("dpo", "lora_dropout"), ge=0, lt=1,
                                description="dropout on the LoRA input (paper: 0.05)")
    lora_target_modules: list[str] | None = Field(None, description="module names (or suffixes) that get LoRA; "
                                                                       "None = every linear layer outside the "
                                                                       "vision tower and the output head")
    save_steps: int = Field(500, ge=1, description="a resumable checkpoint (and a loadable model) every this many "
                                                   "optimizer steps, and at the end")
    save_total_limit: int | None = Field(None, ge=1, description="keep only the newest this many checkpoints; "
                                                                    "None = keep all (the rounds pick among them)")
    logging_steps: int = Field(10, ge=1, description="one metrics row (means over the steps since the last row) "
                                                     "every this many optimizer steps")
    report_to: Literal["all", "none", "tensorboard"] = Field("all", description="trackers beside the CSV, which is "
                                                                                "always written: 'all' = TensorBoard "
                                                                                "when it is installed")
    seed: int = Field(0, description="seeds LoRA init and the data order; the same seed gives the same run")
    trust_remote_code: bool = Field(False, description="run code shipped with the model; only for models you trust")

    def model_post_init(self, context: Any) -> None:
        """Cross-field rules, and the learning rate the paper uses for the chosen mode when none is given."""
        if self.max_steps <= 0 and self.max_steps != -1:
            raise ValueError(f"max_steps must be -1 (use num_train_epochs) or >= 1, got {self.max_steps}")
        lora_fields = [name for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
                       if getattr(self, name) != type(self).model_fields[name].default]
        if lora_fields and not self.use_peft:
            raise ValueError(f"{', '.join(lora_fields)} set but use_peft is false: set use_peft: true to "
                             "train LoRA adapters")
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise ValueError("lora_target_modules is empty: give module names or leave it unset (None)")
        if self.learning_rate is None:
            self.learning_rate = LR_LORA if self.use_peft else LR_FULL

    def schedule_steps(self, steps_per_epoch: int) -> int:
        """The optimizer steps the learning-rate schedule spans (warmup and decay)."""
        return self.max_steps if self.max_steps > 0 else math.ceil(self.num_train_epochs * steps_per_epoch)

    def run_steps(self, steps_per_epoch: int) -> int:
        """The optimizer steps that run: the schedule's first `stop_fraction`, at least one."""
        return max(1, math.ceil(self.stop_fraction * self.schedule_steps(steps_per_epoch)))


# ---------------------------------------------------------------- iterative rounds (`rlaifv iterate`)


class ServeConfig(StrictModel):
    """How `rlaifv iterate` puts each round's policy on the policy servers when it samples on them
    (`collect.sample.policy` of kind 'openai'). The servers serve the starting policy when the run begins; before
    round k >= 2 samples, `restart_command` makes them serve round k-1's selected checkpoint, then the run waits until
    every URL lists the model again."""

    restart_command: str = Field("", description="shell command run before a round samples from a new policy; "
                                                  "{policy} is the folder of its weights (a transformers "
                                                  "save_pretrained folder), {model} the served name, {round} the "
                                                  "round. It must return only once the servers no longer serve the "
                                                  "old weights (stopped or restarted); a non-zero exit stops the run")
    ready_timeout_s: float = Field(900.0, gt=0, description="seconds to wait, after the command, for every URL to "
                                                            "list the model")


class BenchmarkSelectConfig(StrictModel):
    """`iterate --select-on chair | amber`: the held-out benchmark file each checkpoint answers (beam search, as
    `rlaifv eval generate`) and is scored on. Give a file the report does not use, or selection leaks into the
    reported numbers."""

    data: str = Field("", description="chair: Object HalBench prompts JSONL (image_id, question, image); amber: "
                                      "AMBER's root folder (data/query/, data/annotations.json, ...)")
    truth: str = Field("", description="chair: ground truth, a JSONL of {image_id, instances, captions} or a COCO "
                                       "2014 annotations folder; amber: unused (AMBER's folder has it)")
    images: str | None = Field(None, description="image folder (default as for `rlaifv eval generate`)")
    amber_split: str = Field("discriminative", description="AMBER queries to answer: all | generative | "
                                                           "discriminative | existence | attribute | relation")
    num_beams: int = Field(3, ge=1, description="beam width of the answers (the paper's evaluation: 3)")
    max_new_tokens: int = Field(512, ge=1, description="cap on an answer's length")
    batch_size: int = Field(4, ge=1, description="prompts decoded together")


class IterateConfig(StrictModel):
    """`rlaifv iterate`: K rounds of collect -> reference log-probs -> DPO -> checkpoint selection, where each round's
    selected checkpoint is the next round's policy and reference (REFERENCE 5). The defaults are the paper's (`PAPER`):
    4 rounds of ~4k fresh prompts, its collection and its DPO. The synthetic world's rounds use their own, tuned for
    its tiny models on a CPU (`rlaifv.world.config.WORLD_ROUNDS`, applied only on world prompts).

    Per-round seeds: round k (1-based) samples with `collect.sample.seed + k - 1`, pairs with `collect.pairs.seed + k
    - 1`, orders DPO's data with `dpo.seed + k - 1` and draws its held-out pairs with `seed + k - 1`, so rounds differ
    and a rerun repeats them exactly."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"rounds", "serve", "launcher"})  # more rounds; how policies
    # are served and how DPO is launched

    rounds: int = Field(_paper("rounds", "rounds"), ge=0,
                        description="rounds to run; raising it on a finished run continues with more rounds (with "
                                    "`serve` and `launcher`, the only fields a rerun may change)")
    prompts_per_round: int = Field(_paper("rounds", "prompts_per_round"), ge=1,
                                   description="prompts per round (the paper: ~4k). On the world, round k takes the "
                                               "k-th slice of the world's `prompts` split; on a prompts file with "
                                               "`fresh_prompts`, the k-th slice of the file's rows in a seeded order "
                                               "(`seed`), so no two rounds share a row. A file too short for "
                                               "`rounds` slices is an error before round 1")
    fresh_prompts: bool = Field(_paper("rounds", "fresh_prompts"),
                                description="a prompts file: True = every round its own disjoint slice of "
                                            "`prompts_per_round` rows (the paper); False = the whole file every "
                                            "round. The world always draws fresh scenes")
    select_on: Literal["auto", "world", "reward", "chair", "amber"] = Field(
        "auto", description="how a round picks its best checkpoint. 'world': lowest CHAIRs of greedy descriptions "
                            "of the world's `val` scenes, penalised when Cover falls more than `cover_tolerance` "
                            "below the starting policy's (`selection.world_objective`); 'reward': highest accuracy "
                            "of the checkpoint's implicit reward beta * log(pi / pi_ref) on held-out pairs, for data "
                            "without ground truth; 'chair' / 'amber': a held-out benchmark file "
                            "(`select_benchmark`); 'auto': 'world' on world prompts, 'reward' on a prompts file"
    )
    select_benchmark: BenchmarkSelectConfig = Field(default_factory=BenchmarkSelectConfig,
                                                    description="the held-out benchmark of select_on chair / amber")
    checkpoints: int = Field(4, ge=1, description="checkpoints saved and evaluated per round, evenly spaced over the "
                                                  "round's DPO schedule (the last step that runs always included; "
                                                  "with dpo.stop_fraction < 1 the ones past it are not made); sets "
                                                  "dpo.save_steps for each round. Default 4: one per epoch of the "
                                                  "paper's 4. Each one is a saved model (and a resumable state), so "
                                                  "keep it small for a large VLM; the world's rounds use 20, which "
                                                  "gives the selection a checkpoint before Cover drops")
    val_scenes: int = Field(200, ge=1, description="world `val` scenes described per checkpoint for "
                                                   "select_on 'world'")
    select_start: bool = Field(True, description="select_on 'world': the round's starting policy is a candidate "
                                                 "too (step 0), so a round none of whose checkpoints beats it on "
                                                 "`val` keeps it and a further round never makes the policy worse "
                                                 "there. False: the best checkpoint always wins, as in the paper")
    cover_tolerance: float = Field(0.03, ge=0, le=1, description="Cover may fall this much (absolute) below the "
                                                                 "starting policy's on `val` before a checkpoint is "
                                                                 "penalised (the project's goal: at most 0.03)")
    cover_penalty: float = Field(100.0, ge=0, description="CHAIRs added per unit of Cover below the tolerance. The "
                                                          "default makes the tolerance all but a hard limit: DPO on "
                                                          "the world's pairs also teaches the policy to stop "
                                                          "earlier, and a small penalty lets the selection trade "
                                                          "Cover for lower CHAIRs")
    cover_bound_closest_by: Literal["words", "accepted_gain", "mixed"] | None = Field(
        _paper("rounds", "cover_bound_closest_by"),
        description="select_on 'world': once a round keeps its start because it was Cover-bound (every "
                    "checkpoint with lower `val` CHAIRs named fewer real objects than `cover_tolerance` "
                    "allows), the later rounds rank their pairs this way (`collect.pairs.closest_by`): "
                    "'mixed' and 'accepted_gain' add pairs whose chosen answer names more of what is there. "
                    "None: every round as `collect.pairs.closest_by` says (the paper). The world's rounds "
                    "use 'mixed' (world.config.WORLD_WHY)")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="share of a round's prompts whose pairs are held "
                                                                 "out of training to measure reward accuracy "
                                                                 "(select_on 'reward' only; whole prompts, so no "
                                                                 "held-out image was trained on)")
    test_metrics: bool | None = Field(None, description="evaluate the base policy and each round's selected "
                                                        "checkpoint on the world's `test` split (the reported "
                                                        "numbers, `eval`); None = on world prompts only")
    seed: int = Field(0, description="seeds the held-out draw of each round (see the class note)")
    device: str | None = Field(None, description="torch device where the rounds evaluate checkpoints and score "
                                                  "held-out rewards; None = the policy's device when it is loaded "
                                                  "here, 'cpu' for a served policy")
    collect: CollectConfig = Field(default_factory=CollectConfig, description="feedback collection of every round; "
                                                                              "sample.policy.path is the starting "
                                                                              "policy (empty: the world's, on world "
                                                                              "prompts only), labeler and splitter "
                                                                              "stay fixed")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO of every round (save_steps is set from "
                                                                  "`checkpoints`)")
    launcher: str = Field("", description="command that runs each round's DPO in processes of its own, followed by "
                                          "`-m rlaifv.cli train ...`: e.g. 'accelerate launch --config_file "
                                          "configs/accelerate/deepspeed_zero2.yaml --num_processes 8' for full "
                                          "fine-tuning over 8 GPUs (the paper's). Empty: DPO runs in this process. "
                                          "Sampling, the reference pass and selection stay here")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="the `test` evaluation of `test_metrics`")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="a served policy: how each round's new "
                                                                        "policy reaches its servers")

    def model_post_init(self, context: Any) -> None:
        if self.eval.split != "test":
            raise ValueError(f"eval.split must be 'test' (the reported numbers); checkpoints are selected on 'val' "
                             f"scenes (val_scenes), got {self.eval.split!r}")
        policy = self.collect.sample.policy
        if policy.kind == "openai" and not (policy.path and self.serve.restart_command):
            raise ValueError("a served collect.sample.policy needs `path` (the local folder of the weights the "
                             "servers serve at the start: round 1 trains from it) and serve.restart_command (how "
                             "the next rounds' policies reach the servers)")

    def save_steps(self, schedule_steps: int) -> int:
        """A round's dpo.save_steps: `checkpoints` evenly spaced over its DPO schedule of `schedule_steps` steps."""
        return max(1, math.ceil(schedule_steps / self.checkpoints))

    def round_checkpoints(self, schedule_steps: int, run_steps: int) -> int:
        """Checkpoints a round makes: those of `save_steps` within the steps that run, and the last step that runs
        (at least one)."""
        return max(1, math.ceil(run_steps / self.save_steps(schedule_steps)))


# ---------------------------------------------------------------- best-of-N (`rlaifv bon`)


class BonConfig(StrictModel):
    """`rlaifv bon`: self-feedback at inference (REFERENCE 6). N samples per prompt from the sampler (the aligned
    policy unless `sampler.path` is set), each scored with the policy's implicit reward against the reference,
    r = beta / T * sum_t [log pi(y_t | ...) - log pi_ref(y_t | ...)] ('mean', T = response tokens) or without the 1/T
    ('sum'), or with the policy's own mean log-prob per token ('likelihood', no reference needed; infer.bon says
    when it ranks better); the argmax is kept, with every candidate's numbers beside it."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"shard_size"})

    policy: AnyEngineConfig = Field(default_factory=HFEngineConfig,
                                    description="the aligned policy whose reward ranks the samples (required)")
    reference: AnyEngineConfig = Field(default_factory=HFEngineConfig,
                                       description="the reference it was aligned against, e.g. the round's starting "
                                                   "policy (same tokenizer; required unless reward is 'likelihood', "
                                                   "which reads none; given anyway, its log-probs are stored too)")
    sampler: AnyEngineConfig = Field(default_factory=HFEngineConfig,
                                     description="model that draws the N samples; an empty local path = the policy")
    n: int = Field(16, ge=1, description="samples per prompt (paper Fig. 5 sweeps 1 ... 64; more is better and "
                                         "costs N x the decoding and scoring)")
    reward: Literal["mean", "sum", "likelihood"] = Field(
        _paper("bon", "reward"),
        description="'mean': the log-ratio divided by the response's tokens (the paper's; does not favour short "
                    "answers); 'sum': the summed log-ratio, which prefers short answers; 'likelihood': the policy's "
                    "mean log-prob per token, no reference (the world's demo default: there the log-ratio ranks "
                    "answers by their truth no better than chance, the likelihood does; benchmarks/RESULTS.md)")
    beta: float = Field(_paper("bon", "beta"), gt=0,
                        description="the DPO beta the policy was trained with; scales every reward alike, so it never"
                                    " changes the choice (paper: 0.1)")
    temperature: float = Field(_paper("bon", "temperature"), gt=0, description="sampling temperature of every sample")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1.0 = off")
    max_new_tokens: int = Field(_paper("bon", "max_new_tokens"), ge=1, description="cap on a sample's length")
    prompts_per_batch: int = Field(8, ge=1, description="prompts sampled together and scored together; part of the "
                                                        "seed's meaning, as for `rlaifv sample`")
    seed: int = Field(0, description="seeds every sampling batch, so a rerun gives the same samples")
    max_length: int | None = Field(None, ge=2, description="longest prompt + response in tokens (image tokens "
                                                              "included); longer candidates are quarantined, never "
                                                              "chosen. None = the models' context length")
    candidates_per_pack: int = Field(16, ge=1, description="candidates scored behind one prompt prefix in a packed "
                                                           "row; a prompt with more gets several rows (and encodes "
                                                           "its prefix once per row). Attention memory grows with "
                                                           "the square of the row's length")
    packs_per_batch: int = Field(4, ge=1, description="packed rows per forward")
    shard_size: int = Field(1000, ge=1, description="rows per Parquet shard of every store under the output")

    def required_roles(self) -> tuple[str, ...]:
        """The models this config must name: the policy, and the reference unless the reward reads none."""
        return ("policy",) if self.reward in BON_NO_REFERENCE else ("policy", "reference")

    def names(self, role: str) -> bool:
        """Whether `role` ('policy', 'reference', 'sampler') names a model: a served one or a local path."""
        engine = getattr(self, role)
        return engine.kind != "hf" or bool(engine.path)


BON_REWARDS: tuple[str, ...] = get_args(BonConfig.model_fields["reward"].annotation)  # every form of r(y)
BON_NO_REFERENCE = frozenset({"likelihood"})  # the forms that read no reference log-probs


# ---------------------------------------------------------------- what a config changes from the paper


def paper_deviations(cfg: BaseModel) -> list[dict[str, Any]]:
    """Every setting of a resolved config that differs from the paper's (`PAPER`), in field order, each as
    {"field": its path in the YAML, "value": this config's, "paper": the paper's, "note": why it matters or why the
    default differs ('' when there is nothing to add)}.

    Takes a CollectConfig, DPOConfig, IterateConfig or BonConfig. Settings that do not act are left out: the LLM
    splitter's sampling under the rule splitter, claims in holistic mode, LoRA's shape without LoRA. Engineering
    fields (devices, batch sizes, shards, seeds) are not the paper's method and are never listed; neither is the
    global batch, which depends on the number of processes (the paper: 8 pairs over 8 GPUs).
    """
    if isinstance(cfg, IterateConfig):
        found = [_deviation(name, getattr(cfg, name), PAPER["rounds"][name], f"rounds.{name}")
                 for name in ("rounds", "prompts_per_round", "fresh_prompts", "cover_bound_closest_by")]
        if cfg.select_on not in ("chair", "amber"):
            found.append(_deviation("select_on", cfg.select_on, PAPER["rounds"]["select_on"], "rounds.select_on"))
        found += [dict(d, field=f"collect.{d['field']}") for d in paper_deviations(cfg.collect)]
        found += [dict(d, field=f"dpo.{d['field']}") for d in paper_deviations(cfg.dpo)]
        return [d for d in found if d]
    if isinstance(cfg, CollectConfig):
        names: list[tuple[str, str]] = [("sample", n) for n in PAPER["sample"]] + [("judge", "mode")]
        if cfg.judge.mode == "claims":
            names += [("claims", "splitter"), ("claims", "max_words")]
            if cfg.claims.splitter == "llm":
                names += [("claims", "temperature"), ("claims", "max_new_tokens")]
        names += [("pairs", n) for n in PAPER["pairs"]]
        found = [_deviation(f"{section}.{name}", getattr(getattr(cfg, section), name), PAPER[section][name])
                 for section, name in names]
        return [d for d in found if d]
    if isinstance(cfg, DPOConfig):
        found = [_deviation(name, getattr(cfg, name), value, f"dpo.{name}") for name, value in PAPER["dpo"].items()
                 if cfg.use_peft or not name.startswith("lora_")]
        found.append(_deviation("learning_rate", cfg.learning_rate, LR_LORA if cfg.use_peft else LR_FULL,
                                "dpo.learning_rate"))
        return [d for d in found if d]
    if isinstance(cfg, BonConfig):
        found = [_deviation(name, getattr(cfg, name), value, f"bon.{name}") for name, value in PAPER["bon"].items()]
        return [d for d in found if d]
    raise TypeError(f"no paper settings to compare a {type(cfg).__name__} with")


def _deviation(field: str, value: Any, paper: Any, note_key: str | None = None) -> dict[str, Any]:
    """{} when the value is the paper's (an SFT weight of None and of 0 both mean off)."""
    if value == paper or (field.endswith("rpo_alpha") and not value and not paper):
        return {}
    return {"field": field, "value": value, "paper": paper, "note": PAPER_NOTES.get(note_key or field, "")}


def format_deviation(deviation: dict[str, Any]) -> str:
    """One deviation as a line of text: `field: value (the paper: value)`, then the note, then why this run's value
    was chosen (`why`, where the caller knows it: the world's settings, world.config.WORLD_WHY)."""
    def show(x: Any) -> str:
        return json.dumps(x) if isinstance(x, bool) or x is None else str(x)

    text = f"{deviation['field']}: {show(deviation['value'])} (the paper: {show(deviation['paper'])})"
    text += f"; {deviation['note']}" if deviation.get("note") else ""
    return text + (f". Why here: {deviation['why']}" if deviation.get("why") else "")
