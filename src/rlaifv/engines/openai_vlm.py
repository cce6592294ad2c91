"""Model compute on OpenAI-compatible servers (vLLM, SGLang): the `openai` engine kind.

The same plain-terms interface as engines.hf.HFEngine -- `sample`, `generate`, `yes_no`, `yes_no_shared` -- so every
stage runs unchanged whether its model is loaded here or served elsewhere. The servers do the batching and the
prefix caching (vLLM reuses an image's KV cache across requests that share it); this engine keeps many requests in
flight, spread over every URL (`concurrency` per URL), retries timeouts, connection errors, 429 and 5xx with
backoff (engines.openai_chat), and turns a refused request (any other 4xx: context too long, unreadable image) into
a BadInput for that record alone, which the stage quarantines with the server's message.

Judging reads the verdict from one generated token's logprobs (chat completions, max_tokens=1, temperature 0):
log-probabilities under the model's full softmax, before any sampling transform, summed over the spellings in
YES_VARIANTS / NO_VARIANTS that are one token -- the numbers the HF engine computes. On vLLM the engine asks for
exactly those tokens: it looks their ids up once through the server's `/tokenize` endpoint (the HF engine's
single-token rule) and sends them as `logprob_token_ids` (with `return_tokens_as_token_ids`), so every spelling's
full-vocabulary logprob comes back whatever its rank -- exact (vLLM 0.32 matches transformers to ~1e-8 in fp32).
A server without `/tokenize` (OpenAI's API, for one) is read from its `top_logprobs` alternatives by token text, and
an older vLLM that ignores `logprob_token_ids` answers with its top alternatives too; a spelling outside them counts
as 0, which understates P_yes and P_no by up to that spelling's probability (< the last listed one's): negligible
for a confident labeler, but a flat next-token distribution (an untrained model) loses several 1e-3. Prompt
logprobs of a forced answer would be exact there too, but need one request per spelling and a completions endpoint
with the chat template applied here.

Sampling asks for `n` choices per prompt with the stage's decoding setting and a per-prompt seed derived from the
batch seed, so a rerun asks for the same samples (vLLM makes seeded requests reproducible on one server setup;
another GPU count or version may change the floats). Token counts come from the returned per-token logprobs; vLLM
lists the end-of-sequence token there when a choice stops on it (finish_reason "stop", stop_reason null), and that
token is not counted, so counts are the generated tokens before EOS, as the HF engine counts them. vLLM shortens
`max_tokens` to what fits in --max-model-len after the prompt; only a prompt that alone is too long is refused.
"""

from __future__ import annotations

import base64
import io
import json
import math
import queue
import threading
import time
import urllib.error
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from rlaifv.config import EngineConfig
from rlaifv.engines.base import NO_VARIANTS, YES_VARIANTS, Sampling, first_answers
from rlaifv.engines.openai_chat import ChatClient, ChatError, ChatRefused, ChatSettings, answer_text
from rlaifv.records import BadInput, ResponseScore


def image_url(image: Image.Image) -> str:
    """The image as a PNG data URL, which every OpenAI-compatible VLM server accepts inline."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def user_message(url: str, question: str) -> list[dict[str, Any]]:
    """One user turn: the image first, then the question (the order HFEngine's chat template uses)."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def prompt_messages(example: Any, image: Image.Image) -> list[dict[str, Any]]:
    """A preference pair's prompt (preferences.PreferenceExample) as OpenAI chat messages: its conversational turns
    with the image placeholder made a data URL, or one user turn (image, question). A pair given as final text
    (TRL's plain-text rows) is BadInput: a server applies its own chat template."""
    if example.formatted:
        raise BadInput("a served model needs chat turns, not a prompt already formatted as text")
    if not example.messages:
        return user_message(image_url(image), example.prompt.question)
    url = image_url(image)
    out = []
    for turn in example.messages:
        content = turn["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": url}} if part.get("type") == "image" else part
                       for part in content]
        out.append({**turn, "content": content})
    return out


