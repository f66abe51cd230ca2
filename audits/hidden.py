"""Hidden-knowledge audits: does a short fine-tune, or a linear read-out of the features, bring
back what the unlearned model no longer shows on D_F? Each is asked of the ideal model too, in
the same way, so that only the gap to it means anything (the ideal model generalises to D_F).

* relearn (Siddiqui et al., "From Dormant to Deleted", NeurIPS 2025): fine-tune a copy on D_R
  only, with the relearning recipe of their code (shoaibahmed/vision_relearning: Adam, weight
  decay 0, batches of 128); report UA after it. They relearn at lr 1e-5 for 100 epochs of the
  training set; we run 5 epochs over D_R at lr 1e-4 (about a twentieth of the steps at ten times
  the lr) so that an audit costs seconds on a CPU. Both are flags (AuditBudget).
* relearn_time (SCRUB's `readout_retrain`, Kurmanji et al. 2023): rounds of 500 samples drawn
  with replacement, each taken in batches of 128 by plain SGD (lr 0.01, momentum 0, weight decay
  0), from D_R plus a seeded tenth of D_F (vision_relearning's relearn fraction); before each
  round, the accuracy on the other nine tenths of D_F. The answer is the number of rounds until
  that accuracy comes within 5 points of the original model's on the same samples (which is near
  100%, and which no model that never saw them reaches exactly), capped at 100 rounds (SCRUB's
  epochs); the cap means "not within the budget". SCRUB draws from the whole training set and
  stops at a forget loss of 0.1; we use the held-out accuracy the original reaches, as asked of
  a relearning audit, so that no forget sample counts that the fine-tune itself trained on.
* probe ("An Illusion of Unlearning?"): the features the classifier reads (the input of the
  model's last nn.Linear), frozen; a multinomial logistic regression fitted on D_R (at most
  10,000 samples, seeded) and D_V by full-batch L-BFGS on standardised features; UA of the
  probe on D_F. For class forgetting, D_V's samples of the forgotten class are the only ones it
  sees of that class.
* cka (as UUEF compares representations): linear CKA (Kornblith et al. 2019) between the
  model's and the ideal model's features on D_F; 1 is the ideal model's representation.

UA is 100 - accuracy on D_F, as everywhere in the toolkit.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from evaluation.accuracy import accuracy, logits_of
from unlearn.impl import Recipe, run
from unlearn.methods.common import last_linear
from unlearn.methods.ft import FT


def _f(default, text: str):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class AuditBudget:
    """Every audit's recipe and budget (the module docstring gives their sources); the scripts'
    --audit_NAME flags are generated from these fields."""

    relearn_epochs: int = _f(5, "relearn: epochs over D_R (default 5; Dormant to Deleted: 100 at lr 1e-5)")
    relearn_lr: float = _f(1e-4, "relearn: Adam learning rate (default 1e-4)")
    relearn_batch_size: int = _f(128, "relearn: batch size (default 128)")
    time_share: float = _f(0.1, "relearn_time: share of D_F it trains on, seeded (default 0.1); scored on the rest")
    time_lr: float = _f(0.01, "relearn_time: SGD learning rate, momentum 0 (default 0.01, SCRUB's readout)")
    time_round: int = _f(500, "relearn_time: samples per round, drawn with replacement (default 500)")
    time_batch_size: int = _f(128, "relearn_time: batch size (default 128)")
    time_cap: int = _f(100, "relearn_time: most rounds; the cap means not reached (default 100)")
    time_tolerance: float = _f(5.0, "relearn_time: done within this many points of the original's accuracy "
                                    "(default 5)")
    probe_max_retain: int = _f(10_000, "probe: most D_R samples it is fitted on, seeded (default 10000)")
    probe_l2: float = _f(1e-4, "probe: L2 penalty on its weights (default 1e-4)")
    probe_iterations: int = _f(100, "probe: L-BFGS iterations (default 100)")


def features(model: nn.Module, data, idx: Tensor, batch_size: int = 1024) -> Tensor:
    """Eval-mode inputs of the model's classifier (its last nn.Linear) for training samples `idx`."""
    _, _, head = last_linear(model)
    seen: list[Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().flatten(1)))
    try:
        with torch.no_grad():
            logits_of(model, data, data.x_train[idx], batch_size)
    finally:
        hook.remove()
    return torch.cat(seen) if seen else torch.empty(0, head.in_features, device=idx.device)


def forget_accuracy(model: nn.Module, data, idx: Tensor) -> float:
    with torch.no_grad():
        return accuracy(logits_of(model, data, data.x_train[idx]), data.y_train[idx])


def _fine_tune(model: nn.Module, data, idx: Tensor, recipe: Recipe, seed: int) -> nn.Module:
    """FT through the one loop (FT's term only: cross-entropy on the batches of `idx`)."""
    run(model, data, idx[:0], idx, FT(), recipe=recipe, seed=seed, progress=False)
    return model


def relearn(model: nn.Module, data, split, seed: int, budget: AuditBudget = AuditBudget(), **_) -> dict:
    """UA after fine-tuning a copy on D_R only."""
    net = copy.deepcopy(model)
    recipe = Recipe(lr=budget.relearn_lr, epochs=budget.relearn_epochs, batch_size=budget.relearn_batch_size,
                    optimizer="adam", momentum=0.0, weight_decay=0.0, augment=False)
    _fine_tune(net, data, split.retain, recipe, seed)
    return {"relearn_UA": 100 - forget_accuracy(net, data, split.forget)}


