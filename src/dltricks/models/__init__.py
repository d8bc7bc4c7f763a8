"""Model families, one file each, all built by name through the registry.

Importing this package imports every family module so that its ``@register_model`` constructors
are known to :func:`create_model` and :func:`list_models`.
"""

from dltricks.models._registry import ModelInfo, create_model, list_models, model_info, register_model

# Families (each import registers its models).
from dltricks.models import simple  # noqa: F401,E402
from dltricks.models import lenet  # noqa: F401,E402

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
