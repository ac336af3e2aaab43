"""The training loop shared by every fine-tune: AdamW, warm-up + schedule, clipping, response-only loss.

Example:
    >>> from deltalens.finetune.loop import lr_at
    >>> from deltalens.finetune import FinetuneConfig
    >>> lr_at(0, 100, FinetuneConfig(lr=1e-3, warmup_ratio=0.1))
    0.0001
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from deltalens.finetune.config import FinetuneConfig

Encoded = list[tuple[list[int], int]]
"""Examples as ``(token ids, number of prompt tokens)``; the loss covers the ids after the prompt."""


def lr_at(step: int, total: int, cfg: FinetuneConfig) -> float:
    warm = max(1, round(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (step - warm) / max(1, total - warm - 1)
    floor = cfg.min_lr_ratio * cfg.lr
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1 - frac)
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * frac))


def split_by_length(lengths: list[int], max_groups: int = 3, overhead: int = 128) -> list[list[int]]:
    """Split one batch into at most ``max_groups`` micro-batches of similar length.

    Minimises the padded token count plus ``overhead`` token-equivalents per extra forward pass
    (dynamic programming over the lengths sorted ascending). The union of the groups is the
    batch, so the summed gradient is the full batch's gradient, with less padding.

    Example:
        >>> [len(g) for g in split_by_length([17] * 26 + [41] * 6)]
        [26, 6]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    ls = [lengths[i] for i in order]
    n = len(ls)
    inf = float("inf")
    # best[g][j]: cost of the first j sorted items in g groups; cut[g][j]: start of the last group
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + (j - i) * ls[j - 1] + overhead
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, max_groups + 1), key=lambda k: best[k][n])
    groups, j = [], n
    while g > 0:
        i = cut[g][j]
        groups.append(order[i:j])
        j, g = i, g - 1
    return groups[::-1]


