"""CLIP's ResNet image tower (OpenAI's "modified ResNet", open_clip's ``ModifiedResNet``).

Three changes to a torchvision ResNet: a stem of three 3x3 convolutions (the first with stride 2) and an average
pool instead of one 7x7 convolution and a max pool; anti-aliased downsampling (an average pool before the 1x1
convolution instead of a strided convolution, in the block and in its shortcut); and attention pooling: the mean of
the final feature map's positions, with learned positions added to every token, queries the map through one
multi-head attention whose output projection maps into the joint embedding space.

image tower: pixels -> stem (/4) -> four stages of bottlenecks (/1, /2, /2, /2) -> ``[B, 32 * width, S/32, S/32]``
             -> attention pooling -> ``[B, embed_dim]`` (``image_pooled``) -> L2-normalised ``image_embeds``

The module names follow open_clip's except the shortcut's (``shortcut.conv``/``shortcut.norm`` for its
``downsample.0``/``downsample.1``), so :func:`open_clip_resnet_key` renames its state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import Normalize

from polymodal.models.meta import DataDict, MetaModel, ModuleBlock, ReadWriteBlock

EXPANSION = 4  # a bottleneck's output channels per inner channel
DOWNSAMPLING = 32  # the stem's 4 times the three strided stages' 8


def _conv_norm(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


def conv_macs(conv: nn.Conv2d, size: int) -> tuple[int, int]:
    """Multiply-accumulates of ``conv`` on a ``size`` x ``size`` input, and its output side."""
    (kernel_h, kernel_w), (stride, _), (padding, _) = conv.kernel_size, conv.stride, conv.padding
    out = (size + 2 * padding - kernel_h) // stride + 1
    return kernel_h * kernel_w * conv.in_channels * conv.out_channels // conv.groups * out * out, out


def _pooled(pool: nn.Module, size: int) -> int:
    return size // pool.kernel_size if isinstance(pool, nn.AvgPool2d) else size


class Shortcut(nn.Module):
    """The bottleneck's residual path when its shape changes: average pool (stride > 1), 1x1 convolution, norm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv, self.norm = _conv_norm(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(self.pool(x)))

    def macs(self, size: int) -> int:
        return conv_macs(self.conv, _pooled(self.pool, size))[0]


class Bottleneck(nn.Module):
    """1x1 (to ``planes``), 3x3, average pool when ``stride`` > 1, 1x1 (to ``4 * planes``), plus the shortcut."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1, self.bn1 = _conv_norm(in_channels, planes, 1)
        self.conv2, self.bn2 = _conv_norm(planes, planes, 3)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = _conv_norm(planes, out_channels, 1)
        changes_shape = stride > 1 or in_channels != out_channels
        self.shortcut = Shortcut(in_channels, out_channels, stride) if changes_shape else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(F.relu(self.bn2(self.conv2(out))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))

    def macs(self, size: int) -> tuple[int, int]:
        """Multiply-accumulates on a ``size`` x ``size`` input, and the output side."""
        first, _ = conv_macs(self.conv1, size)
        second, out = conv_macs(self.conv2, size)
        out = _pooled(self.avgpool, out)
        third, _ = conv_macs(self.conv3, out)
        shortcut = self.shortcut.macs(size) if isinstance(self.shortcut, Shortcut) else 0
        return first + second + third + shortcut, out


class ModifiedResNet(nn.Module):
    """Stem and four stages of ``layers[i]`` bottlenecks: ``[B, 3, S, S] -> [B, 32 * width, S / 32, S / 32]``."""

    def __init__(self, layers: Sequence[int], width: int = 64, in_channels: int = 3):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four stage depths >= 1, got {list(layers)}")
        self.conv1, self.bn1 = _conv_norm(in_channels, width // 2, 3, stride=2)
        self.conv2, self.bn2 = _conv_norm(width // 2, width // 2, 3)
        self.conv3, self.bn3 = _conv_norm(width // 2, width, 3)
        self.avgpool = nn.AvgPool2d(2)
        stages, channels = [], width
        for index, depth in enumerate(layers):
            planes = width * 2**index
            blocks = [Bottleneck(channels, planes, stride=1 if index == 0 else 2)]
            channels = planes * EXPANSION
            blocks += [Bottleneck(channels, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def macs(self, size: int) -> tuple[int, int]:
        """Multiply-accumulates of the convolutions on a ``size`` x ``size`` image, and the feature map's side."""
        total = 0
        for conv in (self.conv1, self.conv2, self.conv3):
            macs, size = conv_macs(conv, size)
            total += macs
        size = _pooled(self.avgpool, size)
        for block in (*self.layer1, *self.layer2, *self.layer3, *self.layer4):
            macs, size = block.macs(size)
            total += macs
        return total, size

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation, then each residual branch's last norm at zero (every block starts as
        its shortcut), as OpenAI's CLIP."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.BatchNorm2d):
                module.reset_parameters()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)


