"""Networks of the tutorial jobs: MONAI models that keep their constructor arguments.

NVFlare re-creates a server-side model from the instance attributes that match ``__init__`` parameters
(``FedJob`` serialises them into the job config), so every wrapper stores its arguments as attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DenseNet121, UNet

__all__ = ["ProstateUNet", "MedNISTDenseNet"]


class ProstateUNet(UNet):
    """MONAI 3-D UNet with residual units for whole-gland prostate segmentation (binary, 2 output channels).

    ``strides`` defaults to a 2x down-sampling between consecutive ``channels`` levels.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] | None = None,
        num_res_units: int = 2,
        norm: str = "batch",
    ):
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        strides = [2] * (len(channels) - 1) if strides is None else list(strides)
        self.channels, self.strides, self.num_res_units, self.norm = list(channels), strides, num_res_units, norm
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            num_res_units=num_res_units,
            norm=norm,
        )


class MedNISTDenseNet(DenseNet121):
    """MONAI DenseNet121 for the six MedNIST classes (2-D, one grey channel)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 6):
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
