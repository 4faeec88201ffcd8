"""Multimodal data: 4M-layout shards (one tar per modality per shard), their decoding, aligned augmentation,
an exactly resumable loader and dataset mixing."""

from polymodal.data.multimodal.collate import collate_with_absent
from polymodal.data.multimodal.data_module import MultimodalData
from polymodal.data.multimodal.decode import DecodeError, decode_member
from polymodal.data.multimodal.imagefolder import ImageFolderDataset
from polymodal.data.multimodal.loader import GlobalOrder, ResumableLoader
from polymodal.data.multimodal.mixing import MixedDataset
from polymodal.data.multimodal.shard_index import MemberLocation, ShardIndex
from polymodal.data.multimodal.shard_patterns import expand_shard_pattern
from polymodal.data.multimodal.shards import MultimodalShards
from polymodal.data.multimodal.skips import SampleError, SkipCounter
from polymodal.data.multimodal.transforms import AlignedAugment

__all__ = [
    "AlignedAugment",
    "DecodeError",
    "GlobalOrder",
    "ImageFolderDataset",
    "MixedDataset",
    "MultimodalData",
    "ResumableLoader",
    "collate_with_absent",
    "MemberLocation",
    "MultimodalShards",
    "SampleError",
    "ShardIndex",
    "SkipCounter",
    "decode_member",
    "expand_shard_pattern",
]
