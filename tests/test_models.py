"""The model zoo: parameter counts against published numbers, shapes, BatchNorm state, names, build_model.

Counts and shapes come from ``jax.eval_shape`` (nothing is computed); only a few small models run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst.distributions import sparsifiable_layers
from dst.masks import named_leaves
from dst.models import MODELS
from dst.models import VGG16
from dst.models import ResNet18
from dst.models import ResNet50
from dst.models import VisionTransformer
from dst.models import WideResNet
from dst.models import build_model

CONV_MODELS = ("vgg16", "wrn22_2", "wrn28_2", "wrn16_8", "resnet18", "resnet50", "vit_tiny")
BATCH_NORM_MODELS = ("vgg16", "wrn22_2", "wrn28_2", "wrn16_8", "resnet18", "resnet50")
# A small input each model takes.
SAMPLE_SHAPES = {
    "lenet300": (2, 28, 28), "set_mlp": (2, 784), "mlp": (2, 28, 28), "lenet5": (2, 28, 28),
    "vgg16": (2, 32, 32, 3), "wrn22_2": (2, 32, 32, 3), "wrn28_2": (2, 32, 32, 3),
    "wrn16_8": (2, 32, 32, 3), "resnet18": (2, 32, 32, 3), "resnet50": (2, 64, 64, 3),
    "vit_tiny": (2, 32, 32, 3),
}


def init_shapes(model, shape, train=False):
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), train=train), jax.random.key(0))


def count(tree, kernels_only=False):
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)
               if leaf.ndim >= 2 or not kernels_only)


# ---------------------------------------------------------------- published parameter counts

def test_resnet18_cifar10_count_is_the_published_one():
    # kuangliu/pytorch-cifar ResNet18(): 11,173,962 parameters for 10 classes.
    assert count(init_shapes(ResNet18(num_classes=10), (1, 32, 32, 3))["params"]) == 11_173_962


def test_resnet50_imagenet_count_is_torchvisions():
    # torchvision.models.resnet50(): 25,557,032 parameters.
    assert count(init_shapes(ResNet50(num_classes=1000), (1, 224, 224, 3))["params"]) == 25_557_032


def test_vit_tiny_patch16_imagenet_count_is_timms():
    # timm vit_tiny_patch16_224 (DeiT-Ti): 5,717,416 parameters.
    model = VisionTransformer(num_classes=1000, patch_size=16)
    assert count(init_shapes(model, (1, 224, 224, 3))["params"]) == 5_717_416


@pytest.mark.parametrize(("depth", "k", "millions"), [(16, 8, 11.0), (28, 10, 36.5), (40, 4, 8.9)])
def test_wide_resnet_counts_round_to_the_wrn_papers(depth, k, millions):
    # Zagoruyko & Komodakis 2016 (arXiv:1605.07146) report WRN sizes in millions, one decimal.
    n = count(init_shapes(WideResNet(depth=depth, widen_factor=k), (1, 32, 32, 3))["params"])
    assert round(n / 1e6, 1) == millions


def wrn_count_by_hand(depth, k, classes=10):
    """The sparse_learning WideResNet's parameters, layer by layer (BN: scale + bias)."""
    n = (depth - 4) // 6
    total = 3 * 3 * 3 * 16
    cin = 16
    for width in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            block_in = cin if i == 0 else width
            total += 2 * block_in + 9 * block_in * width + 2 * width + 9 * width * width
            if block_in != width:
                total += block_in * width  # 1x1 shortcut
        cin = width
    return total + 2 * 64 * k + 64 * k * classes + classes


@pytest.mark.parametrize(("name", "depth", "k"), [("wrn22_2", 22, 2), ("wrn28_2", 28, 2), ("wrn16_8", 16, 8)])
def test_wide_resnet_presets_match_the_layout_counted_by_hand(name, depth, k):
    params = init_shapes(build_model(name, num_classes=100), (1, 32, 32, 3))["params"]
    assert count(params) == wrn_count_by_hand(depth, k, classes=100)
    assert len([b for b in params if b.startswith("layer")]) == 3 * (depth - 4) // 6


