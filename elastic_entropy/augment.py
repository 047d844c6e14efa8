"""Training-time augmentation of image minibatches, on the device the data is held on.

The papers' CIFAR augmentation: a random crop of the image zero-padded by 4 pixels on each side
(a random shift of up to 4 pixels, filled with zeros) and a random horizontal flip. It is done
per minibatch, after the minibatch is gathered from the ``[N, C, H, W]`` training tensor by
index, in a few vectorised kernels (no loop over the samples).

Each replica draws its crops and flips from a generator of its own, seeded from the run's seed
and the replica's *global* index (:func:`augmentation_seeds`), so a replica's augmentation does
not depend on how many replicas there are in its process, nor on the layout; the generators'
states are saved and loaded so a resumed run augments as an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

# keeps augmentation's seeds apart from the other per-replica streams derived from the run seed
_STREAM = 0xA06


def augmentation_seeds(run_seed: int, replicas: Iterable[int]) -> list[int]:
    """One 63-bit seed per global replica index, from ``(run_seed, replica)`` alone: hashed by
    numpy's SeedSequence, so no two (seed, replica) pairs share a stream by arithmetic accident
    (``seed * K + replica`` collides when replicas outnumber K)."""
    return [
        int(np.random.SeedSequence([run_seed, replica, _STREAM]).generate_state(1, np.uint64)[0])
        >> 1
        for replica in replicas
    ]


class Augmentation:
    """Random crops (``crop_padding`` pixels of zero padding) and horizontal flips of image
    minibatches, one random stream per replica of this process.

    ``seeds[a]`` seeds local replica ``a``'s generator (from :func:`augmentation_seeds` with the
    global replica indices). ``enabled`` is False when neither a crop nor a flip is asked for:
    then a call returns its input and there is no state.

    Training minibatches only: evaluation and the BatchNorm refresh of the reference see the
    images as they are. The caller guarantees that (it calls this only in the training pass).
    """

    def __init__(
        self,
        seeds: list[int],
        device: torch.device | str,
        crop_padding: int = 4,
        flip: bool = True,
    ) -> None:
        if crop_padding < 0:
            raise ValueError(f"Invalid crop padding: {crop_padding} (must be >= 0)")
        self.padding = crop_padding
        self.flip = flip
        self.enabled = crop_padding > 0 or flip
        self.device = torch.device(device)
        # on the data's device: a CUDA generator draws where the minibatch is, with no copy
        self.generators = (
            [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
            if self.enabled
            else []
        )

    def __call__(self, x: Tensor, replica: int) -> Tensor:
        """Local replica ``replica``'s minibatch ``x`` ``[B, C, H, W]``, augmented (a new tensor;
        ``x`` is left as it is)."""
        if not self.enabled:
            return x
        if x.ndim != 4:
            raise ValueError(
                f"augmentation crops and flips images [B, C, H, W]; this data's minibatch is "
                f"{list(x.shape)}: turn augmentation off for it"
            )
        batch, channels, height, width = x.shape
        rows, cols = self._windows(batch, height, width, self.generators[replica])
        padded = torch.nn.functional.pad(x, [self.padding] * 4) if self.padding else x
        # out[b, c, i, j] = padded[b, c, rows[b, i], cols[b, j]], as two gathers (rows, then
        # columns): half the time of one four-index advanced indexing on a CPU
        size = (batch, channels, height, padded.shape[3])
        picked_rows = padded.gather(2, rows[:, None, :, None].expand(size))
        return picked_rows.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))

    def _windows(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Each sample's rows ``[B, H]`` and columns ``[B, W]`` in the padded image: a window
        at a random offset, its columns reversed for a flipped sample. Offsets are drawn before
        flips, both for the whole batch, so the stream's use depends on the batch size alone."""
        device = generator.device
        span = 2 * self.padding + 1
        offsets = torch.randint(0, span, (2, batch), generator=generator, device=device)
        rows = offsets[0][:, None] + torch.arange(height, device=device)
        cols = offsets[1][:, None] + torch.arange(width, device=device)
        if self.flip:
            flipped = torch.randint(0, 2, (batch, 1), generator=generator, device=device).bool()
            cols = torch.where(flipped, cols.flip(1), cols)
        return rows, cols

    def state_dict(self) -> dict[str, list[Tensor]]:
        """``{"states": [generator state of each local replica]}`` (CPU byte tensors)."""
        return {"states": [generator.get_state() for generator in self.generators]}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        states = state["states"]
        if len(states) != len(self.generators):
            raise ValueError(
                f"augmentation state saved for {len(states)} replicas, this process has "
                f"{len(self.generators)} (augmentation on: {self.enabled})"
            )
        for generator, saved in zip(self.generators, states):
            try:
                generator.set_state(saved.cpu())  # a state is a CPU tensor for every device
            except RuntimeError as error:  # a CPU generator's state does not fit a CUDA one
                raise ValueError(
                    f"augmentation state saved on another kind of device than {self.device}"
                ) from error
