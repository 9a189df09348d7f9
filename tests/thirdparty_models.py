"""Third-party-style definitions (torchvision-like structure: in-place residual add, downsample
Sequentials, Dropout in a Sequential classifier), written independently of autoprune's built-ins."""
import torch
from torch import nn


class Block(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make(64, 2, 1)
        self.layer2 = self._make(128, 2, 2)
        self.layer3 = self._make(256, 2, 2)
        self.layer4 = self._make(512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make(self, planes, blocks, stride):
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [Block(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [Block(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvRes(nn.Module):
    def __init__(self, inp, oup, stride, t):
        super().__init__()
        hid = inp * t
        self.use_res = stride == 1 and inp == oup
        layers = []
        if t != 1:
            layers += [nn.Conv2d(inp, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(True)]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(True),
                   nn.Conv2d(hid, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, width=1.0):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        inp = 32
        feats = [nn.Sequential(nn.Conv2d(3, inp, 3, 1, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(True))]
        for t, c, n, s in cfg:
            for i in range(n):
                feats.append(InvRes(inp, c, s if i == 0 else 1, t))
                inp = c
        feats.append(nn.Sequential(nn.Conv2d(inp, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(True)))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class VGG11(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512),
                                        nn.ReLU(True), nn.Dropout(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def resnet18(num_classes=10):
    return ResNet18(num_classes)


def mobilenetv2(num_classes=10):
    return MobileNetV2(num_classes)


def vgg11(num_classes=10):
    return VGG11(num_classes)


class ViT(nn.Module):
    """Patch embedding, class token, learned positions, nn.TransformerEncoder (4 heads)."""

    def __init__(self, num_classes=10, dim=64, patch=8, size=32, channels=3):
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.encoder(x)[:, 0])


class ResNeXtish(nn.Module):
    """Grouped 3x3 convs (groups=4) between GroupNorms, a squeeze-excite gate, a dense concat."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.n1 = nn.GroupNorm(4, 32)
        self.c2 = nn.Conv2d(32, 64, 3, 2, 1, groups=4, bias=False)
        self.n2 = nn.GroupNorm(8, 64)
        self.se1, self.se2 = nn.Conv2d(64, 16, 1), nn.Conv2d(16, 64, 1)
        self.c3 = nn.Conv2d(64, 32, 3, 1, 1, bias=False)
        self.n3 = nn.BatchNorm2d(32)
        self.head = nn.Linear(64 + 32, num_classes)

    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(self.c2(x)))
        x = x * torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = torch.cat([x, torch.relu(self.n3(self.c3(x)))], 1)
        return self.head(x.mean((2, 3)))


def vit(num_classes=10):
    return ViT(num_classes)


def resnextish(num_classes=10):
    return ResNeXtish(num_classes)


class TimmStyleViT(nn.Module):
    """timm's attention: one qkv Linear split by reshape(B, N, 3, heads, C // heads), then SDPA."""

    def __init__(self, num_classes=10, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


def timm_style_vit(num_classes=10):
    return TimmStyleViT(num_classes)



def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleV1Block(nn.Module):
    """ShuffleNet (v1)'s unit at stride 1: grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped
    1x1 conv, residual add."""

    def __init__(self, c, mid, groups=4):
        super().__init__()
        self.groups = groups
        self.g1, self.n1 = nn.Conv2d(c, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid)
        self.dw, self.n2 = nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.g2, self.n3 = nn.Conv2d(mid, c, 1, groups=groups, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = channel_shuffle(torch.relu(self.n1(self.g1(x))), self.groups)
        return torch.relu(x + self.n3(self.g2(self.n2(self.dw(y)))))


class ShuffleNetV1ish(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.stage = nn.Sequential(ShuffleV1Block(32, 32), ShuffleV1Block(32, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


def shufflenet_v1ish(num_classes=10):
    return ShuffleNetV1ish(num_classes)