def vgg_count_by_hand(config, classes=10):
    """sparse_learning's VGG16: convs with bias + BN, then Linear-ReLU-BN layers 512 wide."""
    one_by_one = {7, 10, 13} if config == "C" else set()
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, cin = 0, 3
    for i, width in enumerate(widths, start=1):
        k = 1 if i in one_by_one else 3
        total += k * k * cin * width + width + 2 * width
        cin = width
    flat = 2048 if config == "C" else 512  # C's padded 1x1 convs leave a 2x2 map
    hidden = [512, 512] if config in ("C", "D") else [512]
    for width in hidden:
        total += flat * width + width + 2 * width
        flat = width
    return total + flat * classes + classes


@pytest.mark.parametrize(("config", "total", "kernels"), [
    ("D", 15_255_626, 15_239_872), ("C", 11_323_466, 11_307_712), ("like", 14_991_946, 14_977_728)])
def test_vgg16_variants_match_the_reference_layout(config, total, kernels):
    params = init_shapes(VGG16(config=config), (1, 32, 32, 3))["params"]
    assert count(params) == vgg_count_by_hand(config) == total
    assert count(params, kernels_only=True) == kernels
    assert ("fc2" in params) == (config != "like")
    conv_kernels = [params[f"conv{i}"]["kernel"].shape[:2] for i in range(1, 14)]
    assert conv_kernels.count((1, 1)) == (3 if config == "C" else 0)


def test_existing_models_keep_their_counts():
    assert count(init_shapes(build_model("lenet300"), (1, 784))["params"]) == 266_610
    assert count(init_shapes(build_model("set_mlp"), (1, 784))["params"]) == 2_797_010
    assert count(init_shapes(build_model("mlp", hidden=[64]), (1, 784))["params"]) == 784 * 64 + 64 + 650


# ---------------------------------------------------------------- shapes and BatchNorm state

@pytest.mark.parametrize("name", MODELS)
def test_every_model_gives_logits_in_eval_and_train(name):
    model = build_model(name, num_classes=7)
    shape = SAMPLE_SHAPES[name]
    variables = init_shapes(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (shape[0], 7)
    logits, updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    assert logits.shape == (shape[0], 7)
    has_stats = name in BATCH_NORM_MODELS
    assert ("batch_stats" in variables) == has_stats
    if has_stats:
        same_structure = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape,
                                                updates["batch_stats"], variables["batch_stats"])
        assert all(jax.tree_util.tree_leaves(same_structure))


@pytest.fixture(scope="session")
def small_wrn():
    """A WRN-10-1 on 8x8 images: small enough to run, with every kind of BatchNorm use."""
    model = WideResNet(depth=10, widen_factor=1)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) * 2.0 + 1.0
    return model, model.init(jax.random.key(0), x[:1]), x


def test_training_updates_running_statistics_and_eval_uses_them(small_wrn):
    model, variables, x = small_wrn
    stats = variables["batch_stats"]
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    new_stats = updates["batch_stats"]
    # Every BatchNorm's running mean and variance moved away from their initial 0 and 1.
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(jnp.abs(a - b) > 1e-6)), new_stats, stats)
    assert all(jax.tree_util.tree_leaves(changed))
    # PyTorch's momentum 0.1: running mean = 0.9 * 0 + 0.1 * the batch mean of the stem conv's output.
    stem_out = jax.lax.conv_general_dilated(
        x, variables["params"]["stem_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(new_stats["layer1_0"]["bn1"]["mean"], 0.1 * jnp.mean(stem_out, axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    before = model.apply(variables, x, train=False)
    after = model.apply({"params": variables["params"], "batch_stats": new_stats}, x, train=False)
    assert not np.allclose(before, after)
    # Evaluation normalises with the running averages, so an example's logits ignore the rest of the batch.
    alone = model.apply({"params": variables["params"], "batch_stats": new_stats}, x[:1], train=False)
    np.testing.assert_allclose(alone, after[:1], rtol=1e-4, atol=1e-4)


def test_wide_resnet_dropout_draws_from_the_dropout_rng(small_wrn):
    _, variables, x = small_wrn
    model = WideResNet(depth=10, widen_factor=1, dropout=0.5)
    run = [model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(s)})[0]
           for s in (0, 1)]
    assert not np.allclose(run[0], run[1])
    np.testing.assert_array_equal(model.apply(variables, x), small_wrn[0].apply(variables, x))