def relearn_parts(split, seed: int, share: float) -> tuple[Tensor, Tensor]:
    """(the seeded share of D_F that relearn_time trains on, the rest it is scored on)."""
    g = torch.Generator().manual_seed(seed)
    order = split.forget[torch.randperm(len(split.forget), generator=g).to(split.forget.device)]
    k = max(1, round(share * len(order)))
    return order[:k], order[k:]


def relearn_time(model: nn.Module, data, split, seed: int, budget: AuditBudget = AuditBudget(),
                 original: nn.Module | None = None, **_) -> dict:
    """Rounds of fine-tuning on D_R and a tenth of D_F until the other nine tenths are as accurate
    as under `original`, to within the tolerance (the cap when never within the budget)."""
    if original is None:
        raise ValueError("relearn_time needs the original model (the accuracy it must reach)")
    seen, held_out = relearn_parts(split, seed, budget.time_share)
    if len(held_out) == 0:
        raise ValueError(f"relearn_time: a forget set of {len(split.forget)} leaves nothing to score on")
    target = forget_accuracy(original, data, held_out) - budget.time_tolerance
    pool = torch.cat([split.retain, seen])
    g = torch.Generator().manual_seed(seed)
    recipe = Recipe(lr=budget.time_lr, epochs=1, batch_size=budget.time_batch_size, momentum=0.0, weight_decay=0.0,
                    augment=False)  # momentum 0: SGD keeps no state, so one run per round is one long run
    net = copy.deepcopy(model)
    rounds = 0
    while rounds < budget.time_cap and forget_accuracy(net, data, held_out) < target:
        draw = pool[torch.randint(len(pool), (budget.time_round,), generator=g).to(pool.device)]
        _fine_tune(net, data, draw, recipe, seed + rounds)
        rounds += 1
    return {"relearn_rounds": float(rounds)}


def fit_probe(train_x: Tensor, train_y: Tensor, num_classes: int, budget: AuditBudget) -> Callable[[Tensor], Tensor]:
    """A multinomial logistic regression by full-batch L-BFGS on standardised features; returns
    its logits function. Deterministic: no random draw."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    z = (train_x - mean) / std
    w = torch.zeros(z.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=budget.probe_iterations, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = nn.functional.cross_entropy(z @ w + b, train_y) + budget.probe_l2 * w.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    w, b = w.detach(), b.detach()
    return lambda x: ((x - mean) / std) @ w + b


def probe(model: nn.Module, data, split, seed: int, budget: AuditBudget = AuditBudget(), **_) -> dict:
    """UA of a linear probe on the frozen features, fitted on D_R (capped, seeded) and D_V."""
    g = torch.Generator().manual_seed(seed)
    retain = split.retain[torch.randperm(len(split.retain), generator=g)[:budget.probe_max_retain]
                          .to(split.retain.device)]
    train = torch.cat([retain, data.val_idx])
    head = fit_probe(features(model, data, train).cpu(), data.y_train[train].cpu(), data.num_classes, budget)
    logits = head(features(model, data, split.forget).cpu())
    return {"probe_UA": 100 - accuracy(logits, data.y_train[split.forget].cpu())}


def linear_cka(a: Tensor, b: Tensor) -> float:
    """Linear CKA of two feature matrices over the same samples (rows): 1 for representations equal up
    to a rotation and a scale, 0 for unrelated ones."""
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    cross = (b.T @ a).pow(2).sum()
    norm = (a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt()
    return float(cross / norm) if norm > 0 else float("nan")


def cka(model: nn.Module, data, split, seed: int, budget: AuditBudget = AuditBudget(),
        ideal: nn.Module | None = None, **_) -> dict:
    """Linear CKA between the model's and the ideal model's features on D_F (needs the ideal)."""
    if ideal is None:
        return {}
    return {"CKA_forget": linear_cka(features(model, data, split.forget), features(ideal, data, split.forget))}


AUDITS: dict[str, Callable[..., dict]] = {"relearn": relearn, "relearn_time": relearn_time, "probe": probe,
                                          "cka": cka}
# what each audit reports, and which way is better: the ideal model's value is the target, as for UA
POLARITY = {"relearn_UA": "closer to ideal", "relearn_rounds": "closer to ideal", "probe_UA": "closer to ideal",
            "CKA_forget": "higher", **{f"{k}_gap": "lower" for k in ("relearn_UA", "relearn_rounds", "probe_UA")}}


def run_audits(names: list[str], model: nn.Module, data, split, seed: int, budget: AuditBudget = AuditBudget(),
               **context) -> dict[str, float]:
    """The named audits of `model` (context: `original`, `ideal`, the models some audits read)."""
    unknown = [n for n in names if n not in AUDITS]
    if unknown:
        raise ValueError(f"unknown audit {', '.join(unknown)}; choose from {', '.join(AUDITS)}")
    found: dict[str, float] = {}
    for name in names:
        found |= AUDITS[name](model, data, split, seed, budget, **context)
    return found
