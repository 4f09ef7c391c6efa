"""A small Vision Transformer (Dosovitskiy et al. 2021) for CIFAR-sized images, with 2-D kernels only."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dst.models.layers import image_batch

_dense_init = nn.initializers.xavier_uniform()
_embedding_init = nn.initializers.normal(stddev=0.02)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` Dense(3 * dim) and an output ``proj`` Dense(dim), so
    both kernels are plain 2-D matrices (flax's MultiHeadDotProductAttention has 3-D kernels)."""

    heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        n, tokens, dim = x.shape
        head_dim = dim // self.heads
        qkv = nn.Dense(3 * dim, kernel_init=_dense_init, name="qkv")(x)
        qkv = jnp.reshape(qkv, (n, tokens, 3, self.heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, T, heads, head_dim)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.reshape(jnp.einsum("nhqk,nkhd->nqhd", weights, v), (n, tokens, dim))
        out = nn.Dense(dim, kernel_init=_dense_init, name="proj")(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP.

    Param names: ``ln1``, ``attn/qkv``, ``attn/proj``, ``ln2``, ``mlp_fc1``, ``mlp_fc2``.
    """

    heads: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim = x.shape[-1]
        x = x + SelfAttention(self.heads, self.dropout, name="attn")(nn.LayerNorm(name="ln1")(x), train)
        y = nn.LayerNorm(name="ln2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, kernel_init=_dense_init, name="mlp_fc1")(y), approximate=False)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(dim, kernel_init=_dense_init, name="mlp_fc2")(y)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class VisionTransformer(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"); the defaults
    are ViT-Ti's dimensions (embedding 192, 12 blocks, 3 heads, MLP 768; DeiT-Ti of Touvron et al.
    2021) on 4x4 patches, the usual small ViT for 32x32 CIFAR images.

    Layout of google-research/vision_transformer and timm's ``VisionTransformer``: a
    ``patch_size``-strided conv embeds the patches, a learned class token is prepended and a learned
    position embedding added, then ``depth`` pre-LayerNorm blocks (:class:`EncoderBlock`: multi-head
    self-attention, GELU MLP), a final LayerNorm and a dense classifier on the class token. Attention
    uses plain 2-D ``Dense`` kernels (``qkv`` and ``proj``) so every sparsifiable kernel is a matrix
    (or the 4-D patch-embedding conv). ``dropout`` applies after the embeddings, after the attention
    projection and inside the MLP. Dense kernels start Xavier-uniform (as the reference), the
    position embedding N(0, 0.02), the class token at zero.

    Parameters: 5,362,762 with the defaults for 32x32 inputs and 10 classes; with ``patch_size=16``,
    224x224 inputs and 1000 classes 5,717,416, the count of timm's ``vit_tiny_patch16_224``
    (DeiT-Ti, "5M" in DeiT's Table 1).

    Param names: ``patch_embedding`` (``patch_embedding/kernel``, the first layer), ``cls_token``,
    ``pos_embedding``, blocks ``block{i}`` for i from 0 (``block0/ln1``, ``block0/attn/qkv``,
    ``block0/attn/proj``, ``block0/ln2``, ``block0/mlp_fc1``, ``block0/mlp_fc2``), ``final_ln`` and
    the classifier ``head`` (``head/kernel``).

    Example::

        model = VisionTransformer(num_classes=10)  # vit_tiny, 4x4 patches
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        logits = model.apply(variables, images)  # (N, 10)
    """

    num_classes: int = 10
    patch_size: int = 4
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_dim: int = 768
    dropout: float = 0.0

    def __post_init__(self):
        for field in ("patch_size", "dim", "depth", "heads", "mlp_dim"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"model.{field} of vit_tiny must be a positive integer; "
                                 f"got {getattr(self, field)}.")
        if self.dim % self.heads != 0:
            raise ValueError(f"model.dim of vit_tiny must be divisible by model.heads; "
                             f"got dim={self.dim} and heads={self.heads}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = image_batch(x, "vit_tiny")
        height, width = x.shape[1:3]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"vit_tiny needs image height and width divisible by its patch size {p}; "
                             f"got {height}x{width}.")
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="patch_embedding")(x)
        x = jnp.reshape(x, (x.shape[0], -1, self.dim))
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(x.dtype), x], axis=1)
        x = x + self.param("pos_embedding", _embedding_init, (1, x.shape[1], self.dim))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.depth):
            x = EncoderBlock(self.heads, self.mlp_dim, self.dropout, name=f"block{i}")(x, train)
        x = nn.LayerNorm(name="final_ln")(x)
        return nn.Dense(self.num_classes, kernel_init=_dense_init, name="head")(x[:, 0])
