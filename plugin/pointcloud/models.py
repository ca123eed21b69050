"""Point-MAE / Point-BERT style point-cloud transformers: classification and part segmentation.

Point-BERT: Yu et al., "Point-BERT: Pre-training 3D Point Cloud Transformers with Masked Point Modeling", CVPR 2022.
Point-MAE: Pang et al., "Masked Autoencoders for Point Cloud Self-supervised Learning", ECCV 2022.

A cloud is cut into patches (farthest point sampling picks `num_group` centres, each centre takes its `group_size`
nearest points), a mini-PointNet embeds each patch into a token, an MLP embeds the patch centre into a positional
embedding that is added before every block (as in Point-MAE), and pre-norm transformer blocks mix the tokens.

State-dict layout: the Point-MAE fine-tuning layout (`PointTransformer` in models/Point_MAE.py for classification,
`get_model` in segmentation/models/pt.py for part segmentation):

    cls_token, cls_pos                                   (classifier only)
    encoder.first_conv.{0,1,3}, encoder.second_conv.{0,1,3}   mini-PointNet: 1x1 convs (0, 3) and BatchNorm (1)
    reduce_dim                                           (only when encoder_dims != trans_dim, as in Point-BERT)
    pos_embed.{0,2}                                      Linear(3, 128), GELU, Linear(128, C)
    blocks.blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
    norm
    cls_head_finetune.{0,1,4,5,8} (Point-MAE head) or .{0,3} (Point-BERT head)       classifier
    label_conv.{0,1}, propagation_0.mlp_convs.N, propagation_0.mlp_bns.N,
    convs1, bns1, convs2, bns2, convs3                                                 part segmentation

The official models use 1x1 `Conv1d` layers in the patch encoder and the segmentation head; here they are `Linear`
layers over the channel dimension (the same function), so the quantizer library, which quantizes Linear and Conv2d,
covers them. Their weights are (out, in) instead of (out, in, 1): `checkpoint_filter_fn` squeezes official
checkpoints. The attention module owns explicit `matmul_qk` / `matmul_av` MatMul submodules from construction.
"""
import re
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quant.modules import MatMul
from .ops import group_points, three_nn_interpolate


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class PointwiseBN(nn.BatchNorm1d):
    """BatchNorm over the last (channel) dimension of a (..., C) tensor; same parameters as BatchNorm1d(C)."""

    def forward(self, x):
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class PatchEncoder(nn.Module):
    """Mini-PointNet: per-point MLP, max-pool, concatenate the pooled feature to every point, MLP, max-pool.

    channels=(c1, c2): widths of the first MLP (3 -> c1 -> c2); the second runs 2*c2 -> 2*c2 -> out_dim.
    Point-BERT/Point-MAE use (128, 256).
    """

    def __init__(self, out_dim, channels=(128, 256)):
        super().__init__()
        c1, c2 = channels
        self.first_conv = nn.Sequential(nn.Linear(3, c1), PointwiseBN(c1), nn.ReLU(inplace=True), nn.Linear(c1, c2))
        self.second_conv = nn.Sequential(nn.Linear(2 * c2, 2 * c2), PointwiseBN(2 * c2), nn.ReLU(inplace=True),
                                         nn.Linear(2 * c2, out_dim))

    def forward(self, neighborhood):                      # (B, G, K, 3) -> (B, G, out_dim)
        f = self.first_conv(neighborhood)                 # (B, G, K, 256)
        g = f.amax(2, keepdim=True).expand_as(f)
        f = self.second_conv(torch.cat([g, f], -1))
        return f.amax(2)


class Attention(nn.Module):
    """Multi-head self-attention with the two matmuls as explicit MatMul modules (quantization sites)."""

    def __init__(self, dim, num_heads, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.matmul_qk = MatMul()
        self.matmul_av = MatMul()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1)).softmax(-1)
        x = self.matmul_av(self.attn_drop(attn), v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """Blocks with the positional embedding added to the input of every block (Point-MAE)."""

    def __init__(self, dim, depth, num_heads, mlp_ratio=4.0, qkv_bias=False, drop_path_rate=0.0):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth > 1 else [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias, drop_path=r) for r in rates])

    def forward(self, x, pos, fetch_idx: Sequence[int] = ()):
        """Final tokens, or the tokens after each block listed in fetch_idx."""
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in fetch_idx:
                feats.append(x)
        return feats if fetch_idx else x


