"""The YAML config groups, found by Hydra as ``pkg://elastic_entropy.configs`` (this folder is
linked into the package as ``elastic_entropy/configs`` and shipped inside the wheel)."""
