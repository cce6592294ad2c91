"""The reference model's log-probs of every pair, computed once and stored beside the pairs.

DPO compares the policy's log-probs with a frozen reference model's. Computing the reference's once per round, before
training, means no reference model sits in memory while the policy trains (TRL refuses to precompute them for image
datasets). The pass writes `RefLogps` records to a sharded store (atomic shards: a killed pass loses at most one
unflushed shard and the rerun computes only what is missing) and quarantines, with a reason, every pair that cannot
train: rows the loader rejected, images that fail to load, pairs longer than the context, log-probs that came out
NaN or infinite.

The store sits beside the pairs (`<pairs>.reference-<fingerprint>`); the fingerprint covers what the numbers depend
on -- the reference model's folder and weight files, the precision and the length limit -- so a different reference
gets a different store instead of stale numbers.

The reference may also be served (an `openai` EngineConfig: a vLLM server with the reference model): its log-probs
then come from the server's prompt logprobs (engines.openai_vlm.OpenAIEngine.response_logps), with the tokens
counted as here, so no reference model is loaded on the training machine at all. A served reference is named by its
model and URL in the fingerprint; the server must keep serving the same weights under that name.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlaifv.config import DPOConfig, EngineConfig
from rlaifv.engines.family import family_of
from rlaifv.engines.loading import load_vlm
from rlaifv.engines.transfer import OneBehind, to_device, to_host_later
from rlaifv.logps.encode import EncodedPair, PairEncoder, ahead, context_length
from rlaifv.logps.packed import ResponseLogps, response_logps
from rlaifv.preferences import LoadedPairs, PreferenceExample, load_pairs, pair_store_root
from rlaifv.progress import progress
from rlaifv.prompts import load_image
from rlaifv.records import BadInput, RefLogps, reason_counts
from rlaifv.store import ShardedStore

STAGE = "reference"
SHARD_SIZE = 256


def weights_dtype(cfg: DPOConfig) -> torch.dtype:
    """Precision the weights are loaded in: bf16 only for LoRA's frozen base; trained weights stay fp32 masters.

    The reference is loaded like the policy, so at step 0 (policy = reference) both give the same log-probs.
    """
    return torch.bfloat16 if cfg.bf16 and cfg.use_peft else torch.float32


def load_model(path: str | Path, cfg: DPOConfig, device: torch.device | str = "cpu"):
    """A VLM from a folder or hub id, with the processor that goes with it."""
    model, processor = load_vlm(path, weights_dtype(cfg), device, cfg.trust_remote_code)
    family_of(model)  # refuses a family whose answers cannot be scored as continuations
    return model, processor


def length_limit(model_config: Any, cfg: DPOConfig) -> int | None:
    """The longest allowed prompt + response: max_length, capped by the model's context."""
    limits = [x for x in (cfg.max_length, context_length(model_config)) if x is not None]
    return min(limits) if limits else None


def fingerprint(reference: str | Path | EngineConfig, cfg: DPOConfig) -> dict[str, Any]:
    """What the reference log-probs depend on; a changed weight file (size or mtime) changes it."""
    if isinstance(reference, EngineConfig):
        return {"reference": reference.name, "served": True, "max_length": cfg.max_length}
    path = Path(reference)
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    return {
        "reference": str(path.resolve()) if path.exists() else str(reference),
        "weights": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "dtype": str(weights_dtype(cfg)),
        "bf16": cfg.bf16,
        "max_length": cfg.max_length,
    }


def reference_store(source: Path, reference: str | Path | EngineConfig, cfg: DPOConfig,
                    store_dir: Path | None = None) -> ShardedStore[RefLogps]:
    """The store of this source's reference log-probs: `store_dir`, else a folder beside the source."""
    if store_dir is None:
        source = Path(os.path.abspath(pair_store_root(Path(source)) or source))
        digest = hashlib.sha256(json.dumps(fingerprint(reference, cfg), sort_keys=True).encode()).hexdigest()[:12]
        store_dir = source.with_name(f"{source.name}.reference-{digest}")
    return ShardedStore(Path(store_dir), RefLogps, SHARD_SIZE, stage=STAGE)