# ---------------------------------------------------------------- inputs

@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wrn22_2", "vit_tiny"])
def test_conv_models_take_one_channel_28x28_images(name):
    model = build_model(name)
    variables = init_shapes(model, (2, 28, 28))
    first = "patch_embedding" if name == "vit_tiny" else "stem_conv"
    assert variables["params"][first]["kernel"].shape[2] == 1
    x = jax.ShapeDtypeStruct((2, 28, 28), jnp.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (2, 10)


@pytest.mark.parametrize("name", CONV_MODELS)
def test_flat_inputs_are_refused_with_one_sentence(name):
    with pytest.raises(ValueError) as error:
        build_model(name).init(jax.random.key(0), jnp.zeros((2, 40)))
    # The message itself is the one sentence (JAX adds its traceback note as an exception note).
    assert str(error.value) == f"{name} needs image inputs of shape (N, H, W) or (N, H, W, C); got shape (2, 40)."


def test_vgg16_says_when_images_are_too_small():
    with pytest.raises(ValueError, match="vgg16 needs larger images: a 28x28 input"):
        init_shapes(VGG16(), (2, 28, 28))


def test_vit_needs_sides_divisible_by_the_patch_size():
    with pytest.raises(ValueError, match="divisible by its patch size 4; got 30x30"):
        init_shapes(VisionTransformer(), (2, 30, 30, 3))
    with pytest.raises(ValueError, match="model.dim of vit_tiny must be divisible by model.heads"):
        VisionTransformer(dim=100, heads=3)


# ---------------------------------------------------------------- parameter names

@pytest.mark.parametrize(("name", "first", "first_shape", "head"), [
    ("vgg16", "conv1/kernel", (3, 3, 3, 64), (512, 10)),
    ("wrn22_2", "stem_conv/kernel", (3, 3, 3, 16), (128, 10)),
    ("wrn16_8", "stem_conv/kernel", (3, 3, 3, 16), (512, 10)),
    ("resnet18", "stem_conv/kernel", (3, 3, 3, 64), (512, 10)),
    ("resnet50", "stem_conv/kernel", (7, 7, 3, 64), (2048, 10)),
    ("vit_tiny", "patch_embedding/kernel", (4, 4, 3, 192), (192, 10)),
])
def test_first_layer_and_head_have_readable_names(name, first, first_shape, head):
    params = init_shapes(build_model(name), SAMPLE_SHAPES[name])["params"]
    leaves = named_leaves(params)
    assert leaves[first].shape == first_shape
    assert leaves["head/kernel"].shape == head
    sparse = sparsifiable_layers(params)
    assert first in sparse and "head/kernel" in sparse
    assert first not in sparsifiable_layers(params, dense_layers=[f"^{first.split('/')[0]}/"])


def test_resnet_block_names():
    leaves = named_leaves(init_shapes(ResNet50(), (1, 64, 64, 3))["params"])
    for name in ("layer1_0/conv1/kernel", "layer1_0/conv3/kernel", "layer1_0/shortcut_conv/kernel",
                 "layer1_0/shortcut_bn/scale", "layer4_2/bn3/bias"):
        assert name in leaves
    assert "layer1_1/shortcut_conv/kernel" not in leaves
    assert leaves["layer2_0/conv2/kernel"].shape == (3, 3, 128, 128)  # v1.5: the stride is on the 3x3
    leaves = named_leaves(init_shapes(ResNet18(), (1, 32, 32, 3))["params"])
    assert "layer2_0/shortcut_conv/kernel" in leaves and "layer1_0/shortcut_conv/kernel" not in leaves


@pytest.mark.parametrize("name", BATCH_NORM_MODELS)
def test_batch_norm_params_are_one_dimensional_and_convs_before_them_have_no_bias(name):
    variables = init_shapes(build_model(name), SAMPLE_SHAPES[name])
    params = named_leaves(variables["params"])
    stats = named_leaves(variables["batch_stats"])
    norms = {n.rsplit("/", 1)[0] for n in stats}
    assert norms
    for norm in norms:
        assert params[f"{norm}/scale"].ndim == 1 and params[f"{norm}/bias"].ndim == 1
        assert stats[f"{norm}/mean"].ndim == 1 and stats[f"{norm}/var"].ndim == 1
    assert not any(n.endswith("/scale") and n.rsplit("/", 1)[0] not in norms for n in params)
    conv_biases = [n for n in params if n.endswith("/bias") and "conv" in n]
    # The sparse_learning VGG16 keeps nn.Conv2d's default bias; every other conv is bias-free.
    assert len(conv_biases) == (13 if name == "vgg16" else 0)


def test_vit_kernels_are_matrices_and_embeddings_stay_dense():
    params = init_shapes(build_model("vit_tiny", depth=2), (1, 32, 32, 3))["params"]
    leaves = named_leaves(params)
    assert leaves["block0/attn/qkv/kernel"].shape == (192, 576)
    assert leaves["block0/attn/proj/kernel"].shape == (192, 192)
    assert leaves["pos_embedding"].shape == (1, 65, 192) and leaves["cls_token"].shape == (1, 1, 192)
    assert "block1/mlp_fc2/kernel" in leaves and "block2/ln1/scale" not in leaves
    sparse = sparsifiable_layers(params)
    assert "pos_embedding" not in sparse and "cls_token" not in sparse
    assert all(leaves[n].ndim == 2 for n in sparse if n != "patch_embedding/kernel")
    assert len(sparse) == 1 + 2 * 4 + 1


# ---------------------------------------------------------------- build_model

def test_models_lists_the_existing_ones_first():
    assert MODELS[:4] == ("lenet300", "set_mlp", "mlp", "lenet5")
    assert set(MODELS[4:]) == {"vgg16", "wrn22_2", "wrn28_2", "wrn16_8", "resnet18", "resnet50", "vit_tiny"}


def test_build_model_passes_options_to_the_module():
    assert build_model("vgg16", config="C").config == "C"
    assert build_model("vit_tiny", depth=3, dim=64, heads=4).depth == 3
    assert build_model("mlp", hidden=[32, 16]).hidden == (32, 16)
    wrn = build_model("wrn16_8", num_classes=100, dropout=0.3)
    assert (wrn.depth, wrn.widen_factor, wrn.dropout, wrn.num_classes) == (16, 8, 0.3, 100)
    assert build_model("resnet50", num_classes=1000).num_classes == 1000


def test_build_model_errors_name_the_allowed_values():
    with pytest.raises(ValueError, match=r"^model.name must be one of lenet300, set_mlp, .*vit_tiny; got 'foo'\.$"):
        build_model("foo")
    with pytest.raises(ValueError, match=r"^model.hidden is not an option of model resnet18; "
                                         r"its options are dropout, num_classes\.$"):
        build_model("resnet18", hidden=[10])
    with pytest.raises(ValueError, match=r"model.depth is not an option of model wrn22_2; "
                                         r"its options are dropout, num_classes\."):
        build_model("wrn22_2", depth=28)
    with pytest.raises(ValueError, match=r"model.config of vgg16 must be one of C, D, like; got 'E'\."):
        build_model("vgg16", config="E")
    with pytest.raises(ValueError, match=r"6n \+ 4"):
        WideResNet(depth=20)


def test_import_dst_reaches_every_subpackage_by_attribute():
    # A fresh interpreter: in this one, other tests' imports would set the attributes already.
    import subprocess
    import sys
    code = ("import dst; m = dst.models.build_model('lenet300'); "
            "print(type(m).__name__, dst.algorithms.names()[0], dst.schedules.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "MLP"
