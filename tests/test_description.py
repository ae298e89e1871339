"""`describe()`: one description of a built model, and the naming contract.

The description must be the same whether the model comes straight from
`build()`, from `prune()`/`inference_model()`, or from a `.keras` file
reloaded in safe mode; and no module outside `keras_unetpp/description.py`
may parse layer names.
"""

import dataclasses
import pathlib
import re

import keras
import pytest

import keras_unetpp
from keras_unetpp import description
from keras_unetpp.errors import InputError

PACKAGE = pathlib.Path(keras_unetpp.__file__).parent


def _reloaded(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def test_describes_a_deep_supervision_unetpp_and_its_reload(tmp_path):
    model = keras_unetpp.build(
        3, (32, 32, 2), num_classes=1, filters=(4, 8, 16, 32), deep_supervision=True
    )
    info = keras_unetpp.describe(model)
    assert info == keras_unetpp.describe(_reloaded(model, tmp_path))
    assert info.architecture == "unetpp"
    assert (info.rank, info.depth, info.heads) == (2, 3, (1, 2, 3))
    assert info.outputs == ("output_l1", "output_l2", "output_l3")
    assert info.deep_supervision and not info.accurate
    assert (info.num_classes, info.channels) == (1, 2)
    assert info.head_activation == "sigmoid" and not info.from_logits
    assert info.normalization == "batch" and info.upsampling == "transpose"
    assert info.filters == (4, 8, 16, 32) and info.convs_per_node == 2
    assert info.encoder == "builtin" and not info.dropout
    assert info.input_shape == (32, 32, 2) and info.stride == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.depth = 2


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            dict(num_classes=3, output_activation=None, normalization="group"),
            dict(num_classes=3, head_activation=None, normalization="group"),
        ),
        (
            dict(num_classes=4, upsampling="resize", normalization="none"),
            dict(head_activation="softmax", upsampling="resize", normalization="none"),
        ),
        (dict(dropout=0.2, convs_per_node=1), dict(dropout=True, convs_per_node=1)),
    ],
    ids=["logits-group", "softmax-resize", "dropout"],
)
def test_options_are_read_back(kwargs, expected, tmp_path):
    model = keras_unetpp.build(2, (None, None, 1), filters=4, **kwargs)
    for candidate in (model, _reloaded(model, tmp_path)):
        info = keras_unetpp.describe(candidate)
        for key, value in expected.items():
            assert getattr(info, key) == value, key
        assert info.from_logits == (info.head_activation is None)
        assert info.outputs == ("output_l2",) and info.output_level == 2


def test_pruned_accurate_and_unet_models():
    model = keras_unetpp.build(3, (None, None, 1), filters=4, deep_supervision=True)
    pruned = keras_unetpp.describe(keras_unetpp.prune(model, 2))
    assert (pruned.depth, pruned.heads, pruned.outputs) == (2, (2,), ("output_l2",))
    assert pruned.stride == 4 and pruned.filters == (4, 8, 16)
    accurate = keras_unetpp.describe(keras_unetpp.inference_model(model))
    assert accurate.accurate and accurate.output_level is None
    assert accurate.heads == (1, 2, 3) and accurate.outputs == ("output_accurate",)
    unet = keras_unetpp.describe(keras_unetpp.build_unet(3, filters=4))
    assert unet.architecture == "unet" and unet.heads == (3,)


def test_a_foreign_model_is_refused():
    inputs = keras.Input((8, 8, 1))
    foreign = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    with pytest.raises(InputError, match="not built by keras_unetpp"):
        keras_unetpp.describe(foreign)
    with pytest.raises(InputError, match="keras.Model"):
        keras_unetpp.describe("model.keras")


def test_names_parse_back_to_their_nodes():
    assert description.parse_node(description.conv_name(2, 1, 2)) == (2, 1)
    assert description.parse_node(description.norm_name(0, 3, 1, "group")) == (0, 3)
    assert description.parse_node(description.up_name(1, 2)) == (1, 2)
    assert description.parse_node(description.up_name(1, 2) + "_resize") == (1, 2)
    assert description.parse_node(description.pool_name(4)) == (4, 0)
    assert description.parse_node(description.concat_name(0, 1)) == (0, 1)
    assert description.parse_node("output_l2") is None
    assert description.parse_head(description.output_name(3)) == 3
    assert description.parse_head(description.logits_name(3)) is None
    model = keras_unetpp.build(2, filters=4, deep_supervision=True)
    # Every layer of a built model is a node's, a head's or the input.
    for layer in model.layers:
        name = layer.name
        assert (
            description.parse_node(name) is not None
            or description.parse_head(name) is not None
            or name in ("image",)
            or re.fullmatch(r"output_l\d+_logits", name)
        ), name


def test_no_other_module_parses_layer_names():
    """The naming contract is read back in description.py only."""
    patterns = [
        r"re\.compile\([^)]*(x_|output_l)",  # regexes over layer names
        r"\[len\(\"output_l\"\):\]",  # slicing a head level out of a name
        r"get_config\(\)\[\"activation\"\]",  # reading the head activation
        r"\.name\.startswith\(\"(x_|output_l)",
    ]
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "description.py":
            continue
        text = path.read_text()
        for pattern in patterns:
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(PACKAGE)}: {pattern}")
    assert not offenders, offenders
