"""Box-augmentation helpers around MONAI's box transforms.

MONAI's box transforms read a box's coordinates in the order of the array's spatial dimensions. chestzoo arrays are
``(C, H, W)`` with boxes ``[x_min, y_min, x_max, y_max]`` where x runs along W, i.e. the *second* spatial dimension,
so the bundles transpose the image to ``(C, W, H)`` (MONAI's ``Transposed(indices=[0, 2, 1])``) before the box
transforms and back after them; the box coordinates then match MONAI's order without being touched.

Arbitrary affine augmentation (rotation, shift, scale) goes through MONAI's points route: box corners as points
(:class:`BoxToPointsd`), ``RandAffined`` on the image, ``ApplyTransformToPointsd`` with the image's updated affine,
``ConvertPointsToBoxesd`` for the enclosing boxes, ``ClipBoxToImaged`` to drop boxes pushed out of the image.
"""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.transforms import ConvertBoxToPoints, MapTransform


class BoxToPointsd(MapTransform):
    """MONAI's ``ConvertBoxToPointsd`` that also accepts images without boxes (shape ``(0, 2 * dims)``).

    MONAI 1.6's converter fails on an empty box array; a negative (box-free) training image must pass through the
    same augmentation chain, so the empty case gives an empty ``(0, 2 ** dims, dims)`` points array here.
    """

    def __init__(self, keys: KeysCollection, point_key: str = "points", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.point_key = point_key
        self.converter = ConvertBoxToPoints()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            boxes = torch.as_tensor(d[key])
            if boxes.numel() == 0:
                dims = boxes.shape[-1] // 2 if boxes.ndim == 2 and boxes.shape[-1] in (4, 6) else 2
                d[self.point_key] = torch.zeros((0, 2**dims, dims), dtype=torch.float32)
            else:
                d[self.point_key] = self.converter(boxes.reshape(-1, boxes.shape[-1]))
        return d
