"""The synthetic world's splitter LM: a tiny Llama trained to make the paper's two splitter calls on world responses.

RLAIF-V fine-tunes a language model to split responses into claims and claims into yes/no questions. The world does
the same at toy scale, so the demo runs the `llm` splitter path for real: the targets come from the RuleSplitter
(exact on the world's language, see `rlaifv.text.rules`), formatted as the numbered lists that
`LLMSplitter` parses. The model reuses the world's byte-level BPE (`build_tokenizer`) and its chat template.

Why the world splitter works one sentence at a time (`LLMSplitter(unit="sentence")`): asked to copy a whole
response's sentences into a list, a tiny Llama must remember which sentence comes next while the same words ("in
the top", "small", "red") recur in every sentence -- with rotary positions only, that binding takes it thousands of
steps to learn (benchmarks/RESULTS.md, "World splitter"). One sentence per call leaves nothing to bind, and the
model learns both calls in a hundred or two short steps.

The prompts are short on purpose (a long instruction would only cost sequence length), and the response is not
repeated in them: world sentences never need context. The unit and the prompts are saved beside the weights
(`splitter.json`), so `LLMSplitter(path)` calls the model the way it was trained.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlaifv.records import BadInput
from rlaifv.text.formats import NO_CLAIMS, SETTINGS_FILE, numbered, response_sentences
from rlaifv.text.rules import RuleSplitter
from rlaifv.world.language import DESCRIBE_INSTRUCTIONS, CaptionNoise, describe, noisy_caption, true_mentions
from rlaifv.world.models import build_tokenizer, set_generation_ids
from rlaifv.world.scenes import SPLITS, sample_scenes
from rlaifv.world.training import adamw, lr_factor, optimizer_step, text_batch

WORLD_UNIT = "sentence"
WORLD_STATEMENTS_PROMPT = "Split: {sentence}"  # call (a), one sentence
WORLD_QUESTIONS_PROMPT = "Ask:\n{statements}"  # call (b), that sentence's statements as a numbered list
# Sentences that state nothing checkable; a few are mixed into training responses so the model learns to say "none".
HEDGES: tuple[str, ...] = (
    "I think it is a nice picture.",
    "It seems to be a calm scene.",
    "Maybe the picture was drawn by a child.",
    "It looks like a drawing for children.",
    "I hope this description helps!",
    "Is there anything else you want to know?",
)

Conversation = list[dict[str, str]]  # [{"role": "user", ...}, {"role": "assistant", ...}]
Pair = tuple[list[int], list[int]]  # (prompt ids, target ids)


def world_responses(
    seed: int, split: str, n_scenes: int, noise: CaptionNoise = CaptionNoise(), hedge_prob: float = 0.1
) -> list[tuple[str, str]]:
    """(instruction, response) pairs as the policy would give them: a noisy caption and a true description per scene.

    Noisy captions are what the base policy learned to write (absent partners, habitual colors); true descriptions
    state every attribute. Both come from `describe`, so every sentence form appears. With `hedge_prob`, a response
    gets one of `HEDGES` at a random place: an opinion or a question, which is not a claim.
    """
    rng = np.random.default_rng([seed, 7, SPLITS.index(split)])
    out = []
    for i, scene in enumerate(sample_scenes(seed, split, n_scenes)):
        instruction = DESCRIBE_INSTRUCTIONS[i % len(DESCRIBE_INSTRUCTIONS)]
        for response in (noisy_caption(scene, rng, noise), describe(true_mentions(scene), rng)):
            if rng.random() < hedge_prob:
                parts = response_sentences(response)
                parts.insert(int(rng.integers(len(parts) + 1)), HEDGES[int(rng.integers(len(HEDGES)))])
                response = " ".join(parts)
            out.append((instruction, response))
    return out


def sentence_conversations(
    response: str, statements_prompt: str = WORLD_STATEMENTS_PROMPT, questions_prompt: str = WORLD_QUESTIONS_PROMPT
) -> list[Conversation]:
    """Both calls for every sentence of one response, answered by the RuleSplitter: the ground-truth format.

    Call (a) maps a sentence to its statements (or "none"); call (b) maps those statements to their questions.
    """
    rules = RuleSplitter()
    conversations: list[Conversation] = []
    for sentence in response_sentences(response):
        try:
            claims = rules.split_one("", sentence)
        except BadInput:
            claims = []
        statements = numbered([s for s, _ in claims]) if claims else NO_CLAIMS
        a = statements_prompt.format(instruction="", response=response, sentence=sentence)
        conversations.append([{"role": "user", "content": a}, {"role": "assistant", "content": statements}])
        if claims:
            b = questions_prompt.format(statements=statements)
            questions = numbered([q for _, q in claims])
            conversations.append([{"role": "user", "content": b}, {"role": "assistant", "content": questions}])
    return conversations


def splitter_examples(
    seed: int,
    n: int,
    split: str = "train",
    statements_prompt: str = WORLD_STATEMENTS_PROMPT,
    questions_prompt: str = WORLD_QUESTIONS_PROMPT,
) -> list[Conversation]:
    """Chat-formatted training pairs for both splitter calls, from the world responses of `n` scenes.

    Two responses per scene, about 3.5 sentences each, about 6.5 conversations per response (one (a) per sentence,
    one (b) per sentence with claims): roughly 13 conversations per scene.
    """
    conversations: list[Conversation] = []
    for _, response in world_responses(seed, split, n):
        conversations.extend(sentence_conversations(response, statements_prompt, questions_prompt))
    return conversations


def encode_conversation(tokenizer: PreTrainedTokenizerFast, conversation: Conversation) -> Pair:
    """(prompt ids, target ids): the prompt exactly as `LLMSplitter` renders it, the target = the rest (with EOS).

    The prompt is the template's generation prompt, so training sees the very token boundary that generation
    starts from; the target is what the full conversation adds after it.
    """
    prompt = tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template's generation prompt is not a prefix of the full conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids, target_ids


def collate(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels only on target tokens, so the loss teaches the answer, not the prompt."""
    return text_batch(pairs, pad_id)


