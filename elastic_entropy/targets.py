"""Your own components, named by ``_target_`` in a config (Hydra's ``instantiate``): a model (any
``nn.Module`` factory), data sets (any map-style ``torch.utils.data.Dataset``) and a loss.

``model/my_net.yaml``::

    _target_: my_package.nets.make_net   # called with the other keys as keyword arguments
    width: 64

A factory that takes ``input_shape`` or ``num_classes`` gets them from the data. A data set's
samples are ``(input, label)`` pairs (tensors or numbers); they are read once into tensors on the
device, where minibatches are taken by index (the path of the built-in data sets), or, when they
are too large to hold or ``data.pipeline=loader`` asks, read through a ``DataLoader`` per replica
(:mod:`elastic_entropy.loaders`). Every mistake is one line naming the component and the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from elastic_entropy.data import DataSplits
from elastic_entropy.loaders import (
    DatasetSplits,
    LoaderOptions,
    dataset_size,
    num_classes_of,
    sample_tensors,
)


def _callable(target: str, what: str) -> Callable[..., Any]:
    from hydra.utils import get_object

    try:
        found = get_object(target)
    except Exception as error:  # ImportError and Hydra's wrappers of it
        cause = error.__cause__ or error
        raise ValueError(
            f"{what}._target_={target}: cannot import it ({str(cause).splitlines()[0]}); "
            "check the dotted path and that its module is on PYTHONPATH"
        ) from error
    if not callable(found):
        raise ValueError(f"{what}._target_={target} is not callable; name a class or a function")
    return found


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: offer nothing
        return False
    kinds = {p.kind for p in parameters.values()}
    return name in parameters or inspect.Parameter.VAR_KEYWORD in kinds


def instantiate(node: dict[str, Any], what: str, **offered: Any) -> Any:
    """``node["_target_"]`` called with the node's other keys, plus those of ``offered`` that
    it takes (by name, or through ``**kwargs``)."""
    target = str(node["_target_"])
    factory = _callable(target, what)
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    kwargs |= {k: v for k, v in offered.items() if k not in kwargs and _accepts(factory, k)}
    try:
        return factory(**kwargs)
    except Exception as error:
        raise ValueError(
            f"{what}._target_={target} failed with {', '.join(sorted(kwargs)) or 'no arguments'}"
            f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"the keys of {what} are passed to it as keyword arguments"
        ) from error


def build_target_model(
    node: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    model = instantiate(node, "model", input_shape=input_shape, num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model._target_={node['_target_']} returned a {type(model).__name__}, not a "
            "torch.nn.Module; return the network itself"
        )
    return model


def check_output(
    model: nn.Module, x: Tensor, num_classes: int, label_shape: tuple[int, ...] = ()
) -> None:
    """One forward of two samples (eval mode, no gradient: nothing of the model changes): the
    logits must be ``[batch, num_classes]``, or ``[batch, T, num_classes]`` for labels of
    shape ``(T,)`` (a next token per position)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as error:
        raise ValueError(
            f"model fails on the data's samples of shape {tuple(x.shape[1:])} "
            f"({type(error).__name__}: {str(error).splitlines()[0]}); choose a model for them"
        ) from error
    finally:
        model.train(was_training)
    wanted = (len(x[:2]), *label_shape, num_classes)
    if not isinstance(out, Tensor) or tuple(out.shape) != wanted:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        positions = "".join(f", {n}" for n in label_shape)
        raise ValueError(
            f"model outputs {shape} for a batch of {len(x[:2])}, but the data has {num_classes} "
            f"classes: its output must be [batch{positions}, {num_classes}] logits"
        )


# ---------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class TargetDatasets:
    """Your data sets as built by their ``_target_`` (``val`` and ``test`` may be None)."""

    train: Any
    val: Any = None
    test: Any = None


def target_datasets(train: Any, val: Any, test: Any) -> TargetDatasets:
    """The data sets named by ``data.train`` (and ``data.val``, ``data.test``), built and checked
    to be map-style data sets whose first sample is an ``(input, label)`` pair."""
    built = {}
    for split, node in (("train", train), ("val", val), ("test", test)):
        if node is not None:
            dataset = instantiate(node, f"data.{split}")
            dataset_size(dataset, split)
            sample_tensors(dataset[0], split, 0)
            built[split] = dataset
    return TargetDatasets(**built)


def _materialise(dataset: Any, split: str) -> tuple[Tensor, Tensor]:
    """Every sample of a map-style data set, stacked: inputs as float32, labels as int64."""
    inputs, labels = [], []
    for index in range(dataset_size(dataset, split)):
        x, label = sample_tensors(dataset[index], split, index)
        inputs.append(x)
        labels.append(label)
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) > 1:
        raise ValueError(
            f"data.{split}: samples of several shapes {sorted(shapes)[:3]}; every input must "
            "have the same shape (resize or pad them in the data set)"
        )
    return torch.stack(inputs), torch.stack(labels)


def target_splits(sets: TargetDatasets, num_classes: int | None) -> DataSplits:
    """Your data sets read once into tensors (without a test set the validation set is
    reported as test, and without either the training set)."""
    x_train, y_train = _materialise(sets.train, "train")
    x_val = y_val = None
    if sets.val is not None:
        x_val, y_val = _materialise(sets.val, "val")
    if sets.test is not None:
        x_test, y_test = _materialise(sets.test, "test")
    elif x_val is not None:
        x_test, y_test = x_val, y_val
    else:
        x_test, y_test = x_train, y_train
    labels = torch.cat([y.flatten() for y in (y_train, y_val, y_test) if y is not None])
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(
            f"data labels run from {int(labels.min())} to {int(labels.max())}, outside "
            f"0..{classes - 1}; set data.num_classes or fix the labels"
        )
    assert y_test is not None
    return DataSplits(
        x_train,
        y_train,
        x_test,
        y_test,
        classes,
        tuple(x_train.shape[1:]),
        x_val=x_val,
        y_val=y_val,
    )


def target_loaders(
    sets: TargetDatasets, num_classes: int | None, device: torch.device, options: LoaderOptions
) -> DatasetSplits:
    """Your data sets read through loaders, never held whole (test as in :func:`target_splits`)."""
    test = sets.test if sets.test is not None else sets.val
    x, _ = sample_tensors(sets.train[0], "train", 0)
    return DatasetSplits(
        train=sets.train,
        test=test if test is not None else sets.train,
        num_classes=num_classes_of(sets.train, num_classes),
        input_shape=tuple(x.shape),
        device=device,
        options=options,
        val=sets.val,
    )
