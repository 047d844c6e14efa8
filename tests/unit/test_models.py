"""The image networks: published parameter counts, narrow variants that train on small fake
images, dropout where the papers put it, deterministic initialisation and one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from elastic_entropy.models import MODELS, build_model
from elastic_entropy.models.wrn import WideBlock
from tests.conftest import compose_config

# Full-size networks on CIFAR-10 (3x32x32, 10 classes), built on the meta device: nothing is
# allocated, so counting even WRN-28-10's 36.5M parameters takes milliseconds.
FULL_SIZE = [
    # Zagoruyko & Komodakis (2016), Table 1 "36.5M"; the exact count is that of the reference
    # PyTorch WRN (1x1 projections where the shape changes, no conv biases)
    ("wrn", {"depth": 28, "widen_factor": 10}, 36_479_194),
    # the same paper's "2.7M" and "11.0M"
    ("wrn", {"depth": 16, "widen_factor": 4}, 2_748_890),
    ("wrn", {"depth": 16, "widen_factor": 8}, 10_961_370),
    # Kuang Liu's pytorch-cifar ResNet18, the usual "11.2M"
    ("resnet18", {}, 11_173_962),
    # Springenberg et al. (2015) give "1.3M" for All-CNN-C without BN; these are its 1,368,480
    # bias-free conv weights plus 2,516 BN scales and shifts (one BN after each of the 9 convs)
    ("allcnn", {}, 1_370_996),
]

# CPU-sized variants of each network, the ones CI trains
NARROW: dict[str, dict[str, Any]] = {
    "wrn": {"depth": 10, "widen_factor": 1, "base_width": 4},
    "allcnn": {"width": 0.1},
    "resnet18": {"width": 4},
    "lenet": {"channels": (4, 8), "hidden": 16, "dropout": 0.0},
}
IMAGE_NETWORKS = sorted(NARROW)

# The authors' LeNet on MNIST (1x28x28, 10 classes), as ucla-vision/parle parle_mpi.py builds it
# (pratikac/distributed-ensembles code/models.py `lenet` and ucla-vision/entropy-sgd
# python/models.py `mnistconv` are the same network), counted by hand:
#   conv 1->20 5x5 with bias   20*1*25 + 20    =     520   28 -> 24, max-pool 3 -> 8
#   BatchNorm2d(20)            2*20            =      40
#   conv 20->50 5x5 with bias  50*20*25 + 50   =  25,050    8 -> 4,  max-pool 2 -> 2
#   BatchNorm2d(50)            2*50            =     100
#   fc 50*2*2 -> 500           200*500 + 500   = 100,500
#   BatchNorm1d(500)           2*500           =   1,000
#   fc 500 -> 10               500*10 + 10     =   5,010
#                                                132,220
LENET_MNIST = 132_220
# padding=2 and 2x2 pools (the variant this package had): 28 -> 7, so fc 50*7*7 -> 500 takes
# 2450*500 + 500 = 1,225,500 instead of 100,500
LENET_PADDED_MNIST = 1_257_220
SHAPES = [(3, 8, 8), (1, 28, 28), (3, 32, 32)]


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _has_dropout(model: nn.Module) -> bool:
    # the trainer's own test (training.passes.has_dropout)
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def _calls(model: nn.Module, shape: tuple[int, ...]) -> list[nn.Module]:
    """The leaf modules ``model`` runs on a batch of 2, in the order it runs them."""
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, _i, _o: order.append(m)) for m in leaves]
    model(torch.randn(2, *shape))
    for handle in handles:
        handle.remove()
    return order


@pytest.mark.parametrize(("name", "options", "expected"), FULL_SIZE)
def test_full_size_networks_have_the_published_parameter_counts(
    name: str, options: dict[str, Any], expected: int
) -> None:
    with torch.device("meta"):
        model = build_model(name, (3, 32, 32), 10, **options)
    assert _num_parameters(model) == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [({}, LENET_MNIST), ({"padding": 2, "pools": (2, 2)}, LENET_PADDED_MNIST)],
    ids=["authors", "padded"],
)
def test_lenet_on_mnist_has_the_authors_parameter_count(
    options: dict[str, Any], expected: int
) -> None:
    with torch.device("meta"):
        model = build_model("lenet", (1, 28, 28), 10, **options)
    assert _num_parameters(model) == expected


def test_lenet_is_the_authors_layer_for_layer() -> None:
    """parle_mpi.py: convbn(1,20,5,3,0.25), convbn(20,50,5,2,0.25), View(200), Linear(200,500),
    BatchNorm1d, ReLU, Dropout(0.25), Linear(500,10); convbn = Conv2d(ci,co,5) (no padding),
    BatchNorm2d, ReLU, MaxPool2d(psz, stride=psz), Dropout(p)."""
    model = build_model("lenet", (1, 28, 28), 10)
    kinds = [type(m) for m in _calls(model, (1, 28, 28))]
    block = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Dropout]
    head = [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert kinds == [*block, *block, *head]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 20), (20, 50)]
    assert all(c.kernel_size == (5, 5) and c.padding == (0, 0) for c in convs)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 3), (2, 2)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(200, 500), (500, 10)]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25] * 3
    # parle_mpi.py's module tree, so that a state_dict of theirs loads by name
    assert list(model.state_dict())[:2] == ["0.0.weight", "0.0.bias"]
    assert list(model.state_dict())[-2:] == ["7.weight", "7.bias"]


def test_lenet_small_images_get_the_padded_variant_unless_told_otherwise() -> None:
    # 8x8 digits: valid 5x5 convs and a 3x3 pool leave no feature map (8 -> 4 -> 1 -> nothing)
    model = build_model("lenet", (1, 8, 8), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert all(c.padding == (2, 2) for c in convs) and [p.kernel_size for p in pools] == [2, 2]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError) as info:
        build_model("lenet", (1, 8, 8), 10, padding=0, pools=(3, 2))
    message = str(info.value)
    assert message.startswith("lenet: 8x8 images are too small for model.padding=0 model.pools")
    assert "\n" not in message


def test_lenet_config_reaches_both_geometries() -> None:
    cases = [((), LENET_MNIST), (("model.padding=2", "model.pools=[2,2]"), LENET_PADDED_MNIST)]
    for overrides, expected in cases:
        cfg = compose_config("model=lenet", "data=mnist5k", *overrides)
        with torch.device("meta"):
            model = build_model(cfg.model.name, (1, 28, 28), 10, **cfg.model.model_kwargs())
        assert _num_parameters(model) == expected
    with pytest.raises(ValueError, match=r"Invalid model.pools: \[3\] \(needs two sizes >= 1\)"):
        compose_config("model=lenet", "model.pools=[3]")


def test_the_image_networks_are_registered() -> None:
    assert {"lenet", "wrn", "allcnn", "resnet18"} <= set(MODELS)
    with pytest.raises(ValueError, match="Unknown model 'resnet'"):
        build_model("resnet", (3, 32, 32), 10)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(NARROW))
def test_narrow_variants_train_on_small_images(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 7, **NARROW[name])
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 6])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_wrn_drops_out_between_the_two_convolutions_of_each_block() -> None:
    model = build_model("wrn", (3, 8, 8), 10, **NARROW["wrn"], dropout=0.25)
    blocks = [m for m in model.modules() if isinstance(m, WideBlock)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(blocks) == 3 and len(dropouts) == len(blocks)  # depth 10: one block per stage
    order = _calls(model, (3, 8, 8))
    for block in blocks:
        assert isinstance(block.dropout, nn.Dropout) and block.dropout.p == 0.25
        conv1, drop, conv2 = (order.index(m) for m in (block.conv1, block.dropout, block.conv2))
        assert conv1 < drop == conv2 - 1  # after the second BN-ReLU, right before conv2
        assert isinstance(order[drop - 1], nn.ReLU)


def test_allcnn_drops_out_the_input_and_after_each_stride_2_block() -> None:
    options = {**NARROW["allcnn"], "dropout": 0.5, "input_dropout": 0.2}
    order = _calls(build_model("allcnn", (3, 8, 8), 10, **options), (3, 8, 8))
    assert isinstance(order[0], nn.Dropout) and order[0].p == 0.2
    convs = [i for i, m in enumerate(order) if isinstance(m, nn.Conv2d)]
    strided = [i for i in convs if order[i].stride == (2, 2)]
    after_blocks = [i for i, m in enumerate(order) if isinstance(m, nn.Dropout) and i > 0]
    assert len(convs) == 9 and len(strided) == 2
    # each dropout follows a stride-2 conv's BN and ReLU
    assert after_blocks == [i + 3 for i in strided]
    assert all(order[i].p == 0.5 for i in after_blocks)


def test_resnet18_drops_out_the_pooled_features_before_the_head() -> None:
    order = _calls(
        build_model("resnet18", (3, 8, 8), 10, **NARROW["resnet18"], dropout=0.3), (3, 8, 8)
    )
    dropouts = [i for i, m in enumerate(order) if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and order[dropouts[0]].p == 0.3
    assert isinstance(order[dropouts[0] - 1], nn.Flatten)
    assert order[dropouts[0] + 1] is order[-1] and isinstance(order[-1], nn.Linear)


@pytest.mark.parametrize("name", sorted(NARROW))
def test_without_dropout_a_network_holds_no_dropout_module(name: str) -> None:
    assert not _has_dropout(build_model(name, (3, 8, 8), 10, **NARROW[name]))


def test_allcnn_input_dropout_alone_is_the_only_dropout() -> None:
    model = build_model("allcnn", (3, 8, 8), 10, **NARROW["allcnn"], input_dropout=0.2)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2]


@pytest.mark.parametrize("name", sorted(NARROW))
def test_the_same_seed_builds_the_same_network(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, (3, 8, 8), 10, **NARROW[name]).state_dict()

    first, again, other = build(0), build(0), build(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_initialisation_is_the_reference_one() -> None:
    torch.manual_seed(0)
    model = build_model("allcnn", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(c.bias is None for c in convs)  # BN follows every conv
    assert all((n.weight == 1).all() and (n.bias == 0).all() for n in norms)
    # kaiming normal, fan-out mode: std sqrt(2 / (out_channels * 3 * 3)) for a 192->192 conv
    weight = convs[4].weight
    assert weight.shape == (192, 192, 3, 3)
    assert weight.std().item() == pytest.approx((2 / (192 * 9)) ** 0.5, rel=0.02)
    head = build_model("resnet18", (3, 8, 8), 10, **NARROW["resnet18"])[-1]
    assert isinstance(head, nn.Linear) and (head.bias == 0).all()


@pytest.mark.parametrize("depth", [4, 12, 27, 29])
def test_wrn_refuses_a_depth_that_is_not_6n_plus_4(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"wrn: model.depth={depth} .*10, 16, 22, 28") as info:
        build_model("wrn", (3, 8, 8), 10, depth=depth)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", IMAGE_NETWORKS)
def test_an_image_network_refuses_1d_data_and_names_the_fix(name: str) -> None:
    with pytest.raises(ValueError) as info:
        build_model(name, (40,), 10)
    message = str(info.value)
    assert message.startswith(f"{name} needs image data (C, H, W)") and "\n" not in message
    assert "use model=mlp or model=cnn1d" in message


@pytest.mark.parametrize(
    ("name", "key"),
    [("wrn", "widen_factor"), ("wrn", "base_width"), ("allcnn", "width"), ("resnet18", "width")],
)
def test_a_size_option_must_be_positive(name: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: model.{key}=0 must be positive$"):
        build_model(name, (3, 8, 8), 10, **{key: 0})