def compute_reference_logps(
    pairs: Path | LoadedPairs,
    reference: str | Path | EngineConfig,
    cfg: DPOConfig,
    store_dir: Path | None = None,
    device: torch.device | str | None = None,
    timings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reference log-probs of every pair not yet in the store; returns counts and the store's path.

    Pairs go in fixed batches of `precompute_ref_batch_size` in source order; a batch with any missing pair is
    recomputed whole, so a resumed pass pads and batches exactly as an uninterrupted one and stores the same floats.
    The model is freed before returning. `timings`, if given, gets the seconds spent loading the model (`load_s`)
    and computing (`compute_s`: encoding, forwards and writing; 0 when nothing was missing), and per computed batch
    its number of pairs and the seconds since the batch before was stored (`batches`: [(pairs, seconds), ...]; the
    batches are pipelined, so this is the pace of the pass; the first holds the warm-up).
    """
    loaded = pairs if isinstance(pairs, LoadedPairs) else load_pairs(Path(pairs))
    store = reference_store(loaded.source, reference, cfg, store_dir)
    # a store named explicitly (`store_dir`) may hold another reference's numbers: refused, never mixed
    store.bind_config({"source": str(loaded.source), **fingerprint(reference, cfg)}, deliberate=None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and not cfg.use_cpu else "cpu"))
    counts = {"done": 0, "skipped": 0, "quarantined": 0}
    with store.writer() as writer:
        for key, reason, row in loaded.bad:
            if key not in writer:
                writer.quarantine(key, reason, row)
                counts["quarantined"] += 1
        todo = [e for e in loaded.examples if e.key not in writer]
        counts["skipped"] = len(loaded.examples) - len(todo)
        clock: dict[str, Any] = {"load_s": 0.0, "compute_s": 0.0, "batches": []}
        if todo and isinstance(reference, EngineConfig):
            _compute_served(loaded.examples, reference, cfg, writer, counts, clock)
        elif todo:
            _compute(loaded.examples, reference, cfg, device, writer, counts, clock)
        if timings is not None:
            timings.update(clock)
    return {**counts, "store": str(store.root), "pairs": len(loaded.examples)}


def _compute(examples: list[PreferenceExample], reference: str | Path, cfg: DPOConfig, device: torch.device,
             writer, counts: dict[str, int], clock: dict[str, Any]) -> None:
    start = time.perf_counter()
    model, processor = load_model(reference, cfg, device)
    model.eval()
    _synchronize(device)
    clock["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    encoder = PairEncoder(processor, length_limit(model.config, cfg))
    pad_id = processor.tokenizer.pad_token_id
    size = cfg.precompute_ref_batch_size or cfg.per_device_train_batch_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    batches = [examples[lo : lo + size] for lo in range(0, len(examples), size)]
    todo = [b for b in batches if not all(e.key in writer for e in b)]

    def encode(batch: list[PreferenceExample]) -> tuple[list[PreferenceExample], list[EncodedPair], list]:
        bad: list[tuple[PreferenceExample, str]] = []  # quarantined by the caller: the writer is not thread-safe
        return batch, encode_batch(encoder, batch, lambda e, reason: bad.append((e, reason))), bad

    with progress("reference log-probs", len(examples)) as bar:
        bar.advance(len(examples) - sum(len(b) for b in todo))
        flushed = time.perf_counter()

        def store(batch: list[PreferenceExample], encoded: list[EncodedPair], wait) -> None:
            nonlocal flushed
            chosen, rejected = (t.tolist() for t in wait())
            examples = {e.key: e for e in batch}
            for i, pair in enumerate(encoded):
                if pair.key in writer:
                    continue
                if reason := non_finite(chosen[i], rejected[i]):
                    _quarantine(writer, examples[pair.key], reason, counts)
                    continue
                writer.add(RefLogps(pair.key, chosen[i], rejected[i], len(pair.chosen_ids), len(pair.rejected_ids)))
                counts["done"] += 1
            clock["batches"].append((len(encoded), time.perf_counter() - flushed))
            flushed = time.perf_counter()
            bar.advance(len(batch), status=f"{counts['done']} pairs")

        # The next batch is encoded on a background thread, and its forward is queued before this batch's
        # results are read, so the device always has a batch to run while the host stores the previous one.
        encoded_batches = ahead(todo, encode, background=device.type != "cpu")
        with OneBehind(store) as behind, closing(encoded_batches):
            for batch, encoded, bad in encoded_batches:
                for example, reason in bad:
                    _quarantine(writer, example, reason, counts)
                if encoded:
                    with torch.no_grad(), autocast:
                        out = response_logps(model, encoded, pad_id)
                    behind.push((batch, encoded, to_host_later([out.chosen.float(), out.rejected.float()])))
                else:
                    bar.advance(len(batch), status=f"{counts['done']} pairs")
    _synchronize(device)
    clock["compute_s"] = time.perf_counter() - start
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _compute_served(examples: list[PreferenceExample], reference: EngineConfig, cfg: DPOConfig, writer,
                    counts: dict[str, int], clock: dict[str, Any]) -> None:
    """The reference pass on a server: each pair's prompt once for its token ids, chosen and rejected through
    prompt logprobs; a pair the server refuses (too long for its context, an unreadable image) is quarantined."""
    from rlaifv.engines.openai_vlm import OpenAIEngine, prompt_messages

    engine = OpenAIEngine(reference)
    start = time.perf_counter()
    size = cfg.precompute_ref_batch_size or cfg.per_device_train_batch_size
    with progress("reference log-probs (served)", len(examples)) as bar:
        for lo in range(0, len(examples), size):
            batch = [e for e in examples[lo : lo + size] if e.key not in writer]
            items, ready = [], []
            for e in batch:
                try:
                    items.append((prompt_messages(e, load_image(e.prompt)), [e.chosen, e.rejected]))
                    ready.append(e)
                except BadInput as exc:
                    _quarantine(writer, e, str(exc), counts)
            for e, (chosen, rejected) in zip(ready, engine.response_logps(items, cfg.max_length)):
                if chosen.reason or rejected.reason:
                    which = "chosen" if chosen.reason else "rejected"
                    _quarantine(writer, e, f"{which}: {chosen.reason or rejected.reason}", counts)
                    continue
                if reason := non_finite(chosen.logp, rejected.logp):
                    _quarantine(writer, e, reason, counts)
                    continue
                writer.add(RefLogps(e.key, chosen.logp, rejected.logp, len(chosen.ids), len(rejected.ids)))
                counts["done"] += 1
            bar.advance(len(examples[lo : lo + size]), status=f"{counts['done']} pairs")
    clock["compute_s"] = time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def non_finite(chosen: float, rejected: float) -> str:
    """Why a pair's reference log-probs cannot train ("" when both are numbers): a NaN or an infinity from the
    model would make every DPO loss it enters NaN, so the pair is quarantined instead of stored."""
    if math.isfinite(chosen) and math.isfinite(rejected):
        return ""
    return f"non-finite log-prob (chosen {chosen}, rejected {rejected})"


def encode_batch(encoder: PairEncoder, batch: list[PreferenceExample], on_bad) -> list[EncodedPair]:
    """Load and encode each example; `on_bad(example, reason)` gets the ones that cannot train."""
    encoded = []
    for example in batch:
        try:
            encoded.append(encoder(example, load_image(example.prompt)))
        except BadInput as exc:
            on_bad(example, str(exc))
    return encoded


def _quarantine(writer, example: PreferenceExample, reason: str, counts: dict[str, int]) -> None:
    if example.key not in writer:
        row = {"prompt_id": example.prompt.prompt_id, "image": example.prompt.image,
               "question": example.prompt.question, "chosen": example.chosen, "rejected": example.rejected}
        writer.quarantine(example.key, reason, row)
        counts["quarantined"] += 1


@dataclass
class ReferenceTable:
    """A finished reference pass: log-probs by pair key, and the quarantined keys with their reasons."""

    logps: dict[str, RefLogps]
    quarantined: dict[str, str]  # key -> reason

    def reasons(self) -> dict[str, int]:
        """Quarantined pairs counted by kind of reason ("too long", "image file not found", ...)."""
        return reason_counts(self.quarantined.values())

    def batch(self, keys: list[str], device: torch.device) -> ResponseLogps:
        rows = [self.logps[k] for k in keys]

        def column(name: str, dtype: torch.dtype) -> torch.Tensor:
            return to_device(torch.tensor([getattr(r, name) for r in rows], dtype=dtype), device)  # (B,)

        return ResponseLogps(column("chosen_logp", torch.float32), column("rejected_logp", torch.float32),
                             column("chosen_tokens", torch.long), column("rejected_tokens", torch.long))


def read_reference(store: ShardedStore[RefLogps], loaded: LoadedPairs) -> ReferenceTable:
    """The store's numbers for the loaded pairs; raises if a pair is neither computed nor quarantined."""
    table = ReferenceTable({r.pair_key: r for r in store.read()},
                           {q.record_key: q.reason for q in store.read_quarantine()})
    missing = [e.key for e in loaded.examples if e.key not in table.logps and e.key not in table.quarantined]
    if missing:
        raise ValueError(f"{store.root}: no reference log-probs for {len(missing)} pairs (e.g. {missing[0]}); "
                         "run the reference pass first")
    return table
