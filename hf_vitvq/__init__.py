"""hf-vitvq: TiTok-style 1D image tokenizers (ViT-VQ) for the Hugging Face ecosystem.

Importing the package registers `ViTVQConfig`, `ViTVQModel` and `ViTVQImageProcessor` with transformers'
`AutoConfig`, `AutoModel` and `AutoImageProcessor`, and marks them for `trust_remote_code` export, so that
`save_pretrained` writes a folder that loads where `hf_vitvq` is not installed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_vitvq import PRESETS, ViTVQConfig
from .configuration_vitvq_maskgit import ViTVQMaskGITConfig
from .image_processing_vitvq import ViTVQImageProcessor
from .modeling_vitvq import ViTVQModel, ViTVQModelOutput, ViTVQPreTrainedModel
from .modeling_vitvq_maskgit import ViTVQMaskGITModel, ViTVQMaskGITOutput, ViTVQMaskGITPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(ViTVQConfig.model_type, ViTVQConfig, exist_ok=True)
AutoModel.register(ViTVQConfig, ViTVQModel, exist_ok=True)
AutoImageProcessor.register(ViTVQConfig, slow_image_processor_class=ViTVQImageProcessor, exist_ok=True)
# The MaskGIT prior over the tokenizer's ids (the generation pipeline, `hf_vitvq.generation_pipeline`, is imported
# on its own).
AutoConfig.register(ViTVQMaskGITConfig.model_type, ViTVQMaskGITConfig, exist_ok=True)
AutoModel.register(ViTVQMaskGITConfig, ViTVQMaskGITModel, exist_ok=True)

ViTVQConfig.register_for_auto_class()
ViTVQModel.register_for_auto_class("AutoModel")
ViTVQImageProcessor.register_for_auto_class("AutoImageProcessor")
ViTVQMaskGITConfig.register_for_auto_class()
ViTVQMaskGITModel.register_for_auto_class("AutoModel")

__all__ = [
    "PRESETS",
    "ViTVQConfig",
    "ViTVQImageProcessor",
    "ViTVQMaskGITConfig",
    "ViTVQMaskGITModel",
    "ViTVQMaskGITOutput",
    "ViTVQMaskGITPreTrainedModel",
    "ViTVQModel",
    "ViTVQModelOutput",
    "ViTVQPreTrainedModel",
    "__version__",
]
