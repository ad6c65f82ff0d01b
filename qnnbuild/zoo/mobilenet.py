"""MobileNetV2 (Sandler et al., 2018) in plain torch, with deterministic seeded weights.

No torchvision here (there is no CPU build of it on these machines) and no weight download (builds must
work offline); pass a state_dict checkpoint in the recipe for trained weights. The layer names follow
torchvision's, so its checkpoints load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU(cin, hidden, kernel=1)]
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Any:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        cin, last = _divisible(32 * width), _divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in SETTINGS:
            cout = _divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU(cin, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> Any:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def _init(model: nn.Module, seed: int) -> None:
    """Seeded init, plus BatchNorm statistics that are not the identity, so BN folding has real work."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups
            with torch.no_grad():
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
        elif isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.05, generator=gen)
                if module.running_mean is not None and module.running_var is not None:
                    module.running_mean.normal_(0.0, 0.05, generator=gen)
                    module.running_var.uniform_(0.8, 1.2, generator=gen)
        elif isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.normal_(0.0, 0.01, generator=gen)
                module.bias.zero_()


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0, seed: int = 0) -> nn.Module:
    """MobileNetV2 with weights drawn from `seed`: the same seed gives the same bytes on every machine."""
    model = MobileNetV2(num_classes, width)
    _init(model, seed)
    return model.eval()


def tiny_convnet(seed: int = 0) -> nn.Module:
    """Three conv layers and a classifier head: the size of model the tests build in seconds."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()