def length_batches(pairs: list[Pair], batch_size: int, rng: np.random.Generator, window: int = 16) -> list[list[Pair]]:
    """Full, shuffled batches of similar length: sorting within windows of `window` batches cuts padding while
    batches stay random mixes of both calls. The remainder that does not fill a batch is left out."""
    order = rng.permutation(len(pairs) - len(pairs) % batch_size)
    batches = []
    for start in range(0, len(order), batch_size * window):
        chunk = sorted(order[start : start + batch_size * window], key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        batches.extend([pairs[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def build_splitter(
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 384,
    max_positions: int = 512,
    init_std: float = 0.05,
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama over the tokenizer's vocabulary (head_dim = hidden / heads = 32).

    `init_std` above Llama's 0.02 default: at width 128 the default leaves attention near-uniform for hundreds of
    steps; from 0.05 the copy heads a splitter needs formed about twice as fast (measured on whole responses).
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    set_generation_ids(model, tokenizer)
    return model


def train_splitter(
    seed: int,
    out: Path,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    device: str = "cpu",
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    layers: int = 2,
) -> dict:
    """Train the world splitter from scratch and save it where `LLMSplitter(out)` loads it; returns training stats.

    The defaults take seconds on two CPU cores and agree with the RuleSplitter on held-out responses (measured by
    `benchmarks/splitter_agreement.py`; benchmarks/RESULTS.md). Each example is seen once
    (fresh scenes, no epochs). `tokenizer` defaults to the world's `build_tokenizer(seed)`;
    pass the one in hand to skip rebuilding it.
    """
    start = time.perf_counter()
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(seed)
    conversations = splitter_examples(seed, math.ceil(steps * batch_size / 12))
    pairs = [encode_conversation(tokenizer, c) for c in conversations]
    batches = length_batches(pairs, batch_size, np.random.default_rng([seed, 8]))[:steps]
    model = build_splitter(tokenizer, seed, layers=layers).to(device)
    losses = _fit(model, batches, lr, tokenizer.pad_token_id, device)
    save_splitter(model.cpu(), tokenizer, out)
    return {
        "examples": sum(len(b) for b in batches),
        "steps": len(batches),
        "first_loss": float(np.mean(losses[:5])),
        "final_loss": float(np.mean(losses[-10:])),
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _fit(model: LlamaForCausalLM, batches: list[list[Pair]], lr: float, pad_id: int, device: str) -> list[float]:
    """AdamW, one step per batch; the loss is the mean cross-entropy of the target tokens."""
    steps = len(batches)
    opt = adamw(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, max(1, steps // 10)))
    model.train()
    losses = []
    for chunk in batches:
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        loss = model(**batch).loss  # mean over the target positions of the (B, T) labels
        optimizer_step(model, loss, opt, sched)
        losses.append(loss.item())
    model.eval()
    return losses


def save_splitter(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Safetensors weights, config, tokenizer (with its chat template) and how the model is to be called."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    settings = {"unit": WORLD_UNIT, "statements_prompt": WORLD_STATEMENTS_PROMPT,
                "questions_prompt": WORLD_QUESTIONS_PROMPT}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


__all__ = [
    "HEDGES", "WORLD_QUESTIONS_PROMPT", "WORLD_STATEMENTS_PROMPT", "WORLD_UNIT", "build_splitter",
    "encode_conversation", "save_splitter", "sentence_conversations", "splitter_examples", "train_splitter",
    "world_responses",
]