class PointTransformerBase(nn.Module):
    """Patch grouping, patch encoder, positional embedding, blocks and final norm shared by both tasks."""

    def __init__(self, trans_dim=384, depth=12, num_heads=6, num_group=64, group_size=32, encoder_dims=None,
                 encoder_channels=(128, 256), mlp_ratio=4.0, qkv_bias=False, drop_path_rate=0.1):
        super().__init__()
        encoder_dims = encoder_dims or trans_dim
        self.trans_dim, self.depth, self.num_group, self.group_size = trans_dim, depth, num_group, group_size
        self.encoder = PatchEncoder(encoder_dims, encoder_channels)
        if encoder_dims != trans_dim:
            self.reduce_dim = nn.Linear(encoder_dims, trans_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.blocks = TransformerEncoder(trans_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate)
        self.norm = nn.LayerNorm(trans_dim)

    def tokens(self, points):
        """Patch tokens (B, G, C) and their positional embeddings (B, G, C), plus the centres (B, G, 3)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected points of shape (B, N, 3), got {tuple(points.shape)}")
        neighborhood, centre = group_points(points, self.num_group, self.group_size)
        x = self.encoder(neighborhood)
        if hasattr(self, "reduce_dim"):
            x = self.reduce_dim(x)
        return x, self.pos_embed(centre), centre


class PointMAECls(PointTransformerBase):
    """Classifier: a class token and the max-pooled patch tokens feed an MLP head.

    head_hidden=(256, 256), head_bn=True is Point-MAE's head; head_hidden=(256,), head_bn=False is Point-BERT's.
    """

    def __init__(self, num_classes=40, head_hidden=(256, 256), head_bn=True, head_drop=0.5, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        layers, dim = [], self.trans_dim * 2
        for h in head_hidden:
            layers += [nn.Linear(dim, h)] + ([nn.BatchNorm1d(h)] if head_bn else []) + [nn.ReLU(inplace=True),
                                                                                        nn.Dropout(head_drop)]
            dim = h
        self.cls_head_finetune = nn.Sequential(*layers, nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.apply(_init_weights)

    def forward_features(self, points):
        """(B, N, 3) -> pooled feature (B, 2C): normalised class token beside the max over patch tokens."""
        x, pos, _ = self.tokens(points)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], 1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), pos], 1)
        x = self.norm(self.blocks(x, pos))
        return torch.cat([x[:, 0], x[:, 1:].amax(1)], -1)

    def forward_head(self, feat):
        return self.cls_head_finetune(feat)

    def forward(self, points):
        """(B, N, 3) xyz -> class logits (B, num_classes)."""
        return self.forward_head(self.forward_features(points))


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation: interpolate token features to every point, concatenate, pointwise MLP."""

    def __init__(self, in_channel, mlp):
        super().__init__()
        self.mlp_convs, self.mlp_bns = nn.ModuleList(), nn.ModuleList()
        for out in mlp:
            self.mlp_convs.append(nn.Linear(in_channel, out))
            self.mlp_bns.append(PointwiseBN(out))
            in_channel = out

    def forward(self, xyz_dst, xyz_src, feat_dst, feat_src):
        x = torch.cat([feat_dst, three_nn_interpolate(xyz_dst, xyz_src, feat_src)], -1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return x


class PointMAEPartSeg(PointTransformerBase):
    """Part segmentation (Point-MAE's segmentation model): tokens of three blocks, pooled globally and propagated
    back to every point, joined with a one-hot object category, then a pointwise MLP gives per-point part logits.

    forward(points (B, N, 3), category (B,) int or (B, num_categories) one-hot) -> logits (B, N, num_parts).
    (The official model returns log-softmax; argmax and the loss are the same.)
    """

    def __init__(self, num_parts=50, num_categories=16, fetch_idx=None, propagation_mlp=(1536, 1024),
                 head_hidden=(512, 256), head_drop=0.5, num_group=128, **kwargs):
        super().__init__(num_group=num_group, **kwargs)
        self.num_parts, self.num_categories = num_parts, num_categories
        if fetch_idx is None:   # Point-MAE: blocks 3, 7, 11 of 12; evenly spread for other depths
            fetch_idx = sorted({round((i + 1) * self.depth / 3) - 1 for i in range(3)})
        if any(not 0 <= i < self.depth for i in fetch_idx):
            raise ValueError(f"fetch_idx {list(fetch_idx)} out of range for depth {self.depth}")
        self.fetch_idx = tuple(fetch_idx)
        feat_dim = self.trans_dim * len(self.fetch_idx)
        self.label_conv = nn.Sequential(nn.Linear(num_categories, 64, bias=False), nn.BatchNorm1d(64),
                                        nn.LeakyReLU(0.2))
        self.propagation_0 = FeaturePropagation(feat_dim + 3, propagation_mlp)
        h1, h2 = head_hidden
        self.convs1 = nn.Linear(propagation_mlp[-1] + 2 * feat_dim + 64, h1)
        self.bns1 = PointwiseBN(h1)
        self.dp1 = nn.Dropout(head_drop)
        self.convs2 = nn.Linear(h1, h2)
        self.bns2 = PointwiseBN(h2)
        self.convs3 = nn.Linear(h2, num_parts)
        self.apply(_init_weights)

    def one_hot(self, category):
        if category.dim() == 1:
            return F.one_hot(category.long(), self.num_categories).float()
        return category.float()

    def forward_features(self, points):
        """Concatenated normalised tokens of the fetched blocks (B, G, C*len(fetch_idx)) and the centres."""
        x, pos, centre = self.tokens(points)
        feats = self.blocks(x, pos, self.fetch_idx)
        return torch.cat([self.norm(f) for f in feats], -1), centre

    def forward_head(self, points, tokens, centre, category):
        B, N, _ = points.shape
        glob = torch.cat([tokens.amax(1), tokens.mean(1), self.label_conv(self.one_hot(category))], -1)
        x = self.propagation_0(points, centre, points, tokens)
        x = torch.cat([x, glob.unsqueeze(1).expand(B, N, -1)], -1)
        x = self.dp1(F.relu(self.bns1(self.convs1(x))))
        x = F.relu(self.bns2(self.convs2(x)))
        return self.convs3(x)

    def forward(self, points, category):
        tokens, centre = self.forward_features(points)
        return self.forward_head(points, tokens, centre, category)


def _init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


MODEL_TYPES = {"PointMAECls": PointMAECls, "PointMAEPartSeg": PointMAEPartSeg}

# Wrappers seen around official state dicts (Point-MAE/Point-BERT save {'base_model': ...}; their segmentation
# code saves {'model_state_dict': ...}; other trainers use 'model' or 'state_dict').
_WRAPPERS = ("base_model", "model_state_dict", "model", "state_dict", "module")
# Encoder prefixes of the pre-training models: Point-MAE, ACT, Point-BERT (student).
_ENCODER_PREFIXES = ("MAE_encoder.", "ACT_encoder.", "transformer_q.")
# Pre-training-only parts (decoders, masked-token embeddings, momentum encoder, dVAE, ...).
_PRETRAIN_ONLY = re.compile(r"^(MAE_decoder|increase_dim|mask_token|decoder_|transformer_k|dvae|lm_head|queue|"
                            r"cls_head\.|ACT_decoder)")


def unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (possibly nested in 'base_model' / 'model' / 'state_dict' ...)."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        else:
            raise ValueError(f"no state dict found in checkpoint (top-level keys: {sorted(obj)[:10]})")
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def checkpoint_filter_fn(state_dict, model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """Map an official Point-MAE / Point-BERT / ACT checkpoint (or one saved here) to this module's keys.

    Unwraps 'base_model'/'model'/... wrappers, strips DataParallel 'module.' prefixes and pre-training encoder
    prefixes, drops pre-training-only parts, and squeezes 1x1-conv weights (out, in, 1) to Linear (out, in). With a
    model, keys the model does not have are dropped too (e.g. a pre-trained encoder loaded into a classifier).
    """
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
        key = key[len("module."):] if key.startswith("module.") else key
        for prefix in _ENCODER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if _PRETRAIN_ONLY.match(key):
            continue
        if key.endswith(".weight") and value.dim() == 3 and value.shape[-1] == 1:
            value = value[..., 0]
        out[key] = value
    if model is not None:
        own = model.state_dict()
        out = {k: v for k, v in out.items() if k in own}
    return out


def build_model(cfg: dict) -> nn.Module:
    """Model from a config dict: {'type': 'PointMAECls' | 'PointMAEPartSeg', **constructor arguments}."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in MODEL_TYPES:
        raise ValueError(f"unknown point-cloud model type {kind!r}; known: {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[kind](**cfg)
