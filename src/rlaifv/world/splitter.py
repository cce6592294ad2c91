"""The synthetic world's splitter LM: a tiny Llama trained to do the paper's two splitter calls on world responses.

RLAIF-V fine-tunes a language model to split responses into claims and claims into yes/no questions. The world does
the same at toy scale, so the demo runs the `llm` splitter path for real: the targets come from the RuleSplitter
(exact on the world's language, see `rlaifv.feedback.split_rules`), formatted as the bullet lists that `LLMSplitter`
parses. The model reuses the world's byte-level BPE (`build_tokenizer`), whose chat template the VLMs also use.

The prompts are short on purpose: the model is tiny and a long instruction would only cost sequence length. They
are saved beside the weights (`splitter_prompts.json`), so `LLMSplitter(path)` picks them up by itself.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlaifv.feedback.split_llm import PROMPTS_FILE, numbered, response_sentences
from rlaifv.feedback.split_rules import RuleSplitter
from rlaifv.world.language import DESCRIBE_INSTRUCTIONS, CaptionNoise, describe, noisy_caption, true_mentions
from rlaifv.world.models import build_tokenizer
from rlaifv.world.scenes import sample_scenes

# Call (a): the instruction is kept (the paper's splitter sees the question too); call (b) reads (a)'s bullets.
WORLD_STATEMENTS_PROMPT = "Split: {instruction}\n{sentences}"
WORLD_QUESTIONS_PROMPT = "Ask:\n{statements}"

Conversation = list[dict[str, str]]  # [{"role": "user", ...}, {"role": "assistant", ...}]
Pair = tuple[list[int], list[int]]  # (prompt ids, target ids)


def world_responses(
    seed: int, split: str, n_scenes: int, noise: CaptionNoise = CaptionNoise()
) -> list[tuple[str, str]]:
    """(instruction, response) pairs as the policy would give them: a noisy caption and a true description per scene.

    Noisy captions are what the base policy learned to write (absent partners, habitual colors); true descriptions
    add the other sentence forms' full attribute sets. Both come from `describe`, so every sentence form appears.
    """
    rng = np.random.default_rng([seed, 7, len(split)])
    out = []
    for i, scene in enumerate(sample_scenes(seed, split, n_scenes)):
        instruction = DESCRIBE_INSTRUCTIONS[i % len(DESCRIBE_INSTRUCTIONS)]
        out.append((instruction, noisy_caption(scene, rng, noise)))
        out.append((instruction, describe(true_mentions(scene), rng)))
    return out


def splitter_examples(
    seed: int,
    n: int,
    split: str = "train",
    statements_prompt: str = WORLD_STATEMENTS_PROMPT,
    questions_prompt: str = WORLD_QUESTIONS_PROMPT,
) -> list[Conversation]:
    """Chat-formatted training pairs for both splitter calls, from the world responses of `n` scenes (4 per scene).

    Targets are the RuleSplitter's claims as bullet lists: call (a) maps a response to its statements, call (b) the
    statements to their questions, exactly the text `LLMSplitter` sends and parses.
    """
    rules = RuleSplitter()
    conversations: list[Conversation] = []
    for instruction, response in world_responses(seed, split, n):
        claims = rules.split_one(instruction, response)
        statements = numbered([s for s, _ in claims])
        questions = numbered([q for _, q in claims])
        lines = numbered(response_sentences(response))
        a = statements_prompt.format(instruction=instruction, response=response, sentences=lines)
        b = questions_prompt.format(statements=statements)
        conversations.append([{"role": "user", "content": a}, {"role": "assistant", "content": statements}])
        conversations.append([{"role": "user", "content": b}, {"role": "assistant", "content": questions}])
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
    width = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, T)
    for i, (p, t) in enumerate(pairs):
        input_ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        attention[i, : len(p) + len(t)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def build_splitter(
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    hidden: int = 128,
    layers: int = 3,
    heads: int = 4,
    intermediate: int = 384,
    max_positions: int = 512,
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama over the tokenizer's vocabulary (head_dim = hidden / heads = 32)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def train_splitter(
    seed: int,
    out: Path,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    device: str = "cpu",
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    layers: int = 3,
    statements_prompt: str = WORLD_STATEMENTS_PROMPT,
    questions_prompt: str = WORLD_QUESTIONS_PROMPT,
) -> dict:
    """Train the world splitter from scratch and save it where `LLMSplitter(out)` loads it; returns training stats.

    Each example is seen once (fresh scenes, no epochs), so the loss measures generalisation as it goes. `tokenizer`
    defaults to the world's `build_tokenizer(seed)`; pass the one in hand to skip rebuilding it.
    """
    start = time.perf_counter()
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(seed)
    n_scenes = math.ceil(steps * batch_size / 4)
    conversations = splitter_examples(seed, n_scenes, "train", statements_prompt, questions_prompt)
    pairs = [encode_conversation(tokenizer, c) for c in conversations]
    batches = length_batches(pairs, batch_size, np.random.default_rng([seed, 8]))[:steps]
    model = build_splitter(tokenizer, seed, layers=layers).to(device)
    losses = _fit(model, batches, lr, tokenizer.pad_token_id, device)
    save_splitter(model.cpu(), tokenizer, out, statements_prompt, questions_prompt)
    return {
        "examples": sum(len(b) for b in batches),
        "steps": len(batches),
        "first_loss": float(np.mean(losses[:5])),
        "final_loss": float(np.mean(losses[-10:])),
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def length_batches(pairs: list[Pair], batch_size: int, rng: np.random.Generator, window: int = 16) -> list[list[Pair]]:
    """Shuffled batches of similar length: sorting within windows of `window` batches cuts padding by about a third
    (sequences run from ~40 to ~190 tokens) while batches stay random mixes of both calls."""
    order = rng.permutation(len(pairs))
    batches = []
    for start in range(0, len(order), batch_size * window):
        chunk = sorted(order[start : start + batch_size * window], key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        batches.extend([pairs[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _fit(model: LlamaForCausalLM, batches: list[list[Pair]], lr: float, pad_id: int, device: str) -> list[float]:
    """AdamW, one step per batch; the loss is the mean cross-entropy of the target tokens."""
    steps = len(batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, max(1, steps // 10)))
    model.train()
    losses = []
    for chunk in batches:
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        loss = model(**batch).loss  # mean over target tokens of (B, T) labels
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def save_splitter(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out: Path,
    statements_prompt: str = WORLD_STATEMENTS_PROMPT,
    questions_prompt: str = WORLD_QUESTIONS_PROMPT,
) -> None:
    """Safetensors weights, config, tokenizer (with its chat template) and the prompt texts the model was taught."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    prompts = {"statements": statements_prompt, "questions": questions_prompt}
    (out / PROMPTS_FILE).write_text(json.dumps(prompts, indent=2) + "\n")


__all__ = [
    "WORLD_QUESTIONS_PROMPT", "WORLD_STATEMENTS_PROMPT", "build_splitter", "encode_conversation", "save_splitter",
    "splitter_examples", "train_splitter", "world_responses",
]
