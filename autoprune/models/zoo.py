"""Built-in models by name, user model factories, and checkpoint loading."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.registry import Registry, import_object

MODELS: Registry = Registry("model")


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


@MODELS.register("mnist_cnn")
class MnistCNN(nn.Module):
    """A small CNN for 1x28x28 digits: two conv-BN-ReLU-pool stages and an MLP head."""

    default_input_shape = (1, 28, 28)

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            *_conv_bn(width, 2 * width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(2 * width * 16, 128)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(torch.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3 stages of basic blocks, widths 16/32/64."""

    default_input_shape = (3, 32, 32)

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise AutopruneError(f"CIFAR ResNet depth must be 6n+2 (got {depth})")
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv_bn(in_channels, width)
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.pool(x).flatten(1))


@MODELS.register("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    return CifarResNet(20, in_channels, num_classes, width)


@MODELS.register("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    return CifarResNet(56, in_channels, num_classes, width)


@MODELS.register("vgg_small")
class VGGSmall(nn.Module):
    """VGG-style network with BatchNorm: conv stages 32-M-64-M-128-128-M-256-256, linear head."""

    default_input_shape = (3, 32, 32)
    cfg: Sequence = (32, "M", 64, "M", 128, 128, "M", 256, 256)

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*_conv_bn(cin, int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(cin, 128)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(torch.relu(self.fc1(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


@MODELS.register("mobilenetv2_small")
class MobileNetV2Small(nn.Module):
    """A narrow MobileNetV2 for 32x32 inputs: inverted residuals with depthwise convs."""

    default_input_shape = (3, 32, 32)
    # (expand, out channels, repeats, stride)
    settings = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, last_channels: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 32), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in self.settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, last_channels, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


# ----------------------------------------------------------------------------------- construction


def build_model(
    name: str | None = None,
    factory: str | None = None,
    kwargs: dict | None = None,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Build a built-in model by ``name`` or call the user's ``factory`` (``pkg.module:function``).

    Built-ins receive ``in_channels``/``num_classes`` from the dataset unless ``kwargs`` sets them.
    """
    kwargs = dict(kwargs or {})
    if name is not None:
        ctor = MODELS.get(name)
        if in_channels is not None:
            kwargs.setdefault("in_channels", in_channels)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        label = f"model {name!r}"
    elif factory is not None:
        ctor = import_object(factory, "model factory")
        label = f"model factory {factory!r}"
    else:
        raise AutopruneError("model: set a built-in name or a factory")
    try:
        model = ctor(**kwargs)
    except AutopruneError:
        raise
    except TypeError as exc:
        raise AutopruneError(f"{label} rejected kwargs {kwargs}: {exc}") from exc
    except Exception as exc:  # the user's code failed: say where, not a traceback (--debug shows it)
        raise AutopruneError(f"{label} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise AutopruneError(f"{label} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def model_from_name(model: str, kwargs: dict | None = None, input_shape: Sequence[int] | None = None,
                    num_classes: int | None = None) -> nn.Module:
    """Build the model named by one string, in eval mode: a built-in name, or a user factory
    ``"package.module:function"`` (what ``--model`` on the command line takes).

    A built-in gets ``in_channels`` from ``input_shape`` and ``num_classes`` unless ``kwargs`` sets
    them; with ``input_shape`` one forward pass checks that the model accepts it.
    """
    name, factory = (None, model) if ":" in model else (model, None)
    built = build_model(name, factory, kwargs, in_channels=int(input_shape[0]) if input_shape else None,
                        num_classes=num_classes)
    if input_shape is not None:
        check_input_shape(built, input_shape)
    return built.eval()


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict (``weights_only=True``) into ``model``; mismatches are user errors."""
    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AutopruneError(
            f"checkpoint {str(path)!r} cannot be read as a state_dict ({type(exc).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AutopruneError(f"checkpoint {str(path)!r} is not a state_dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[0]!r})" for v, what in
                 ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches")) if v]
        raise AutopruneError(
            f"checkpoint {str(path)!r} does not match the model: {', '.join(parts)}; "
            "check model.name/factory and model.kwargs"
        )
    model.load_state_dict(state)
    return model


def check_input_shape(model: nn.Module, input_shape: Sequence[int], num_classes: int | None = None) -> None:
    """Run one forward pass to make sure the model accepts ``input_shape`` and outputs logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise AutopruneError(
            f"the model rejects inputs of shape {list(input_shape)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); set model.input_shape or data.resize/channels"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise AutopruneError("the model must return a (batch, classes) logits tensor")
    if num_classes is not None and out.shape[1] < num_classes:
        raise AutopruneError(
            f"the model outputs {out.shape[1]} classes but the dataset has {num_classes}; "
            "set model.kwargs.num_classes"
        )
