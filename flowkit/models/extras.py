"""Optional model libraries: import them on demand, or fail with the pip extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType

from flowkit.errors import ConfigError

# Python module -> pip extra of flowkit that installs it (pyproject [project.optional-dependencies]).
EXTRAS = {"torchvision": "torchvision", "open_clip": "clip", "timm": "timm", "transformers": "transformers"}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise ConfigError naming the extra to install (``pip install flowkit[x]``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise ConfigError(f"this model needs the {module.split('.')[0]!r} package: "
                          f"pip install 'flowkit[{extra}]' ({exc})") from None
