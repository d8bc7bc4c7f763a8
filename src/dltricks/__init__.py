"""dltricks: deep-learning tips and tricks as code you can run, measure and trust.

    >>> import dltricks
    >>> model = dltricks.create_model("resnet50")
    >>> dltricks.list_models("resnet*")
"""

from dltricks.errors import DltricksError
from dltricks.models._registry import create_model, list_models, model_info, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "register_model", "DltricksError", "__version__"]