def prompt_seed(batch_seed: int | None, index: int, n: int = 1) -> int | None:
    """The seed of the batch's `index`-th request of `n` choices, within vLLM's int64 range.

    vLLM seeds choice j of a request seeded s with s + j, so requests are spaced n apart: with a spacing of 1,
    prompt i's choice j and prompt i+1's choice j-1 would draw from one random stream."""
    if batch_seed is None:
        return None
    return (batch_seed * 1_000_003 + index * n) % (2**63 - 1)


def verdict_probs(top: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(P_yes, P_no) from one position's top logprobs, by token text: each verdict's spellings summed, absent ones 0."""
    p_yes = sum(math.exp(t["logprob"]) for t in top if t["token"] in YES_VARIANTS)
    p_no = sum(math.exp(t["logprob"]) for t in top if t["token"] in NO_VARIANTS)
    return p_yes, p_no


def verdict_probs_by_id(top: Sequence[dict[str, Any]], yes_ids: Sequence[int],
                        no_ids: Sequence[int]) -> tuple[float, float]:
    """(P_yes, P_no) from logprobs returned as "token_id:N" (vLLM's `return_tokens_as_token_ids`); absent ids 0."""
    logprobs = {int(t["token"].removeprefix("token_id:")): t["logprob"] for t in top
                if t["token"].startswith("token_id:")}
    p_yes = sum(math.exp(logprobs[i]) for i in yes_ids if i in logprobs)
    p_no = sum(math.exp(logprobs[i]) for i in no_ids if i in logprobs)
    return p_yes, p_no


def server_root(url: str) -> str:
    """'http://host:8000' from a base URL ('.../v1') or a full '.../v1/chat/completions' endpoint."""
    url = url.rstrip("/").removesuffix("/chat/completions").rstrip("/")
    return url.removesuffix("/v1")


def wait_until_served(cfg: EngineConfig, timeout_s: float,
                      sleep: Callable[[float], None] = time.sleep) -> dict[str, str | None]:
    """Block until every URL's `GET /models` lists `cfg.model`; per URL the model's `root` (vLLM: the folder it
    loaded). RuntimeError after `timeout_s` naming the URLs that are not ready."""
    clients = {url: ChatClient(ChatSettings(url=url, model=cfg.model, api_key_env=cfg.api_key_env, timeout_s=10))
               for url in cfg.urls}
    roots: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for url, client in clients.items():
            if url in roots:
                continue
            try:
                listed = client.get_once(url.rstrip("/").removesuffix("/chat/completions") + "/models")
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for entry in listed.get("data") or []:
                if entry.get("id") == cfg.model:
                    roots[url] = entry.get("root")
        if len(roots) == len(clients):
            return roots
        if time.monotonic() > deadline:
            waiting = ", ".join(u for u in clients if u not in roots)
            raise RuntimeError(f"{cfg.model} is not served at {waiting} after {timeout_s:.0f} s")
        sleep(1.0)


class OpenAIEngine:
    """A VLM served behind one or more OpenAI-compatible URLs."""

    def __init__(self, cfg: EngineConfig, sleep: Callable[[float], None] | None = None) -> None:
        if cfg.kind != "openai":
            raise ValueError(f"OpenAIEngine needs an engine config of kind 'openai', got {cfg.kind!r}")
        self.cfg = cfg
        self.path = cfg.name
        extra = {} if sleep is None else {"sleep": sleep}
        self.clients = [ChatClient(ChatSettings(url=url, model=cfg.model, api_key_env=cfg.api_key_env,
                                                timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                                                concurrency=cfg.concurrency), **extra) for url in cfg.urls]
        self._slots: queue.Queue[ChatClient] = queue.Queue()
        for _ in range(cfg.concurrency):
            for client in self.clients:
                self._slots.put(client)
        self._labels: tuple[list[int], list[int]] | None | bool = False  # False: not looked up yet
        self._labels_lock = threading.Lock()

    def label_ids(self) -> tuple[list[int], list[int]] | None:
        """Ids of the single-token yes and no spellings, from the first server's `/tokenize` (vLLM), looked up once;
        None where the server has no such endpoint (judging then reads `top_logprobs` by token text). A server that
        does not answer raises ChatError, so one run never mixes exact and top-k verdicts."""
        with self._labels_lock:
            if self._labels is False:
                self._labels = self._lookup_label_ids()
            return self._labels  # type: ignore[return-value]

    def _lookup_label_ids(self) -> tuple[list[int], list[int]] | None:
        endpoint = server_root(self.cfg.urls[0]) + "/tokenize"

        def single(variants: tuple[str, ...]) -> list[int]:
            ids: list[int] = []
            for v in variants:
                answer = self.clients[0].post({"model": self.cfg.model, "prompt": v, "add_special_tokens": False},
                                              endpoint)
                tokens = answer.get("tokens") or []
                if len(tokens) == 1 and tokens[0] not in ids:
                    ids.append(tokens[0])
            return ids

        try:
            yes, no = single(YES_VARIANTS), single(NO_VARIANTS)
        except ChatRefused as exc:
            if exc.status in (401, 403):  # a wrong key fails everything else too: say so now
                raise
            return None  # no usable /tokenize (not vLLM): judge from top_logprobs
        if not yes or not no:
            raise ValueError(f"{self.cfg.model}: the tokenizer has no single-token spelling of yes/no among "
                             f"{YES_VARIANTS + NO_VARIANTS}; it cannot be used as a yes/no labeler")
        return yes, no

    def _post(self, body: dict[str, Any]) -> dict[str, Any] | BadInput:
        """The answer to one request on whichever URL has a free slot; a refused request becomes BadInput."""
        client = self._slots.get()
        try:
            return client.post({"model": self.cfg.model, **body})
        except ChatRefused as exc:
            return BadInput(str(exc))
        finally:
            self._slots.put(client)

    def _post_all(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | BadInput]:
        """Every request at once (up to concurrency x URLs in flight), answers in request order. A request that
        fails after every retry (a server down) raises ChatError: the stage stops, its stored shards stay, and a
        rerun sends only what is missing."""
        if not bodies:
            return []
        workers = min(len(bodies), self.cfg.concurrency * len(self.clients))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._post, bodies))

    def fast_paths(self) -> dict[str, dict]:
        """engines.base.VLM: none here -- the server computes as it computes."""
        return {}

    def sample(self, images: list[Image.Image], questions: list[str], n: int, sampling: Sampling,
               seed: int | None = None) -> list[list[tuple[str, int]] | BadInput]:
        """n responses per (image, question), one request each with `n` choices and one decoding setting: (text,
        generated tokens before the end of the turn) per choice, or BadInput when the server refused the prompt.
        Greedy decoding asks for one choice and repeats it n times (vLLM refuses n > 1 at temperature 0; the n
        greedy answers are equal anyway, as the HF engine's are)."""
        asked = n if sampling.do_sample else 1
        bodies = []
        for i, (image, question) in enumerate(zip(images, questions)):
            body = {"messages": user_message(image_url(image), question), "n": asked,
                    "max_tokens": sampling.max_new_tokens, "logprobs": True}
            if sampling.do_sample:
                body |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": -1}
                if (s := prompt_seed(seed, i, n)) is not None:
                    body["seed"] = s
            else:
                body |= {"temperature": 0.0}
            bodies.append(body)
        out = [_choices(answer, asked) for answer in self._post_all(bodies)]
        return [rows if isinstance(rows, BadInput) else rows * (n // asked) for rows in out]

    def generate(self, images: list[Image.Image], questions: list[str], sampling: Sampling) -> list[tuple[str, int]]:
        """One response per (image, question); a refused prompt raises its BadInput."""
        return first_answers(self.sample(images, questions, 1, sampling))

    def chat(self, prompts: list[str], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> list[tuple[str, bool] | BadInput]:
        """A text-only user turn per prompt (the server applies the model's chat template): (answer, finished) --
        finished: it ended before `max_tokens` -- or BadInput where the server refused the prompt. Greedy at
        temperature 0; otherwise sampled with `top_p`, each request seeded from `seed` and its index."""
        bodies = []
        for i, prompt in enumerate(prompts):
            body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                                    "temperature": temperature}
            if temperature > 0:
                body |= {"top_p": top_p} | ({} if seed is None else {"seed": prompt_seed(seed, i)})
            bodies.append(body)
        return [a if isinstance(a, BadInput) else (answer_text(a, self.path), _finished(a))
                for a in self._post_all(bodies)]

    def yes_no(self, images: list[Image.Image], questions: list[str]) -> list[tuple[float, float] | BadInput]:
        """(P_yes, P_no) of the answer's first token for each (image, question), or BadInput where refused."""
        labels = self.label_ids() if images else None
        extra = {} if labels is None else {"logprob_token_ids": labels[0] + labels[1],
                                           "return_tokens_as_token_ids": True}
        urls: dict[int, str] = {}  # one data URL per distinct image object
        bodies = [{"messages": user_message(urls.setdefault(id(image), image_url(image)), q), "max_tokens": 1,
                   "temperature": 0.0, "logprobs": True, "top_logprobs": self.cfg.top_logprobs, **extra}
                  for image, q in zip(images, questions)]
        return [a if isinstance(a, BadInput) else _verdict(a, labels) for a in self._post_all(bodies)]

    def yes_no_shared(self, groups: list[tuple[Image.Image, list[str]]], questions_per_pack: int = 64,
                      packs_per_forward: int = 8) -> list[list[tuple[float, float] | BadInput]]:
        """`yes_no` for every question of every image, all requests in flight together; the server's prefix cache
        shares each image's encoding across its questions (the packing arguments are the HF engine's and unused)."""
        flat = [(image, q) for image, qs in groups for q in qs]
        probs = self.yes_no([image for image, _ in flat], [q for _, q in flat])
        out, k = [], 0
        for _, qs in groups:
            out.append(probs[k : k + len(qs)])
            k += len(qs)
        return out

    def response_logps(self, items: list[tuple[list[dict[str, Any]], list[str]]],
                       limit: int | None = None) -> list[list[ResponseScore]]:
        """Per (prompt messages, answers): each answer's summed log-prob under the served model, read from vLLM's
        prompt logprobs (`prompt_logprobs`, `return_token_ids`) of the conversation that ends with it.

        The answer's tokens are those after the prompt's: one request renders the user turn with the generation
        prompt (the prefix ids), one per answer renders user + assistant turns as the chat template closes them
        (end-of-turn included: the tokens logps.encode and the local scorer count), so the numbers are the local
        scorer's. Each answer is a full prefill on the server: vLLM does not read its prefix cache for a request
        that asks for prompt logprobs. An empty answer, one whose prompt + answer exceeds `limit` tokens, or one
        the server refuses is set aside with the reason; a refused prompt sets aside all its answers."""
        bodies, plan = [], []  # plan: per item, (index of its prefix request, per answer its request index or None)
        for turn, texts in items:
            first = len(bodies)
            bodies.append({"messages": turn, "max_tokens": 1, "temperature": 0.0, "return_token_ids": True})
            where = []
            for text in texts:
                if not text.strip():
                    where.append(None)
                    continue
                where.append(len(bodies))
                bodies.append({"messages": [*turn, {"role": "assistant", "content": text}],
                               "add_generation_prompt": False, "max_tokens": 1, "temperature": 0.0,
                               "prompt_logprobs": 0, "return_token_ids": True})
            plan.append((first, where))
        answers = self._post_all(bodies)
        out = []
        for first, where in plan:
            prefix = answers[first]
            row = []
            for at in where:
                if at is None:
                    row.append(ResponseScore(None, (), "empty response"))
                elif isinstance(prefix, BadInput) or isinstance(answers[at], BadInput):
                    why = prefix if isinstance(prefix, BadInput) else answers[at]
                    row.append(ResponseScore(None, (), f"refused by the server: {why}"))
                else:
                    row.append(_answer_logp(_prompt_ids(prefix), answers[at], limit))
            out.append(row)
        return out


def _choices(answer: dict[str, Any] | BadInput, n: int) -> list[tuple[str, int]] | BadInput:
    if isinstance(answer, BadInput):
        return answer
    try:
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        rows = [((c["message"]["content"] or "").strip(), _n_tokens(c)) for c in choices]
    except (KeyError, TypeError) as exc:
        raise ChatError(f"answer without choices[i].message.content ({exc}): {json.dumps(answer)[:300]}") from None
    if len(rows) != n:
        raise ChatError(f"asked for {n} choices, the server returned {len(rows)}")
    return rows


def _finished(answer: dict[str, Any]) -> bool:
    """Whether the first choice ended by itself rather than at `max_tokens`."""
    return answer["choices"][0].get("finish_reason") == "stop"


def _n_tokens(choice: dict[str, Any]) -> int:
    """Generated tokens before EOS. vLLM lists the EOS token among a choice's logprobs when the choice stopped on it
    (finish_reason "stop" with stop_reason null; a stop string or stop token id sets stop_reason); servers without
    `stop_reason` (OpenAI) list only the text's tokens."""
    n = len((choice.get("logprobs") or {}).get("content") or [])
    if n and choice.get("finish_reason") == "stop" and "stop_reason" in choice and choice["stop_reason"] is None:
        n -= 1
    return n


def _verdict(answer: dict[str, Any], labels: tuple[list[int], list[int]] | None) -> tuple[float, float] | BadInput:
    """(P_yes, P_no) of one answer; BadInput (the question is quarantined) where the returned logprobs hold no yes
    and no no token: asked for by id they must be there, and a verdict read from nothing would be a silent 'no'."""
    try:
        top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ChatError(f"answer without choices[0].logprobs.content[0].top_logprobs ({exc}); does the server "
                        f"return logprobs? {json.dumps(answer)[:300]}") from None
    if labels is None:
        p_yes, p_no = verdict_probs(top)
        if not any(t.get("token") in YES_VARIANTS + NO_VARIANTS for t in top):
            return BadInput(f"neither yes nor no among the server's {len(top)} top logprobs")
        return p_yes, p_no
    returned = {t.get("token") for t in top}
    missing = [i for i in (*labels[0], *labels[1]) if f"token_id:{i}" not in returned]
    if missing:
        return BadInput(f"the server's logprobs lack the yes/no token ids it was asked for: {missing}")
    return verdict_probs_by_id(top, *labels)


def _prompt_ids(answer: dict[str, Any]) -> list[int]:
    ids = answer.get("prompt_token_ids")
    if not ids:
        raise ChatError("the server returned no prompt_token_ids; scoring answers needs vLLM's return_token_ids "
                        f"and prompt_logprobs: {json.dumps(answer)[:300]}")
    return ids


def _answer_logp(prefix: list[int], answer: dict[str, Any], limit: int | None) -> ResponseScore:
    """The answer's ids (the full prompt's after `prefix`) and the sum of their prompt logprobs."""
    full = _prompt_ids(answer)
    if full[: len(prefix)] != prefix:
        raise ChatError("the server renders the prompt differently once an assistant turn follows it, so the "
                        "answer's tokens cannot be told apart from the prompt's")
    ids = tuple(full[len(prefix) :])
    if limit is not None and len(full) > limit:
        return ResponseScore(None, ids, f"too long: prompt {len(prefix)} + response {len(ids)} = {len(full)} "
                                        f"tokens > {limit} (max_length)")
    per_position = answer.get("prompt_logprobs")
    if not per_position or len(per_position) != len(full):
        raise ChatError(f"asked for prompt logprobs of {len(full)} tokens, the server returned "
                        f"{len(per_position or [])}")
    try:
        logp = sum(per_position[i][str(t)]["logprob"] for i, t in enumerate(full) if i >= len(prefix))
    except (KeyError, TypeError) as exc:
        raise ChatError(f"prompt logprobs without the prompt's own token ({exc})") from None
    return ResponseScore(logp, ids, "")
