"""Model families. Importing a family module registers its models in timm's registry.

A family module (one file per family, timm's layout) provides: blocks -> model class -> ``checkpoint_filter_fn``
(official keys -> ours) -> ``default_cfgs`` -> ``@register_model`` entry points (including a tiny ``test_*``
variant), and ``from_official(constructor, state_dict=None)`` which builds our equivalent of an official
configuration (used by the parity tests of ``tests/models/test_contract.py``).
"""
from ._builder import build_model, pretrained_tags
from ._registry import ZooPretrainedCfg, generate_default_cfgs, list_models, register_model, suggest_models

# Family modules, one import each (keep sorted); they come after the helpers they import.
from . import dpmamba  # noqa: F401
from . import vim  # noqa: F401
from . import vmamba  # noqa: F401

# Official repository -> family module, for the parity fixtures in ../shared/fixtures/parity/ (their
# ``official_repo`` field). A fixture whose family module exists must be reproduced by it.
FAMILY_OF_OFFICIAL_REPO = {
    "MzeroMiko/VMamba": "vmamba",
    "hustvl/Vim": "vim",
    "EdwardChasel/Spatial-Mamba": "spatial_mamba",
    "cocoalex00/Mamba2D": "mamba2d",
    "YuHengsss/VSSD": "vssd",
    "csguoh/MambaIR": "mambair",
    "xi-j/Mamba-TasNet": "dpmamba",
    "state-spaces/s4": "sashimi",
}

__all__ = [
    "FAMILY_OF_OFFICIAL_REPO",
    "ZooPretrainedCfg",
    "build_model",
    "generate_default_cfgs",
    "list_models",
    "pretrained_tags",
    "register_model",
    "suggest_models",
]
