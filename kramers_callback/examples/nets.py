"""Small convolutional networks for the example data sets.

Both are plain ``Conv → ReLU`` stacks without normalisation layers, so their loss is a
function of the parameters alone (no batch statistics) and every curvature estimate is the
Hessian of the same function the optimizer descends.
"""

from __future__ import annotations

from torch import Tensor, nn

from kramers_callback._validation import check_positive_int


class DigitsCNN(nn.Module):
    """A CNN for the 8×8 images of :func:`sklearn.datasets.load_digits`.

    ``conv3×3(1→c) → ReLU → conv3×3(c→2c) → ReLU → maxpool 2 → linear(32c→h) → ReLU →
    linear(h→classes)``. With the defaults (``c = 8``, ``h = 32``) it has 9 802 parameters and
    reaches about 97% validation accuracy in a few epochs of SGD.

    Args:
        channels: ``c``, channels of the first convolution (the second has ``2c``).
        hidden: ``h``, width of the hidden linear layer.
        num_classes: number of output logits.

    Input: ``[n, 1, 8, 8]``, ``[n, 8, 8]`` or ``[n, 64]``. Output: logits ``[n, num_classes]``.
    """

    def __init__(self, channels: int = 8, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("hidden", hidden)
        check_positive_int("num_classes", num_classes, minimum=2)
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x.reshape(x.shape[0], 1, 8, 8)))


class MNIST1DCNN(nn.Module):
    """A 1-D CNN for MNIST-1D (sequences of length 40), after the authors' ``ConvBase``.

    Three strided convolutions ``conv5(1→c, stride 2) → conv3(c→c, stride 2) →
    conv3(c→c, stride 2)``, each followed by ReLU, take the length 40 → 19 → 10 → 5, then
    ``linear(5c → classes)``. Greydanus & Steinbach (2020, "Scaling down deep learning with
    MNIST-1D") report about 94% test accuracy for this architecture with ``c = 25``.

    Args:
        channels: ``c``.
        num_classes: number of output logits.
        length: input sequence length (40 for the reference data set).

    Input: ``[n, length]`` or ``[n, 1, length]``. Output: logits ``[n, num_classes]``.
    """

    def __init__(self, channels: int = 32, num_classes: int = 10, length: int = 40) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("num_classes", num_classes, minimum=2)
        check_positive_int("length", length, minimum=8)
        self.length = length
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        out_length = length
        for kernel in (5, 3, 3):
            out_length = (out_length + 2 - kernel) // 2 + 1
        self.classifier = nn.Linear(channels * out_length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x.reshape(x.shape[0], 1, self.length)))
