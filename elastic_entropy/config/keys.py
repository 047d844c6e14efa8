"""Keys that no component takes: the composed config's keys against its dataclasses' fields.

Hydra's ``+key=value`` adds a key to a structured config without complaint, and
``OmegaConf.to_object`` sets it as a stray attribute that nothing reads: ``+algorithm.lrr=0.5``
would train with the default lr. One walk over the composed config finds every such key, at any
depth, and names the nearest key that exists (a key added to a dataclass later is known too).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from difflib import get_close_matches

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class UnknownKey:
    key: str  # dotted, as typed: algorithm.lrr
    schema: str  # the dataclass that does not have it: ParleConfig
    siblings: tuple[str, ...]  # the keys that dataclass has
    valid: tuple[str, ...]  # every dotted key of the composed config


_Found = tuple[str, str, tuple[str, ...]]  # the key, its node's dataclass, that one's fields


def _walk(node: DictConfig, prefix: str, valid: list[str], unknown: list[_Found]) -> None:
    schema = OmegaConf.get_type(node)
    if not (is_dataclass(schema) and isinstance(schema, type)):
        return  # a plain dict or list (Hydra's own settings): no schema to hold it to
    # the root's defaults and hydra are Hydra's own, never the user's keys
    names = tuple(f.name for f in fields(schema) if prefix or f.name not in ("defaults", "hydra"))
    valid += [prefix + name for name in names]
    # resolve=False: an interpolation in a value is not evaluated just to read the keys
    for key, value in node.items_ex(resolve=False):
        if not prefix and key in ("defaults", "hydra"):
            continue  # Hydra's node: walked on its own (``unknown_keys(cfg.hydra, "hydra.")``)
        if key not in names:
            unknown.append((prefix + str(key), schema.__name__, names))
        elif isinstance(value, DictConfig):
            _walk(value, f"{prefix}{key}.", valid, unknown)


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[UnknownKey]:
    """The keys of the composed ``cfg`` (a node at ``prefix``, e.g. ``hydra.``) that are no field
    of their node's dataclass."""
    valid: list[str] = []
    unknown: list[_Found] = []
    _walk(cfg, prefix, valid, unknown)
    return [UnknownKey(key, schema, names, tuple(valid)) for key, schema, names in unknown]


def _nearest(found: UnknownKey) -> str | None:
    parent, _, leaf = found.key.rpartition(".")
    prefix = f"{parent}." if parent else ""
    close = get_close_matches(leaf, found.siblings, n=1)
    if close:
        return prefix + close[0]
    if parent:  # a group's key: the group's own keys say more than a namesake elsewhere
        return None
    # a top-level key meant for a group (+batch_size=32 for data.batch_size): a stricter match,
    # the first group in the config's order where two have the leaf (data before flatness)
    leaves: dict[str, str] = {}
    for key in found.valid:
        leaves.setdefault(key.rpartition(".")[2], key)
    close = get_close_matches(leaf, list(leaves), n=1, cutoff=0.8)
    return leaves[close[0]] if close else None


def describe(found: UnknownKey) -> str:
    """One line: the key, where it is missing, and the nearest valid key (or the valid ones)."""
    parent, _, leaf = found.key.rpartition(".")
    nearest = _nearest(found)
    if nearest is not None:
        hint = f"did you mean {nearest}?"
    else:
        where = f"of {parent}" if parent else "at the top level"
        # name is the group's option, chosen as model=mlp rather than set
        keys = [key for key in found.siblings if key != "name"]
        hint = f"the keys {where} are {', '.join(keys)}"
    return f"unknown key {found.key} (Key '{leaf}' not in '{found.schema}'); {hint}"
