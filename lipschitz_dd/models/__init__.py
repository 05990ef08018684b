"""Network families of the study, each a LightningModule on the shared :class:`LipschitzModule` base,
plus plain ``build_*`` functions returning ``nn.Module`` for use outside Lightning."""

from lipschitz_dd.models.base import LipschitzModule, per_sample_loss
from lipschitz_dd.models.cnn import CNN, build_cnn
from lipschitz_dd.models.fcn import FCN, build_fcn
from lipschitz_dd.models.imagenet import ResNet50, SimpleViT, build_resnet50, build_simple_vit
from lipschitz_dd.models.resnet import PreActResNet18, build_preact_resnet18
from lipschitz_dd.models.resnet20 import ResNet20, build_resnet20
from lipschitz_dd.models.toy import Toy2DFCN
from lipschitz_dd.models.vit import ViT, build_vit

__all__ = [
    "LipschitzModule",
    "per_sample_loss",
    "FCN",
    "CNN",
    "PreActResNet18",
    "ResNet20",
    "ResNet50",
    "SimpleViT",
    "ViT",
    "Toy2DFCN",
    "build_fcn",
    "build_cnn",
    "build_preact_resnet18",
    "build_resnet20",
    "build_resnet50",
    "build_simple_vit",
    "build_vit",
]
