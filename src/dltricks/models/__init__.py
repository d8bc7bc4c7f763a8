"""Model families, one file each, all built by name through the registry.

Importing this package imports every family module so that its ``@register_model`` constructors
are known to :func:`create_model` and :func:`list_models`.
"""

from dltricks.models._registry import (ModelInfo, check_model_options, check_model_size, create_model, list_models,
                                       model_info, register_model)
from dltricks.models._speed import optimize_for_speed

# Families (each import registers its models).
from dltricks.models import simple  # noqa: F401,E402
from dltricks.models import nas_cnn  # noqa: F401,E402
from dltricks.models import airbench  # noqa: F401,E402
from dltricks.models import lenet  # noqa: F401,E402
from dltricks.models import resnet  # noqa: F401,E402
from dltricks.models import mobilenet  # noqa: F401,E402
from dltricks.models import efficientnet  # noqa: F401,E402
from dltricks.models import convnext  # noqa: F401,E402
from dltricks.models import densenet  # noqa: F401,E402
from dltricks.models import vgg  # noqa: F401,E402
from dltricks.models import alexnet  # noqa: F401,E402
from dltricks.models import googlenet  # noqa: F401,E402
from dltricks.models import inception  # noqa: F401,E402
from dltricks.models import xception  # noqa: F401,E402
from dltricks.models import preact_resnet  # noqa: F401,E402
from dltricks.models import wide_resnet  # noqa: F401,E402
from dltricks.models import segmentation  # noqa: F401,E402
from dltricks.models import detection  # noqa: F401,E402
from dltricks.models import mamba, vim, mambaout  # noqa: F401,E402
from dltricks.models import vit, swin, mlp_mixer, transformer, seq2seq, bert  # noqa: F401,E402
from dltricks.models import sngp  # noqa: F401,E402

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model", "optimize_for_speed",
           "check_model_options", "check_model_size"]