class AttentionPool2d(nn.Module):
    """``[B, C, h, w] -> [B, out_dim]``: the mean of the ``h * w`` positions attends to itself and to them (learned
    positions added to all ``1 + h * w``), multi-head, then the output projection."""

    def __init__(self, grid_size: int, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.positional_embedding = nn.Parameter(torch.empty(grid_size**2 + 1, dim))
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.c_proj = nn.Linear(dim, out_dim)
        self.num_heads = num_heads
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dim = self.q_proj.in_features
        nn.init.normal_(self.positional_embedding, std=dim**-0.5)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            linear.reset_parameters()
            nn.init.normal_(linear.weight, std=dim**-0.5)

    def forward(self, features: Tensor) -> Tensor:
        batch, dim, height, width = features.shape
        positions = self.positional_embedding.shape[0] - 1
        if height * width != positions:
            raise ValueError(f"a {height}x{width} feature map; this pool was built for {positions} positions")
        tokens = features.flatten(2).transpose(1, 2)  # [B, h*w, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)

        def heads(x: Tensor) -> Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, H, T, C / H]

        query = heads(self.q_proj(tokens[:, :1]))
        pooled = F.scaled_dot_product_attention(query, heads(self.k_proj(tokens)), heads(self.v_proj(tokens)))
        return self.c_proj(pooled.transpose(1, 2).reshape(batch, dim))

    def macs(self) -> int:
        """Multiply-accumulates per image: one query, keys and values of every token, the attention, the output."""
        tokens, dim = self.positional_embedding.shape
        return dim * dim + 2 * tokens * dim * dim + 2 * tokens * dim + dim * self.c_proj.out_features


class L2Normalize(ReadWriteBlock):
    """Writes the L2-normalised ``read_key`` (the embedding the contrastive loss compares)."""

    def forward(self, data: DataDict) -> DataDict:
        data[self.write_keys[0]] = F.normalize(data[self.read_keys[0]], dim=-1)
        return data


def pixel_standardisation(
    image_key: str, pixel_mean: Sequence[float] | None, pixel_std: Sequence[float] | None
) -> tuple[list[ModuleBlock], str]:
    """The block that standardises ``image_key``'s pixels per channel (none without statistics), and the key the
    tower reads next."""
    if (pixel_mean is None) != (pixel_std is None):
        raise ValueError("give both pixel_mean and pixel_std, or neither")
    if pixel_mean is None:
        return [], image_key
    return [ModuleBlock(Normalize(list(pixel_mean), list(pixel_std)), image_key, "image_standardised")], (
        "image_standardised"
    )


def build_clip_resnet_tower(
    image_size: int,
    layers: Sequence[int],
    width: int,
    num_heads: int,
    embed_dim: int,
    in_channels: int = 3,
    image_key: str = "image",
    write_key: str = "image_embeds",
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> MetaModel:
    """The ResNet image tower: ``image`` ``[B, C, image_size, image_size]`` -> ``image_embeds`` ``[B, embed_dim]``
    (``image_pooled`` before the normalisation); ``pixel_mean``/``pixel_std`` as the ViT tower's."""
    if image_size % DOWNSAMPLING:
        raise ValueError(f"image_size={image_size} is not divisible by the ResNet's downsampling {DOWNSAMPLING}")
    standardise, image_key = pixel_standardisation(image_key, pixel_mean, pixel_std)
    trunk = ModifiedResNet(layers, width, in_channels)
    pool = AttentionPool2d(image_size // DOWNSAMPLING, trunk.out_channels, num_heads, embed_dim)
    return MetaModel(
        preprocessor=standardise or None,
        trunk=ModuleBlock(trunk, image_key, "image_features"),
        postprocessor=ModuleBlock(pool, "image_features", "image_pooled"),
        head=L2Normalize("image_pooled", write_key),
    )


def open_clip_resnet_key(key: str) -> str:
    """The name in this module of a tensor of open_clip's ``ModifiedResNet`` (``visual.`` stripped)."""
    return key.replace(".downsample.0.", ".shortcut.conv.").replace(".downsample.1.", ".shortcut.norm.")


def resnet_tower_train_flops(tower: MetaModel, images: int, image_size: int) -> float:
    """Forward + backward FLOPs of a :func:`build_clip_resnet_tower` tower on ``images`` square images (2 per
    multiply-accumulate, backward twice the forward: :mod:`polymodal.models.flops`'s conventions)."""
    trunk: ModifiedResNet = tower.trunk.module
    pool: AttentionPool2d = tower.postprocessor.module
    return 6.0 * images * (trunk.macs(image_size)[0] + pool.macs())


def is_resnet_tower(tower: MetaModel) -> bool:
    return isinstance(getattr(tower.trunk, "module", None), ModifiedResNet)


def initialize_resnet_tower(tower: MetaModel) -> None:
    """OpenAI CLIP's initialisation: the trunk's (:meth:`ModifiedResNet.reset_parameters`) and the pool's."""
    tower.trunk.module.reset_parameters()
    tower.postprocessor.module.reset_parameters()
