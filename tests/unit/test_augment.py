"""Random crops and flips of image minibatches: what they produce, and that each replica's stream
is its own, reproducible, resumable and independent of the other replicas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from elastic_entropy.augment import Augmentation, augmentation_seeds

SEEDS = augmentation_seeds(0, range(3))


def _images(batch: int = 64, channels: int = 3, size: int = 8, seed: int = 0) -> Tensor:
    # strictly positive, so a padded zero in a window can be told from a pixel
    return (
        torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) + 1
    )


def _windows(padded: Tensor, size: int) -> list[Tensor]:
    """Every size x size window of one padded image, as it is and flipped left to right."""
    span = padded.shape[-1] - size + 1
    crops = [padded[:, i : i + size, j : j + size] for i in range(span) for j in range(span)]
    return crops + [crop.flip(-1) for crop in crops]


def test_every_output_is_a_window_of_the_zero_padded_input_flipped_or_not() -> None:
    x = _images(batch=32, size=6)
    out = Augmentation(SEEDS, "cpu", crop_padding=2)(x, replica=0)
    assert out.shape == x.shape and torch.equal(x, _images(batch=32, size=6))  # x untouched
    padded = torch.nn.functional.pad(x, [2] * 4)
    for image, result in zip(padded, out):
        assert any(torch.equal(result, window) for window in _windows(image, 6))
    # and not always the centred window: the crops shift
    assert not torch.equal(out, x) and (out == 0).any()


def test_no_padding_and_no_flip_is_off_and_returns_the_input() -> None:
    off = Augmentation(SEEDS, "cpu", crop_padding=0, flip=False)
    x = _images()
    assert not off.enabled and off(x, 0) is x and off.state_dict() == {"states": []}
    flip_only = Augmentation(SEEDS, "cpu", crop_padding=0)
    out = flip_only(x, 0)
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(out, x))


def test_the_same_seeds_give_the_same_batches_and_replicas_differ() -> None:
    x = _images()
    first, second = Augmentation(SEEDS, "cpu"), Augmentation(SEEDS, "cpu")
    for _ in range(3):
        assert torch.equal(first(x, 1), second(x, 1))
    assert not torch.equal(first(x, 0), first(x, 1))
    assert len(set(SEEDS)) == len(SEEDS) and augmentation_seeds(0, [2]) == SEEDS[2:]


def test_a_state_taken_mid_stream_continues_bitwise_in_a_fresh_augmentation() -> None:
    x = _images()
    run = Augmentation(SEEDS, "cpu")
    for _ in range(5):
        run(x, 0), run(x, 2)
    saved = run.state_dict()
    resumed = Augmentation(SEEDS, "cpu")
    resumed.load_state_dict(saved)
    for _ in range(4):
        for replica in range(3):
            assert torch.equal(run(x, replica), resumed(x, replica))
    with pytest.raises(ValueError, match="saved for 3 replicas, this process has 1"):
        Augmentation(SEEDS[:1], "cpu").load_state_dict(saved)


def test_about_half_the_images_are_flipped() -> None:
    size = 8
    x = _images(batch=2000, channels=1, size=size)
    out = Augmentation(SEEDS, "cpu", crop_padding=0)(x, 0)
    flipped = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_a_replicas_stream_does_not_depend_on_the_other_replicas() -> None:
    s0, s1 = SEEDS[:2]
    x = _images()
    both, alone = Augmentation([s0, s1], "cpu"), Augmentation([s1], "cpu")
    for _ in range(3):
        both(x, 0)  # the neighbour's draws do not move replica 1's stream
        assert torch.equal(both(x, 1), alone(x, 0))


def test_non_images_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]; this data's minibatch is \[4, 40\]"):
        Augmentation(SEEDS, "cpu")(torch.zeros(4, 40), 0)
    with pytest.raises(ValueError, match="crop padding: -1"):
        Augmentation(SEEDS, "cpu", crop_padding=-1)
