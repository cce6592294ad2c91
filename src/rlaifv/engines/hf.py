"""Model compute on a local Hugging Face VLM (`AutoModelForImageTextToText` + `AutoProcessor`).

Stages talk to this engine in plain terms -- images, questions, texts, probabilities -- so the same stage runs on any
HF VLM the processor's chat template supports. `trust_remote_code` stays off unless the caller asks for it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from rlaifv.engines.base import NO_VARIANTS, YES_VARIANTS, Sampling, first_answers
from rlaifv.engines.decode import decode_from_cache
from rlaifv.engines.family import Vision, family_of, packed_inputs, vision_of
from rlaifv.engines.fastpath import report, trusted
from rlaifv.engines.images import ImageBank
from rlaifv.engines.loading import load_vlm
from rlaifv.engines.packing import common_prefix_length, pack, pack_bounds
from rlaifv.records import BadInput

NON_FINITE = "the policy's logits were not finite (NaN or inf)"  # why a prompt could not be sampled
QUESTION_SLOT = "\ue000question\ue001"  # private-use characters no prompt contains: where a question goes


def _whole(samples: list[tuple[str, int] | None]) -> list[tuple[str, int]] | BadInput:
    """A prompt's n samples, or BadInput when any met non-finite logits: a prompt's samples are kept together."""
    return BadInput(NON_FINITE) if any(s is None for s in samples) else samples  # type: ignore[return-value]


def _non_finite(exc: RuntimeError) -> bool:
    """Whether `exc` is torch.multinomial refusing NaN/inf probabilities."""
    return "probability tensor contains" in str(exc)


def single_token_ids(tokenizer, variants: tuple[str, ...]) -> list[int]:
    """Ids of the variants that encode to exactly one token (a two-token ' yes' cannot be read from one step)."""
    ids = []
    for v in variants:
        enc = tokenizer(v, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def split_by_image(outputs: dict[str, torch.Tensor], n: int) -> list[Vision] | None:
    """A batched processor output as one dict per image (batch dim 1); None where a tensor's first dimension is not
    the image count (e.g. patches of all images flattened together)."""
    if any(v.shape[0] != n for v in outputs.values()):
        return None
    return [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(n)]


def splice_image_run(raw: list[list[int]], expanded0: list[int], image_id: int | None) -> list[list[int]] | None:
    """Each of `raw` (prompts tokenized with one image placeholder each) with the placeholder replaced by the run of
    image tokens the processor put in `expanded0` (the first prompt, expanded); None if that does not reproduce
    `expanded0` or a prompt does not hold exactly one placeholder."""
    if image_id is None or any(r.count(image_id) != 1 for r in raw):
        return None
    at = raw[0].index(image_id)
    run = expanded0[at : at + len(expanded0) - len(raw[0]) + 1]
    rows = [r[: r.index(image_id)] + run + r[r.index(image_id) + 1 :] for r in raw]
    return rows if rows[0] == expanded0 else None


class HFEngine:
    """A VLM loaded from a folder (or hub id), in eval mode, with a left-padding processor for batched decoding."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
    ) -> None:
        model, processor = load_vlm(path, dtype, torch.device(device), trust_remote_code)
        self._setup(str(path), model, processor)

    @classmethod
    def from_model(cls, model, processor, name: str = "in-memory") -> HFEngine:
        """An engine around a model already in memory (benchmarks, freshly trained checkpoints)."""
        engine = cls.__new__(cls)
        engine._setup(name, model, processor)
        return engine

    def _setup(self, path: str, model, processor) -> None:
        self.path = path
        self.device = next(model.parameters()).device
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model = model.eval()
        family_of(model)  # refuses a family whose answers cannot be scored as continuations
        self._frame: tuple[str, str, str] | None = None  # (head, placeholder, tail) of the chat template
        self._nested_images = False  # whether the processor wants one image list per prompt (`process`)
        self.yes_ids = single_token_ids(self.tokenizer, YES_VARIANTS)
        self.no_ids = single_token_ids(self.tokenizer, NO_VARIANTS)
        # an answer ends at the model's end-of-sequence token(s), the tokenizer's, or padding
        eos = model.generation_config.eos_token_id
        self.stop_ids = {t for t in (*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id,
                                     self.tokenizer.pad_token_id) if t is not None}
        if not self.yes_ids or not self.no_ids:
            raise ValueError(
                f"{path}: the tokenizer has no single-token spelling of yes/no among {YES_VARIANTS + NO_VARIANTS}; "
                "it cannot be used as a yes/no labeler"
            )

    def prompt_text(self, question: str) -> str:
        """The chat template rendered around one image and one question, ready for the assistant's answer."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def prompt_texts(self, questions: list[str]) -> list[str]:
        """`prompt_text` of each question, the template rendered once.

        Rendering a Jinja chat template costs about as much as the tiny labeler's forward per question, and judging
        renders one prompt per claim. The template is rendered around a placeholder and each question put in its
        place; the first and last questions are rendered in full and compared, so a template that changes the text
        it is given (trims, escapes, branches on it) is rendered question by question instead.
        """
        if not questions:
            return []
        first = self.prompt_text(questions[0])
        if self._frame is None:  # the template around the placeholder, rendered once per engine
            self._frame = self.prompt_text(QUESTION_SLOT).partition(QUESTION_SLOT)
        head, found, tail = self._frame
        checks = {questions[0]: first, questions[-1]: self.prompt_text(questions[-1])}  # first and last rendered
        if not found or QUESTION_SLOT in tail or any(head + q + tail != text for q, text in checks.items()):
            return [first] + [self.prompt_text(q) for q in questions[1:]]
        # a template may strip the text: questions with outer whitespace are rendered in full
        return [first] + [head + q + tail if q == q.strip() else self.prompt_text(q) for q in questions[1:]]

    def process(self, texts: list[str], images: list[Image.Image], **kwargs):
        """The processor on prompts with one image each, its model inputs only (a processor that adds training
        `labels` would make the forward compute a loss). Some processors (Gemma3, Idefics3) read a flat list of
        several images as all belonging to the first prompt and want one list per prompt; the first call that fails
        flat is retried nested, and the engine keeps to what worked."""
        if not self._nested_images:
            try:
                out = self.processor(text=texts, images=images, **kwargs)
            except (ValueError, TypeError, IndexError):
                if len(images) < 2:
                    raise
                self._nested_images = True
        if self._nested_images:
            out = self.processor(text=texts, images=[[image] for image in images], **kwargs)
        out.pop("labels", None)
        return out

    def _inputs(self, images: list[Image.Image], questions: list[str]) -> dict[str, torch.Tensor]:
        texts = self.prompt_texts(questions)
        enc = self.process(texts, images, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def _decode(self, new: torch.Tensor) -> list[tuple[str, int]]:
        """(text, tokens before EOS) per row of generated ids (B, T_new)."""
        results = []
        for row in new.tolist():
            n = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            results.append(self._answer(row[:n]))
        return results

    def _answer(self, ids: list[int]) -> tuple[str, int]:
        """(text, token count) of an answer's ids, the stop token already cut off."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids)

    def fast_paths(self) -> dict[str, dict]:
        """engines.base.VLM: the fast-path verdicts taken on this engine's model."""
        return report(self.model)

    @torch.no_grad()
    def generate(self, images: list[Image.Image], questions: list[str], sampling: Sampling) -> list[tuple[str, int]]:
        """One response per (image, question): (text, number of generated tokens before EOS)."""
        return first_answers(self.sample(images, questions, 1, sampling))

    @torch.no_grad()
    def sample(
        self, images: list[Image.Image], questions: list[str], n: int, sampling: Sampling, seed: int | None = None
    ) -> list[list[tuple[str, int]] | BadInput]:
        """n responses per (image, question), all with one decoding setting; the prompt is prefilled once. A prompt
        whose logits turn non-finite (NaN or inf) while it is sampled is a BadInput; the others are sampled as usual.

        The prompts (image tokens included) run through the model once; their KV cache is repeated n times and
        the n samples decode from it (`decode_from_cache`) -- unlike `num_return_sequences`, which prefills every
        sample again. With `seed`, the torch RNG is seeded first, so the same batch gives the same samples. On a
        model whose shared prefill does not match its plain forward (engines.fastpath), `generate` samples instead.
        """
        enc = self._inputs(images, questions)
        shared = n > 1 and trusted(self.model, "sample.shared_prefill", lambda: self._first_step(enc),
                                   lambda: self._plain_next(enc))
        if seed is not None:
            torch.manual_seed(seed)
        if not shared:  # `generate` prepares any model's positions and masks itself
            kwargs = {"max_new_tokens": sampling.max_new_tokens, "do_sample": sampling.do_sample}
            if sampling.do_sample:
                kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
                           "num_return_sequences": n}
            try:
                out = self.model.generate(**enc, **kwargs)  # (B * n, T + T_new) sampled, (B, T + T_new) greedy
            except RuntimeError as exc:  # torch.multinomial on NaN/inf: find the prompt, let the others go on
                if not _non_finite(exc):
                    raise
                if len(questions) == 1:
                    return [BadInput(NON_FINITE)]
                return [one for i in range(len(questions))
                        for one in self.sample(images[i:i + 1], questions[i:i + 1], n, sampling, seed)]
            texts = self._decode(out[:, enc["input_ids"].shape[1] :])
            if not sampling.do_sample:  # greedy: the n answers of a prompt are one answer
                texts = [t for t in texts for _ in range(n)]
            return [texts[i * n : (i + 1) * n] for i in range(len(questions))]
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T) each, left-padded
        cache, positions = self._prefill(enc)
        cache.batch_repeat_interleave(n)  # (B * n) rows share each prompt's prefix
        # The cache covers all but the last prompt token, so decoding starts by feeding that token, and the image
        # features are never computed again.
        new = decode_from_cache(
            self.model, cache, ids[:, -1:].repeat_interleave(n, 0), mask.repeat_interleave(n, 0),
            positions[..., -1].repeat_interleave(n, -1), sampling.max_new_tokens, self.stop_ids,
            sampling.temperature if sampling.do_sample else None, sampling.top_p,
        )
        texts = [self._answer(row) if row is not None else None for row in new]
        return [_whole(texts[i * n : (i + 1) * n]) for i in range(len(questions))]

    def _prefill(self, enc: dict[str, torch.Tensor]):
        """(KV cache of every prompt token but the last, positions (B, T) or (3, B, T) of all prompt tokens), the
        positions and text-aligned inputs built as the model's own forward would (engines.family)."""
        family = family_of(self.model)
        ids, mask, vision = enc["input_ids"], enc["attention_mask"], vision_of(enc)
        positions = family.prompt_positions(ids, mask, vision)
        prefill = self.model(
            input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[..., :-1], use_cache=True,
            logits_to_keep=1, **family.aligned_inputs(ids[:, :-1]), **vision,
        )
        return prefill.past_key_values, positions

    def _first_step(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token probabilities (B, V) after the prompts, computed the shared-prefill way."""
        cache, positions = self._prefill(enc)
        logits = self.model(input_ids=enc["input_ids"][:, -1:], attention_mask=enc["attention_mask"],
                            position_ids=positions[..., -1:], cache=cache, use_cache=True).logits[:, -1]  # (B, V)
        return torch.softmax(logits.float(), -1)

    def _plain_next(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token probabilities (B, V) after the prompts from one plain forward."""
        return torch.softmax(self.model(**enc, logits_to_keep=1).logits[:, -1].float(), -1)

    def _verdict_probs(self, logits: torch.Tensor) -> list[tuple[float, float]]:
        """(P_yes, P_no) per row of next-token logits (N, V), each summed over the single-token spellings."""
        probs = torch.softmax(logits.float(), dim=-1)  # (N, V)
        p_yes = probs[:, self.yes_ids].sum(-1)  # (N,)
        p_no = probs[:, self.no_ids].sum(-1)  # (N,)
        return list(zip(p_yes.tolist(), p_no.tolist()))

    @torch.no_grad()
    def yes_no(self, images: list[Image.Image], questions: list[str]) -> list[tuple[float, float]]:
        """(P_yes, P_no) of the next token after each question: one forward per question, no free text."""
        enc = self._inputs(images, questions)
        # (B, V): left padding puts every prompt's end last; only that position goes through the LM head
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :]
        return self._verdict_probs(logits)

    def encode_groups(self, groups: list[tuple[Image.Image, list[str]]]) -> list[tuple[list[list[int]], Vision]]:
        """For each (image, questions): the token ids of each question's full prompt, and the image's processor
        outputs.

        One processor call expands every group's first prompt and preprocesses every image, and one tokenizer call
        reads all the prompts; the processor's run of image tokens then replaces the image placeholder in the
        group's other prompts (verified on the first). Where a processor expands differently or its outputs do not
        split by image, the group's prompts go through it one by one.
        """
        texts = [self.prompt_texts(questions) for _, questions in groups]
        images = [image for image, _ in groups]
        firsts = self.process([t[0] for t in texts], images, padding=True, return_tensors="pt")
        visions = split_by_image(vision_of(firsts), len(groups))
        raw_all = self.tokenizer([t for ts in texts for t in ts])["input_ids"]  # placeholders unexpanded
        image_id = getattr(self.model.config, "image_token_id", None)
        mask = firsts.get("attention_mask")  # needed to cut each first prompt's padding off
        out, at = [], 0
        for g, ts in enumerate(texts):
            raw, at = raw_all[at : at + len(ts)], at + len(ts)
            rows = vision = None
            if visions is not None and mask is not None:
                vision = visions[g]
                rows = splice_image_run(raw, firsts["input_ids"][g][mask[g].bool()].tolist(), image_id)
            if rows is None:  # this image alone through the processor; each prompt too if splicing fails
                one = self.process([ts[0]], [images[g]], return_tensors="pt")
                vision = vision_of(one)
                rows = splice_image_run(raw, one["input_ids"][0].tolist(), image_id) or [
                    list(self.process([t], [images[g]])["input_ids"][0]) for t in ts]
            out.append((rows, vision))
        return out

    @torch.no_grad()
    def yes_no_shared(
        self, groups: list[tuple[Image.Image, list[str]]], questions_per_pack: int = 64, packs_per_forward: int = 8
    ) -> list[list[tuple[float, float]]]:
        """(P_yes, P_no) for every question of every image: the image encoded once, the prompt prefix once per pack.

        Each image's prompts share a token prefix (the chat header and the image); the prefix goes once into a
        packed row followed by up to `questions_per_pack` question suffixes (engines.packing). The rows of all
        groups are ordered by length and run `packs_per_forward` at a time, so rows of one forward pad little; each
        image goes through the vision tower once. Equal to `yes_no` question by question, which serves instead on a
        model where the first groups' answers differ between the two (engines.fastpath).
        """
        probe = [(image, questions[:3]) for image, questions in groups if questions][:2]
        if not probe or trusted(
            self.model, "judge.packed", lambda: self._yes_no_packed(probe, questions_per_pack, packs_per_forward),
            lambda: [self.yes_no([image] * len(qs), qs) for image, qs in probe],
        ):
            return self._yes_no_packed(groups, questions_per_pack, packs_per_forward)
        per_forward = questions_per_pack * packs_per_forward
        out = []
        for image, questions in groups:
            out.append([p for lo in range(0, len(questions), per_forward)
                        for p in self.yes_no([image] * len(questions[lo : lo + per_forward]),
                                             questions[lo : lo + per_forward])])
        return out

    def _yes_no_packed(
        self, groups: list[tuple[Image.Image, list[str]]], questions_per_pack: int, packs_per_forward: int
    ) -> list[list[tuple[float, float]]]:
        packs, where = [], []
        encoded = self.encode_groups(groups)
        for g, (rows, _) in enumerate(encoded):
            n_prefix = common_prefix_length(rows) if len(rows) > 1 else len(rows[0]) - 1
            for lo, hi in pack_bounds([len(r) - n_prefix for r in rows], n_prefix, questions_per_pack):
                packs.append(pack(rows[lo][:n_prefix], [r[n_prefix:] for r in rows[lo:hi]]))
                where.append((g, lo))
        visions = [vision for _, vision in encoded]
        bank = ImageBank(self.model, visions, self.device)
        order = sorted(range(len(packs)), key=lambda i: len(packs[i]))
        out: list[list[tuple[float, float]]] = [[None] * len(q) for _, q in groups]  # type: ignore[list-item]
        for lo in range(0, len(order), packs_per_forward):
            chosen = order[lo : lo + packs_per_forward]
            batch_packs = [packs[i] for i in chosen]
            images = [where[i][0] for i in chosen]
            batch = packed_inputs(self.model, batch_packs, [visions[g] for g in images], self.tokenizer.pad_token_id,
                                  self.model.dtype, self.device, bank.inputs(images))
            ends = sorted({e for p in batch_packs for e in p.ends})
            logits = self.model(**batch, logits_to_keep=torch.tensor(ends, device=self.device)).logits  # (B, E, V)
            column = {e: i for i, e in enumerate(ends)}
            probs = iter(self._verdict_probs(torch.stack(
                [logits[b, column[e]] for b, p in enumerate(batch_packs) for e in p.ends])))  # (N, V) -> N pairs
            for i in chosen:
                g, first = where[i]
                for j in range(len(packs[i].ends)):
                    out[g][first + j] = next(probs)
        return out