def _collate(batch: Encoded, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = t
        labels[i, n_prompt : len(ids)] = t[n_prompt:]
        mask[i, : len(ids)] = 1
    return input_ids, labels, (None if bool(mask.all()) else mask)


def batch_loss_backward(model: nn.Module, batch: Encoded, pad_id: int) -> float:
    """Forward and backward one batch; return its mean response-token cross-entropy.

    The batch runs as up to three micro-batches of similar length (``split_by_length``); each
    micro-batch's summed loss is divided by the whole batch's response-token count, so the
    accumulated gradient equals the full padded batch's gradient.
    """
    import torch.nn.functional as F

    n_tokens = sum(len(ids) - n_prompt for ids, n_prompt in batch)
    device = next(model.parameters()).device
    total = 0.0
    for members in split_by_length([len(ids) for ids, _ in batch]):
        input_ids, labels, mask = (
            None if t is None else t.to(device) for t in _collate([batch[i] for i in members], pad_id)
        )
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        (loss / n_tokens).backward()
        total += loss.item() / n_tokens
    return total


class ThreadTuner:
    """Pick 1 or 2 torch threads online from measured step times.

    On a shared machine two OpenMP threads can be several times slower than one (a parallel
    region waits for a descheduled thread); on a free machine they are faster. Every ``period``
    steps the tuner times up to ``window`` steps on 1 thread, then up to ``window`` on 2 (per
    response token, skipping step 0), and keeps the faster until the next probe. A 2-thread step
    1.5 times slower than the 1-thread median ends the probe at once, so a busy machine costs
    one slow step per period.

    Example:
        >>> tuner = ThreadTuner()
        >>> [tuner.threads_for(s) for s in (0, 4, 5, 8, 50)]   # probe 1, probe 2, then keep 1 until told
        [1, 1, 2, 2, 1]
    """

    def __init__(self, top: int = 2, window: int = 4, period: int = 200) -> None:
        self.top, self.window, self.period = top, window, period
        self.choice = 1
        self.samples: dict[int, list[float]] = {1: [], top: []}
        self.steps_on: dict[int, int] = {1: 0, top: 0}
        self._decided = -1  # the period whose probe is over

    def _probing(self, step: int) -> bool:
        return self.top > 1 and step % self.period <= 2 * self.window and self._decided != step // self.period

    def threads_for(self, step: int) -> int:
        if not self._probing(step):
            return self.choice
        return 1 if step % self.period <= self.window else self.top

    def record(self, step: int, threads: int, seconds_per_token: float) -> None:
        import statistics

        self.steps_on[threads] = self.steps_on.get(threads, 0) + 1
        if step == 0 or not self._probing(step):
            return
        self.samples[threads].append(seconds_per_token)
        one = statistics.median(self.samples[1]) if self.samples[1] else None
        if one is not None and threads == self.top and seconds_per_token > 1.5 * one:
            self._decide(step, 1)
        elif one is not None and step % self.period == 2 * self.window and self.samples[self.top]:
            self._decide(step, self.top if statistics.median(self.samples[self.top]) < 0.85 * one else 1)

    def _decide(self, step: int, choice: int) -> None:
        self.choice, self._decided = choice, step // self.period
        self.samples = {1: [], self.top: []}


def _optimizer(params: list[nn.Parameter], cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` with ``cfg``'s settings, fused where this torch build supports it."""
    import torch

    opt_kw: dict[str, Any] = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8)
    try:
        return torch.optim.AdamW(params, fused=True, **opt_kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **opt_kw)


def _tuner(cfg: FinetuneConfig) -> ThreadTuner:
    """A ``ThreadTuner`` that probes (``num_threads=None``) or always answers ``cfg.num_threads``."""
    tuner = ThreadTuner(top=1 if cfg.num_threads == 1 else 2)
    if cfg.num_threads is not None:
        tuner.choice = tuner.top
        tuner.period = 1 << 62
    return tuner


def _next_batch(
    encoded: Encoded, order: list[int], batch_size: int, gen: torch.Generator
) -> tuple[Encoded, list[int]]:
    """The next ``batch_size`` examples and the rest of the order (refilled with seeded permutations)."""
    import torch

    while len(order) < batch_size:
        order += torch.randperm(len(encoded), generator=gen).tolist()
    return [encoded[i] for i in order[:batch_size]], order[batch_size:]


def train_loop(
    model: nn.Module, encoded: Encoded, cfg: FinetuneConfig, pad_id: int, desc: str = "finetune"
) -> tuple[list[float], dict[int, int]]:
    """Train ``model`` in place on encoded examples.

    Returns:
        ``(losses, steps_per_thread_count)``: the loss of every step, and how many steps ran
        on 1 and on 2 threads (``cfg.num_threads=None`` lets a ``ThreadTuner`` choose).

    The loss is the mean cross-entropy over the response tokens of the batch. Data order comes
    from a generator seeded with ``cfg.seed``: successive random permutations of the examples.
    A batch of mixed lengths runs as up to three micro-batches of similar length whose summed
    loss is normalised by the batch's response-token count: the same gradient, less padding.
    """
    import torch
    from tqdm.auto import tqdm

    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(encoded) / cfg.batch_size))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    opt = _optimizer(params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    tuner = _tuner(cfg)
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not cfg.progress, leave=False, mininterval=1.0)
    for step in bar:
        batch, order = _next_batch(encoded, order, cfg.batch_size, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        threads = tuner.threads_for(step)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        total = batch_loss_backward(model, batch, pad_id)
        if not math.isfinite(total):
            raise FloatingPointError(f"the training loss became {total} at step {step}; lower lr")
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tuner.record(step, threads, (time.perf_counter() - t0) / sum(len(ids) for ids, _ in batch))
        losses.append(total)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{total:.4f}", refresh=False)
    bar.close()
    model.eval()
    return losses, {k: v for k, v in tuner.steps_on.items() if v}
