"""A local Hugging Face chat causal LM: prompts in, text out (the in-process counterpart of engines.openai_chat).

Each prompt is one user turn in the model's own chat template. Prompts are batched in order of length, so a batch
pads little, and left-padded so every row's next token sits in the last column. Greedy decoding at temperature 0
(deterministic); otherwise sampling at `temperature` with `top_p`, seeded per `generate` call.
"""

from __future__ import annotations

from pathlib import Path

from rlaifv.engines.loading import load_weights

DTYPES = ("float32", "bfloat16", "float16")


class HFChat:
    """A chat model loaded here; `generate` answers many prompts, each with whether it finished in time."""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 0.9,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if batch_size < 1 or temperature < 0 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1 and temperature >= 0")
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.seed = batch_size, seed
        self.path = str(model_path)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model_path}: the tokenizer has no chat template; a chat model is needed")
        self.model = load_weights(AutoModelForCausalLM, model_path, getattr(torch, dtype), trust_remote_code).to(
            self.device)
        self.model.eval()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) - {None}
        return ids | {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else ids

    def chat_text(self, prompt: str) -> str:
        """One user turn plus the assistant's generation prompt, in the model's own chat template."""
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, prompts: list[str]) -> list[tuple[str, bool]]:
        """`chat` with the decoding settings this model was loaded with."""
        return self.chat(prompts, self.max_new_tokens, self.temperature, self.top_p, self.seed)

    def chat(self, prompts: list[str], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> list[tuple[str, bool]]:
        """engines.base.TextLLM: (text, finished) per prompt, in the caller's order; finished = the model ended its
        answer before `max_tokens`. Prompts run shortest first, `batch_size` at a time; sampling is seeded once per
        call."""
        import torch

        if not prompts:
            return []
        texts = [self.chat_text(p) for p in prompts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out: list[tuple[str, bool]] = [("", False)] * len(texts)
        if temperature > 0:
            torch.manual_seed(self.seed if seed is None else seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            for i, result in zip(rows, self._generate_batch([texts[i] for i in rows], max_tokens, sampling)):
                out[i] = result
        return out

    def _generate_batch(self, texts: list[str], max_tokens: int, sampling: dict) -> list[tuple[str, bool]]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            seqs = self.model.generate(
                **enc, max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )  # (B, T_prompt + T_new)
        new = seqs[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        finished = [any(t in self.eos_ids for t in row) for row in new.tolist()]
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return list(zip(decoded, finished))
