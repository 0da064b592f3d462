"""Training on square crops of the scaled images, labelled by the defect masks.

A blowhole of ten pixels on a 300-pixel tile is a few per mille of the image: trained whole,
most of every step is spent on surface that is good in both kinds of image. A crop that
holds the defect makes it a larger share of what the network sees, and a crop of a defect
image that misses the defect is a good example (its mask says so), so each defect image also
teaches what its own surroundings look like. The network is fully convolutional with a pooled
head, so it is still served on whole images at every scale; only training sees crops. Crops
are cut after the image is scaled and normalised as a whole, so an image standardised by its
own mean and deviation ("image" normalisation) is normalised as it will be when served.

Crops need masks: without one, a crop that misses a small defect would be taught as that
defect. A defect image without a mask in a set that has them keeps its label and is not
supervised by location (``known`` False), as whole-image training does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from inspector.errors import ConfigurationError


@dataclass(frozen=True)
class CropSampler:
    """Where to cut each image of a batch, and the label of what is cut.

    ``on_defect`` is the share of defect images whose crop is placed on a random pixel of the
    defect (anywhere within the crop); the others, and every good image, are cut around a
    uniformly random pixel. A crop without a defect pixel becomes the good class; with no good
    class, defect images are always cut on their defect.
    """

    size: int
    good_index: int | None
    on_defect: float = 0.75

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ConfigurationError(f"crop size must be at least 32 pixels, got {self.size}")
        if not 0.0 <= self.on_defect <= 1.0:
            raise ConfigurationError(f"on_defect must be in [0, 1], got {self.on_defect}")

    def _origin(
        self, mask: torch.Tensor, known: bool, defect: bool, rng: random.Random
    ) -> tuple[int, int]:
        h, w = mask.shape
        c = self.size
        aim = known and defect and (self.good_index is None or rng.random() < self.on_defect)
        points = mask.nonzero() if aim else None
        if points is None or len(points) == 0:
            # Centred on a uniformly random pixel, then moved inside the image: the image's
            # own edges are in a good share of the crops, as they are in every whole image
            # served. (A uniform origin would hold the top row only once in h - c + 1 crops,
            # and the network would learn that a tile's edge is where breaks are.)
            top = min(max(0, rng.randrange(h) - c // 2), h - c)
            left = min(max(0, rng.randrange(w) - c // 2), w - c)
            return top, left
        y, x = (int(v) for v in points[rng.randrange(len(points))])
        # Any origin that keeps (y, x) inside the crop and the crop inside the image.
        top = rng.randint(max(0, y - c + 1), min(y, h - c))
        left = rng.randint(max(0, x - c + 1), min(x, w - c))
        return top, left

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
        known: torch.Tensor,
        rng: random.Random,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (N, C, H, W), labels, masks (N, H, W), known) cut to ``size`` squares."""
        n, _, h, w = images.shape
        c = self.size
        if h < c or w < c:
            raise ConfigurationError(f"crop {c} is larger than the scaled image ({h}x{w})")
        out_images = torch.empty((n, images.shape[1], c, c), dtype=images.dtype).contiguous(
            memory_format=torch.channels_last
        )
        out_masks = torch.empty((n, c, c), dtype=masks.dtype)
        out_labels = labels.clone()
        for i in range(n):
            is_known, label = bool(known[i]), int(labels[i])
            top, left = self._origin(masks[i], is_known, label != self.good_index, rng)
            out_images[i] = images[i, :, top : top + c, left : left + c]
            out_masks[i] = masks[i, top : top + c, left : left + c]
            if is_known and self.good_index is not None and not bool(out_masks[i].any()):
                out_labels[i] = self.good_index
        return out_images, out_labels, out_masks, known.clone()
