"""The backbones a trial can build. Every spatial convolution comes from the layer registry (``ConvFactory``), so
any registry layer drops into any backbone; downsampling is the searched ``pooling`` step.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from nas_flex.errors import HyperparameterError
from nas_flex.layers import get as get_layer
from nas_flex.models.common import ConvFactory, make_pool, pooling_plan

__all__ = ["SimpleCNN", "CIFARResNet", "FlexNet", "TCN"]

Conv = Callable[[int, int], nn.Module]


def _head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class SimpleCNN(nn.Module):
    """The 2- and 4-layer CNNs of the N-Jet (Pintea et al., Exp. 4A) and ACONV (Tek et al., Table 1) papers.

    ``depth`` convolutions of ``width`` channels (the first from ``ConvFactory.stem``: a plain convolution for
    layers whose papers keep a spatial stem, NIFF), each conv - BN - ReLU, with the pooling step after every second
    one (``pooling``: one mode for every step, or a list with one per step), then either global average pooling
    and a linear classifier (``head="gap"``, resolution-independent, as the N-Jet scale experiments need) or ACONV's
    dense head (``head="dense"``: flatten, dropout, 256 units, BN, ReLU, dropout, linear; needs ``input_size``).
    """

    def __init__(self, conv: ConvFactory, in_channels: int, num_classes: int, *, width: int = 32, depth: int = 2,
                 pooling: str | list[str] = "max", head: str = "gap", dropout: float = 0.25,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if depth not in (2, 4):
            raise HyperparameterError(f"backbone 'simple' has depth 2 or 4 (the papers' nets), but got {depth=}")
        plan = pooling_plan(pooling, depth // 2, "simple")
        layers: list[nn.Module] = []
        c, downsamples = in_channels, 0
        stem = getattr(conv, "stem", conv)
        for i in range(depth):
            layer = (stem if i == 0 else conv)(c, width)
            layers += [layer, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
            if i % 2 == 1:
                mode = plan[i // 2]
                layers.append(make_pool(mode, c, layer))
                downsamples += mode != "none"
        self.features = nn.Sequential(*layers)
        if head == "gap":
            self.head: nn.Module = _head(c, num_classes)
        elif head == "dense":
            if input_size is None:
                raise HyperparameterError("head='dense' needs the input size (H, W) to size its first dense layer")
            if "safe" in plan:
                raise HyperparameterError("head='dense' needs a fixed feature size; safe-subsampling's varies")
            h, w = input_size
            for _ in range(downsamples):
                h, w = -(-h // 2), -(-w // 2)
            self.head = nn.Sequential(
                nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * h * w, 256), nn.BatchNorm1d(256),
                nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(256, num_classes),
            )
        else:
            raise HyperparameterError(f"`head` must be 'gap' or 'dense', but got {head=!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """conv - BN - ReLU - conv - BN, plus the identity (or a 1x1 projection when the width changes), then ReLU."""

    def __init__(self, conv: Conv, in_channels: int, out_channels: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.conv2, self.bn2 = conv(out_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.bn1(self.conv1(x)).relu())
        out = self.drop(self.bn2(self.conv2(out)))
        return (out + self.shortcut(x)).relu()


class CIFARResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016, Sec. 4.2): depth 6n + 2 (20, 32, 44), three stages of n basic blocks at
    widths w, 2w, 4w (w = 16).

    The stride-2 convolutions that start stages 2 and 3 in the original become the searched ``pooling`` step before
    those stages ("conv": a 2x2 stride-2 convolution; "safe": N-Jet safe-subsampling, as Pintea et al. do for
    N-Jet-ResNet-32), so every registry layer runs at stride 1; a 1x1 projection shortcut widens the channels.
    """

    def __init__(self, conv: ConvFactory, in_channels: int, num_classes: int, *, width: int = 16, depth: int = 20,
                 pooling: str | list[str] = "conv", dropout: float = 0.0) -> None:
        super().__init__()
        if depth not in (20, 32, 44, 56, 110) or (depth - 2) % 6:
            raise HyperparameterError(f"backbone 'resnet' has depth 6n + 2 (20, 32, 44, ...), but got {depth=}")
        n = (depth - 2) // 6
        plan = pooling_plan(pooling, 2, "resnet")
        stem = getattr(conv, "stem", conv)  # ConvFactory.stem: spatial for layers whose papers keep it so (NIFF)
        self.stem = nn.Sequential(stem(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c = width
        for s, mult in enumerate((1, 2, 4)):
            if s > 0:
                previous = stages[-1].conv2 if stages else None  # the last convolution before this step
                stages.append(make_pool(plan[s - 1], c, previous))
            for _ in range(n):
                stages.append(BasicBlock(conv, c, width * mult, dropout=dropout))
                c = width * mult
        self.stages = nn.Sequential(*stages)
        self.head = _head(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


FLEXNET_WIDTHS = (1.0, 1.5, 1.5, 2.0, 2.0)


class FlexNet(nn.Module):
    """FlexNet (Romero et al., 2022, Fig. 10): a stem convolution, then ``depth`` residual FlexBlocks (conv - BN -
    ReLU - dropout, twice, plus the skip), no pooling by default, global average pooling and a linear classifier.

    Block widths are c * (1, 1.5, 1.5, 2, 2), the last repeated for deeper nets (c = ``width``, 22 in the paper,
    24 for FlexNet-16, which has 7 blocks). ``pooling`` other than "none" is placed after blocks 2 and 4 (a list:
    one mode per such step).
    """

    def __init__(self, conv: ConvFactory, in_channels: int, num_classes: int, *, width: int = 22, depth: int = 3,
                 pooling: str | list[str] = "none", dropout: float = 0.2) -> None:
        super().__init__()
        if depth < 1:
            raise HyperparameterError(f"backbone 'flexnet' needs depth >= 1 blocks, but got {depth=}")
        widths = [round(width * FLEXNET_WIDTHS[min(i, len(FLEXNET_WIDTHS) - 1)]) for i in range(depth)]
        sites = [i for i in (1, 3) if i < depth - 1]  # pooling after blocks 2 and 4, where a block follows
        plan = {} if pooling == "none" else dict(zip(sites, pooling_plan(pooling, len(sites), "flexnet")))
        stem = getattr(conv, "stem", conv)  # ConvFactory.stem: spatial for layers whose papers keep it so (NIFF)
        self.stem = nn.Sequential(stem(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            block = BasicBlock(conv, c, w, dropout=dropout)
            blocks.append(block)
            c = w
            if plan.get(i, "none") != "none":
                blocks.append(make_pool(plan[i], c, block.conv2))
        self.blocks = nn.Sequential(*blocks)
        self.head = _head(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


class CausalConv1d(nn.Conv1d):
    """A causal 1-D convolution: output t sees inputs <= t (left zero padding of kernel_size - 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(nn.functional.pad(x, (self.kernel_size[0] - 1, 0)))


class TCNBlock(nn.Module):
    def __init__(self, conv: Conv, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, out_channels), nn.BatchNorm1d(out_channels)
        self.conv2, self.bn2 = conv(out_channels, out_channels), nn.BatchNorm1d(out_channels)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv1d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.bn1(self.conv1(x)).relu())
        out = self.drop(self.bn2(self.conv2(out)))
        return (out + self.shortcut(x)).relu()


class TCN(nn.Module):
    """A residual temporal convolutional network for sequence classification (FlexTCN with conv='flexconv').

    A layer with a 1-D form (``KernelLayer.sequence_layer``: ``flexconv`` gives ``FlexConv1d``, causal, mask
    centred at the last position, ``conv_hparams`` passed on) is built in that form; a fixed-size layer
    (``conv``) becomes a causal ``nn.Conv1d`` of ``kernel_size``. The class is read from the last time step.

    Shape:
        (N, C_in, L) -> (N, num_classes)
    """

    def __init__(self, conv: str, conv_hparams: dict, in_channels: int, num_classes: int, *, width: int = 32,
                 depth: int = 2, kernel_size: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        layer = get_layer(conv)
        sequence = layer.sequence_layer()
        if sequence is not None:

            def make(cin: int, cout: int) -> nn.Module:
                return sequence(cin, cout, **conv_hparams)
        elif not layer.learns_size:  # the fixed-size baseline: a causal nn.Conv1d of kernel_size
            if conv_hparams:
                raise HyperparameterError(
                    f"backbone 'tcn' with conv={conv!r} takes no conv_hparams, got {conv_hparams}")

            def make(cin: int, cout: int) -> nn.Module:
                return CausalConv1d(cin, cout, kernel_size)
        else:
            raise HyperparameterError(f"backbone 'tcn' needs a layer with a 1-D form (KernelLayer.sequence_layer: "
                                      f"flexconv) or a fixed-size one (conv), not {conv!r}")
        if depth < 1:
            raise HyperparameterError(f"backbone 'tcn' needs depth >= 1 blocks, but got {depth=}")
        blocks, c = [], in_channels
        for _ in range(depth):
            blocks.append(TCNBlock(make, c, width, dropout))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x)[:, :, -1])
