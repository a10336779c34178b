"""Writes the ResNet fixtures genie's burn backbone is checked against: torchvision's ResNet-18,
-34 and -50 at width 4 (torchvision's layout and forward, 1/16 of the channels, so the files stay
small), random weights and batch-norm statistics, and PyTorch's pooled features on a fixed input.

    tests/eval/resnet18_w4.pth             a plain state dict (with the fc head)
    tests/eval/resnet34_w4_wrapped.pth     {"state_dict": {"module." + key: ...}} (DataParallel)
    tests/eval/resnet50_w4.safetensors     a plain state dict in safetensors
    tests/eval/resnet_io.safetensors       input [2, 3, 48, 48] and each network's features

By hand, never in CI:
    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch torchvision safetensors
    /tmp/torch/bin/python tests/eval/make_resnet_fixture.py
"""
import pathlib

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

HERE = pathlib.Path(__file__).parent
WIDTH = 4


class NarrowResNet(ResNet):
    """torchvision's ResNet with the first stage's width as a parameter (64 in torchvision)."""

    def __init__(self, block, layers, width):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, 10)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


NETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], torchvision.models.resnet18),
    "resnet34": (BasicBlock, [3, 4, 6, 3], torchvision.models.resnet34),
    "resnet50": (Bottleneck, [3, 4, 6, 3], torchvision.models.resnet50),
}


def randomise(net, gen):
    """Random weights and statistics, so eval-mode batch norm is really exercised."""
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif t.dim() == 1:  # batch-norm weight: small, so features stay of order one
                t.copy_(torch.rand(t.shape, generator=gen) * 0.3 + 0.2)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


gen = torch.Generator().manual_seed(17)
x = torch.randn(2, 3, 48, 48, generator=gen)
io = {"input": x}
for name, (block, layers, full) in NETS.items():
    # The narrow network has exactly torchvision's names and, at width 64, its shapes.
    wide = NarrowResNet(block, layers, 64).state_dict()
    reference = full().state_dict()
    assert {k: v.shape for k, v in wide.items() if not k.startswith("fc.")} == {
        k: v.shape for k, v in reference.items() if not k.startswith("fc.")
    }, name
    net = NarrowResNet(block, layers, WIDTH)
    randomise(net, gen)
    net.eval()
    with torch.no_grad():
        io[name] = net.features(x)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if name == "resnet18":
        torch.save(state, HERE / "resnet18_w4.pth")
    elif name == "resnet34":
        wrapped = {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 90}
        torch.save(wrapped, HERE / "resnet34_w4_wrapped.pth")
    else:
        save_file({k: v for k, v in state.items() if v.dtype.is_floating_point}, HERE / "resnet50_w4.safetensors")
save_file(io, HERE / "resnet_io.safetensors")
print({k: tuple(v.shape) for k, v in io.items()}, "torch", torch.__version__)
