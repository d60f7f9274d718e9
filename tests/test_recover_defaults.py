"""``recover``'s defaults: a learning rate that follows the student's width, and text batches of similar length."""

import random

import pytest

from interprune.data.loader import StepSampler
from interprune.recover import RecoverSettings, recover
from interprune.recover.data import grouped_sampler
from interprune.recover.settings import auto_lr

from .test_recover import FAST, bert, shrunk, text, text_model  # noqa: F401 (the text fixture)


def test_the_default_learning_rate_shrinks_with_width():
    assert auto_lr(192) == 1e-3 and auto_lr(16) == 1e-3  # capped
    assert auto_lr(384) == 5.2e-4 and auto_lr(2048) == 9.8e-5
    assert auto_lr(None) == 1e-3
    assert auto_lr(64, detector=True) == 1e-4  # a detector keeps the rate train fine-tunes it at
    assert RecoverSettings().lr is None and RecoverSettings(lr=3e-4).lr == 3e-4


@pytest.mark.parametrize("lr", [None, 3e-4])
def test_recover_records_the_learning_rate_it_used(tmp_path, text, lr):  # noqa: F811
    source = text_model(tmp_path / "bert", bert())
    small = shrunk(tmp_path, source, {"hidden_size": 16}, text)
    settings = RecoverSettings(steps=2, **{**FAST, "lr": lr})
    summary = recover(small, source, text, tmp_path / "out", settings, progress=False)
    assert summary["lr"] == (lr or 1e-3) and summary["settings"]["lr"] == lr


def _batches(sampler, batch):
    items = [i for i, _ in sampler]
    return [items[k:k + batch] for k in range(0, len(items), batch)]


def test_grouped_batches_hold_similar_lengths_and_resume_exactly():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    size, steps, batch = len(lengths), 250, 8  # two whole cycles
    grouped, plain = grouped_sampler(lengths, batch, steps, seed=1), StepSampler(size, batch, steps, seed=1)

    def padding(sampler):
        batches = _batches(sampler, batch)
        real = sum(lengths[i] for b in batches for i in b)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padding(plain) > 0.3 and padding(grouped) < 0.05
    items = [i for i, _ in grouped]
    for cycle in range(2):  # every example once per cycle, in another order each cycle
        assert sorted(items[cycle * size:(cycle + 1) * size]) == list(range(size))
    assert items[:size] != items[size:]
    assert items == [i for i, _ in grouped_sampler(lengths, batch, steps, seed=1)]  # a pure function of the seed
    assert items != [i for i, _ in grouped_sampler(lengths, batch, steps, seed=2)]
    resumed = grouped_sampler(lengths, batch, steps, seed=1)
    resumed.start = 100
    assert [i for i, _ in resumed] == items[100 * batch:]
    lengths_of = [[lengths[i] for i in b] for b in _batches(grouped, batch)[:30]]
    assert sorted(max(b) for b in lengths_of) != [max(b) for b in lengths_of]  # the batches are shuffled, not sorted
