"""Each method's recipe as its cited source runs it: optimizer, batch sizes, augmentation,
schedule and the per-setting choices (RL's passes, SSD's importance batches, BadTeacher's
share of D_R, EU-k's initial weights), resolved by `recipe_for` and `Method.configure`."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from dataset import TensorData
from models import create_model
from unlearn import METHODS, make
from unlearn.impl import Recipe, Stream, recipe_for, run
from unlearn.methods.common import Pass, Setting, last_linear, weight_layers

UNAUGMENTED = {"SCRUB", "NegGrad+", "CF-k", "EU-k", "BadTeacher"}  # their sources' loaders do not augment


def _images(n: int, size: int = 8, classes: int = 3, augment: str = "crop_flip") -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorData("tiny", x, y, x[:0], y[:0], torch.arange(n), torch.arange(0), classes,
                      torch.tensor([0.5]), torch.tensor([0.25]), augment)


def test_neggrad_plus_runs_the_large_scale_notebooks_recipe():
    """SCRUB's negative_grad / train_negrad: plain SGD (momentum 0, weight decay 0), lr 0.01, 5 epochs, retain
    batches of 32 each with a forget batch of 16, alpha 0.9999, no augmentation."""
    m, _ = make("NegGrad+")
    assert recipe_for(m) == Recipe(lr=0.01, epochs=5, batch_size=32, momentum=0.0, weight_decay=0.0,
                                   augment=False)
    assert m.alpha == 0.9999
    assert m.passes(0) == [Pass("retain", ("forget", "retain"), None, "", 16)]


def test_a_neggrad_plus_step_sees_32_retain_and_16_forget_samples(monkeypatch):
    data = _images(200)
    seen = []
    m, a = make("NegGrad+")
    losses = type(m).losses
    monkeypatch.setattr(type(m), "losses", lambda self, model, f, r, p: seen.append((len(f.y), len(r.y)))
                        or losses(self, model, f, r, p))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    run(model, data, torch.arange(40), torch.arange(40, 104), m, a, recipe_for(m, epochs=1), seed=0, progress=False)
    assert seen == [(16, 32), (16, 32)]  # one epoch: D_R (64) in batches of 32


@pytest.mark.parametrize("name", sorted(n for n, c in METHODS.items() if c.kind == "loop"))
def test_each_method_augments_as_its_source_and_the_stream_obeys(name):
    m, _ = make(name)
    recipe = recipe_for(m, original_epochs=3)
    assert recipe.augment == (name not in UNAUGMENTED), name
    data = _images(20, size=8)
    idx = torch.arange(20)
    stream = Stream(data, idx[:5], idx[5:], 0, torch.device("cpu"), recipe.augment)
    x = stream.draw(Pass("retain", ("retain",)), idx[5:13], None, 8)["retain"].x
    stored = data.batch(idx[5:13], train=False)[0]
    assert torch.equal(x, stored) == (not recipe.augment), name


def test_the_flag_overrides_a_methods_augmentation():
    m, _ = make("SCRUB")
    assert recipe_for(m, augment=True).augment is True
    m, _ = make("FT")
    assert recipe_for(m, augment=False).augment is False


def test_cf_k_and_eu_k_run_scrubs_batches_of_64_and_eu_k_the_originals_length_with_its_milestones():
    cf, _ = make("CF-k")
    assert recipe_for(cf) == Recipe(lr=0.01, epochs=10, batch_size=64, momentum=0.0, weight_decay=0.0,
                                    augment=False)
    eu, _ = make("EU-k")
    assert recipe_for(eu, original_epochs=30) == Recipe(lr=0.01, epochs=30, batch_size=64, momentum=0.0,
                                                        weight_decay=0.0, decreasing_lr=[10, 15, 20], augment=False)
    assert recipe_for(eu, original_epochs=30, epochs=4).epochs == 4
    with pytest.raises(ValueError, match="original model's training length"):
        recipe_for(eu)


def test_bad_teacher_distils_a_seeded_30_percent_of_the_retain_set():
    m, _ = make("BadTeacher")
    retain = torch.arange(100, 201)  # 101 samples: int(0.3 * 101) = 30
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    f, r = m.subset(torch.arange(5), retain, gen(1))
    assert torch.equal(f, torch.arange(5))
    assert len(r) == 30 and len(set(r.tolist())) == 30 and set(r.tolist()) <= set(retain.tolist())
    assert torch.equal(r, r.sort().values)
    assert torch.equal(r, m.subset(torch.arange(5), retain, gen(1))[1])
    assert not torch.equal(r, m.subset(torch.arange(5), retain, gen(2))[1])
    whole, _ = make("BadTeacher", retain_share=1.0)
    assert torch.equal(whole.subset(torch.arange(5), retain, gen(1))[1], retain)
    with pytest.raises(ValueError, match="retain_share"):
        make("BadTeacher", retain_share=0.0)


def test_a_bad_teacher_run_walks_the_forget_set_and_its_share_of_the_retain_set(monkeypatch):
    data = _images(150)
    rows = []
    m, a = make("BadTeacher")
    losses = type(m).losses
    monkeypatch.setattr(type(m), "losses", lambda self, model, f, r, p: rows.append(len(f.y) + len(r.y))
                        or losses(self, model, f, r, p))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    run(model, data, torch.arange(10), torch.arange(10, 150), m, a, recipe_for(m), seed=0, progress=False)
    assert sum(rows) == 10 + int(0.3 * 140)


@pytest.mark.parametrize("dataset, mode", [("cifar100", "union"), ("tinyimagenet", "union"), ("cifar10", "split"),
                                           ("svhn", "split"), ("digits", "split")])
def test_rl_picks_its_passes_per_data_set_as_unlearn_saliency_does(dataset, mode):
    m, _ = make("RL")
    assert m.rl_mode == "auto"
    m.configure(Setting(dataset))
    assert m.rl_mode == mode
    assert [p.over for p in m.passes(0)] == (["union"] if mode == "union" else ["forget", "retain"])
    given, _ = make("RL", rl_mode="split")
    given.configure(Setting("cifar100"))
    assert given.rl_mode == "split"


@pytest.mark.parametrize("forgotten, size", [(None, 128), (3, 64)])
def test_ssd_importances_use_the_batch_size_of_its_sources_loaders(forgotten, size):
    m, _ = make("SSD")
    m.configure(Setting("digits", forgotten))
    assert m.importance_batch_size == size
    given, _ = make("LFSSD", importance_batch_size=32)
    given.configure(Setting("digits", forgotten))
    assert given.importance_batch_size == 32


def test_ssd_walks_d_as_retain_then_forget():
    from unlearn.oneshot import Sets

    sets = Sets(nn.Linear(1, 1), None, torch.tensor([7, 2]), torch.tensor([0, 5, 9]), 4)
    assert sets.sets["train"].tolist() == [0, 5, 9, 7, 2]


def _smallcnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", 10, 1)


def test_eu_k_resets_its_layers_to_the_initial_weights_and_keeps_classifier_and_statistics():
    initial, trained = _smallcnn(1), _smallcnn(2)
    with torch.no_grad():  # "trained": every parameter and statistic away from its initial value
        for p in trained.parameters():
            p.add_(0.5)
        for m in trained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    m, _ = make("EU-k", k=3)
    m.configure(Setting("digits", None, lambda: _smallcnn(1)))
    m.adapt(trained, torch.Generator().manual_seed(0))
    groups, groups0 = weight_layers(trained), weight_layers(initial)
    classifier = last_linear(trained)[2]
    for i, (g, g0) in enumerate(zip(groups, groups0)):
        for mod, mod0 in zip(g, g0):
            for (n, p), (_, p0) in zip(mod.named_parameters(recurse=False), mod0.named_parameters(recurse=False)):
                reset = i >= len(groups) - 3 and mod is not classifier
                assert torch.equal(p, p0) == reset, (i, n)
    name = next(n for n, mod in trained.named_modules() if mod is classifier)
    assert torch.equal(classifier.weight, before[f"{name}.weight"])
    after = trained.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if "running" in k or "num_batches" in k)
    m.restore(trained)


def test_the_cli_rebuilds_the_originals_initial_weights_exactly(tmp_path):
    """main_baseline.py seeds torch right before building the model; the seed and architecture rebuild it."""
    from experiments import trainer
    from unlearn.api import initial_model

    args = trainer.build_parser("").parse_args(["--dataset", "digits", "--seed", "4", "--epochs", "1",
                                                "--save_dir", str(tmp_path)])
    _, _, _, _, model = trainer.setup(args)
    build = initial_model({"seed": 4, "arch": "smallcnn", "num_classes": 10}, 1, torch.device("cpu"))
    state = torch.get_rng_state()
    rebuilt = build()
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    assert initial_model({"seed": None, "arch": "smallcnn", "num_classes": 10}, 1, "cpu") is None
    assert isinstance(args, argparse.Namespace)
