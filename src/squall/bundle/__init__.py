"""Bundles: squall.toml config, safe archive unpacking, content hashing, uv dependency envs."""

from squall.bundle.archive import pack_dir, tree_hash, unpack
from squall.bundle.deps import ensure_env, requirements_key
from squall.bundle.spec import FunctionConfig, config_from_api, parse_config, validate_name

__all__ = [
    "FunctionConfig",
    "config_from_api",
    "ensure_env",
    "pack_dir",
    "parse_config",
    "requirements_key",
    "tree_hash",
    "unpack",
    "validate_name",
]
