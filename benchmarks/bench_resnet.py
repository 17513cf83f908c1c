"""Whole-network benchmark: ResNet-50, ResNeXt-50 32x4d, MobileNetV2, MobileNetV3-Large, EfficientNet-B0 or a U-Net
(224x224 RGB) in fp32 against torch.ao's FX static int8 quantization (engine 'x86', oneDNN) and
fastinfer (fuse + w8a8_static), eager and as torch.jit.trace + freeze graphs, timed in the same run.

    PYTHONPATH=. python benchmarks/bench_resnet.py [--model resnet50|resnext50_32x4d|mobilenet_v2|mobilenet_v3_large|
                                                    efficientnet_b0|unet|unet_interp|yolov8n]
                                                   [--threads 2] [--batches 1,8] [--repeats 5] [--json out.json]

The networks are defined here with torchvision's structure and module names, with random weights: no pretrained
checkpoint is bundled.
  resnet50       bottleneck blocks 3-4-6-3, stride in the 3x3 conv; each block ends relu(out + identity)
  resnext50_32x4d  the same blocks with a grouped 3x3 conv: 32 groups of 4, 8, 16 and 32 channels in the four
                 stages (widths 128 ... 1024)
  mobilenet_v2   inverted residual blocks (1x1 expansion, 3x3 depthwise, ReLU6, 1x1 projection), width 1.0;
                 a block's residual add is x + self.conv(x), the projection's output, with no activation
  mobilenet_v3_large  the same blocks with ReLU or Hardswish, 3x3 and 5x5 depthwise, squeeze-excitation
                 (avgpool, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid, channel scale) in 8 of 15 blocks; the
                 residual add is ``result += x``
  efficientnet_b0  MBConv blocks (SiLU, 3x3 and 5x5 depthwise, squeeze-excitation with SiLU and Sigmoid in
                 every block), ``result += x``
  unet           a U-Net for segmentation (not a torchvision model): 5 levels of two conv-BN-ReLU (widths 32 ...
                 512), max pooling down, nearest ``nn.Upsample`` up, each decoder level ``torch.cat([skip, up(x)])``;
                 21 logits per pixel
  unet_interp    the same U-Net, each decoder level upsampling with ``F.interpolate(x, size=skip.shape[-2:],
                 mode="nearest")`` in its forward (as segmentation_models_pytorch's decoder and torchvision's FPN do)
  yolov8n        YOLOv8n's network (ultralytics' structure and widths, 80 classes, no box decoding): Conv modules
                 (conv, BatchNorm, SiLU in a forward of their own), C2f blocks (a 1x1 conv's output chunked in two
                 halves, bottlenecks on the second, all concatenated), SPPF (one max pooling applied three times),
                 a PAN neck (nearest upsampling, concatenations) and the three-level detection head; its output the
                 levels' 144 channels a position, joined. C2f unpacks the chunk (``a, b = ...chunk(2, 1)``), which
                 torch.ao's FX tracer can follow; ultralytics' own ``list(...chunk(2, 1))`` it cannot (fastinfer's
                 tracer can: tests/test_yolo.py)
BatchNorm statistics are set by running the model in training mode over random images, so that every layer sees
unit-scale activations, as in a trained network. Timing and the int8 paths do not depend on the weights' values.
Rows (fp32 input NCHW, logits out, the whole forward timed):
  fp32 NCHW / fp32 channels_last   the float model (BatchNorm unfolded, as users run it)
  torch.ao FX static               prepare_fx -> calibrate -> convert_fx, qconfig mapping 'x86'
  fastinfer                        fastinfer.fuse -> quantize(scheme='w8a8_static') with the same calibration:
                                   int8 hand-offs between convs, residual adds rewritten to int8 (Int8Add),
                                   squeeze-excitation gates to Int8GlobalAvgPool + Int8ChannelScale
  fastinfer, int8_residuals=False  quantize(..., int8_residuals=False): the blocks' forwards as written, so
                                   the residual adds and the stream between blocks stay fp32
  fastinfer, no int8 hand-offs     that model with every conv's out_scale cleared: each conv writes fp32 and
                                   the next one quantizes it again
  torch.ao / fastinfer, jit.trace  the torch.ao and fastinfer models traced (torch.jit.trace on the timed batch)
                                   and frozen (torch.jit.freeze), as one deploys a model without its Python: the
                                   forward runs in TorchScript's interpreter, each op through the dispatcher
                                   (`--no-traced` leaves them out). Their outputs are checked against the eager
                                   models' on the timed batch. "vs ao" compares with eager torch.ao; "vs ao jit"
                                   with the traced torch.ao.
Each round times every row (min-time each) in rotated order; the table gives the median over rounds.
Quality: cosine similarity of each int8 model's logits with fp32's on held-out random images.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import fastinfer

from common import machine_info, time_call, torch_ao_static, write_json


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, groups: int = 1, base_width: int = 64):
        super().__init__()
        cout, width = planes * self.expansion, planes * base_width // 64 * groups  # torchvision's widths
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # shared by the three activations, as in torchvision
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, groups: int = 1, base_width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(cin, planes, stride if i == 0 else 1, groups, base_width))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNeXt50(ResNet50):
    """ResNeXt-50 32x4d: ResNet-50 with 32 groups of base width 4 in every 3x3 conv."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(num_classes, groups=32, base_width=4)


def conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1)]
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, blocks n, first stride s), as in the paper's Table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features, cin = [conv_bn_relu6(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of divisor, at least divisor, never 10% below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act=None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """scale = scale_act(fc2(act(fc1(avgpool(x))))), out = scale * x (torchvision.ops.SqueezeExcitation):
    ReLU and Hardsigmoid in MobileNetV3, SiLU and Sigmoid in EfficientNet."""

    def __init__(self, channels: int, squeeze: int, act=nn.ReLU, scale_act=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = scale_act()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class GatedInvertedResidual(nn.Module):
    """MobileNetV3's and EfficientNet's block: 1x1 expansion (unless hidden == cin), depthwise, squeeze-excitation
    to `squeeze` channels (none when 0), 1x1 projection; ``result += x`` where shapes allow (EfficientNet's
    stochastic depth is the identity in eval mode)."""

    def __init__(self, cin: int, k: int, hidden: int, cout: int, squeeze: int, act, stride: int,
                 se_acts=(nn.ReLU, nn.Hardsigmoid)):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if hidden == cin else [conv_bn_act(cin, hidden, 1, act=act)]
        layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if squeeze:
            layers.append(SqueezeExcitation(hidden, squeeze, *se_acts))
        layers.append(conv_bn_act(hidden, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3Large(nn.Module):
    # (input, kernel, expanded, output, squeeze-excitation, hardswish, stride), as in the paper's Table 1
    SETTINGS = ((16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
                (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
                (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
                (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
                (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features = [conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)]
        for cin, k, hidden, cout, se, hs, s in self.SETTINGS:
            features.append(GatedInvertedResidual(cin, k, hidden, cout, make_divisible(hidden // 4) if se else 0,
                                                  nn.Hardswish if hs else nn.ReLU, s))
        features.append(conv_bn_act(160, 960, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class EfficientNetB0(nn.Module):
    # (expansion, kernel, first stride, input, output, blocks), as in the paper's Table 1
    SETTINGS = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features = [conv_bn_act(3, 32, 3, 2, act=nn.SiLU)]
        for t, k, s, cin, cout, n in self.SETTINGS:
            # MBConv: SiLU; squeeze-excitation on the block's input channels / 4, with SiLU and Sigmoid
            blocks = [GatedInvertedResidual(c, k, c * t, cout, max(1, c // 4), nn.SiLU, s if i == 0 else 1,
                                            (nn.SiLU, nn.Sigmoid)) for i, c in enumerate([cin] + [cout] * (n - 1))]
            features.append(nn.Sequential(*blocks))
        features.append(conv_bn_act(320, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class UNetUp(nn.Module):
    """A U-Net decoder level: nearest 2x upsampling of the level below, joined with the encoder's skip by a
    channel concatenation, then two conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Sequential(conv_bn_act(cin + cskip, cout, 3, act=nn.ReLU),
                                  conv_bn_act(cout, cout, 3, act=nn.ReLU))

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.up(x)], 1))


class UNetUpInterp(UNetUp):
    """A decoder level that upsamples to the skip's size with F.interpolate in its forward."""

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, F.interpolate(x, size=skip.shape[-2:], mode="nearest")], 1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al.) with padded 3x3 convolutions, BatchNorm and nearest upsampling: 5 levels of
    widths 32 ... 512, 2x2 max pooling down, 21 output classes per pixel."""

    def __init__(self, widths=(32, 64, 128, 256, 512), num_classes: int = 21, up=UNetUp):
        super().__init__()

        def double(cin, cout):
            return nn.Sequential(conv_bn_act(cin, cout, 3, act=nn.ReLU), conv_bn_act(cout, cout, 3, act=nn.ReLU))
        self.inc = double(3, widths[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), double(a, b)) for a, b in zip(widths, widths[1:]))
        self.ups = nn.ModuleList(up(b, a, a) for a, b in reversed(list(zip(widths, widths[1:]))))
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


class YoloConv(nn.Module):
    """ultralytics' Conv: conv (no bias), BatchNorm, SiLU, in a forward of its own."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = YoloConv(c, c, 3), YoloConv(c, c, 3), shortcut

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: cv1's output in two halves, n bottlenecks each on the last output, all of them joined by cv2."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = YoloConv(cin, 2 * self.c, 1)
        self.cv2 = YoloConv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        y = [a, b]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        c = cin // 2
        self.cv1, self.cv2, self.m = YoloConv(cin, c, 1), YoloConv(c * 4, cout, 1), nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YOLOv8n(nn.Module):
    """YOLOv8n (width 0.25, depth 0.33): backbone, SPPF, PAN neck, detection head (box 64 + 80 classes a
    position and level), without the box decoding."""

    def __init__(self, nc: int = 80):
        super().__init__()
        self.b0, self.b1, self.b2 = YoloConv(3, 16, 3, 2), YoloConv(16, 32, 3, 2), C2f(32, 32, 1, True)
        self.b3, self.b4 = YoloConv(32, 64, 3, 2), C2f(64, 64, 2, True)
        self.b5, self.b6 = YoloConv(64, 128, 3, 2), C2f(128, 128, 2, True)
        self.b7, self.b8, self.b9 = YoloConv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256)
        self.up = nn.Upsample(None, 2, "nearest")
        self.n12, self.n15 = C2f(384, 128), C2f(192, 64)
        self.n16, self.n18 = YoloConv(64, 64, 3, 2), C2f(192, 128)
        self.n19, self.n21 = YoloConv(128, 128, 3, 2), C2f(384, 256)
        self.box = nn.ModuleList(nn.Sequential(YoloConv(c, 64, 3), YoloConv(64, 64, 3), nn.Conv2d(64, 64, 1))
                                 for c in (64, 128, 256))
        self.cls = nn.ModuleList(nn.Sequential(YoloConv(c, 80, 3), YoloConv(80, 80, 3), nn.Conv2d(80, nc, 1))
                                 for c in (64, 128, 256))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        n12 = self.n12(torch.cat([self.up(p5), p4], 1))
        n15 = self.n15(torch.cat([self.up(n12), p3], 1))
        n18 = self.n18(torch.cat([self.n16(n15), n12], 1))
        n21 = self.n21(torch.cat([self.n19(n18), p5], 1))
        levels = [torch.cat([b(t), c(t)], 1) for b, c, t in zip(self.box, self.cls, (n15, n18, n21))]
        return torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in levels], 2)


MODELS = {"resnet50": ResNet50, "resnext50_32x4d": ResNeXt50, "mobilenet_v2": MobileNetV2, "mobilenet_v3_large": MobileNetV3Large,
          "efficientnet_b0": EfficientNetB0, "unet": UNet, "unet_interp": lambda: UNet(up=UNetUpInterp),
          "yolov8n": YOLOv8n}


def build_model(name: str = "resnet50", seed: int = 0, image_size: int = 224) -> nn.Module:
    """The named model with random weights and BatchNorm statistics estimated on random images (see the docstring)."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the estimation batches
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, image_size, image_size))
    return model.eval().requires_grad_(False)


FP32, FP32_CL, AO, FI = "fp32 NCHW", "fp32 channels_last", "torch.ao FX static (x86)", "fastinfer fuse+w8a8_static"
FI_FP32_RES, FI_UNCHAINED = "fastinfer, int8_residuals=False", "fastinfer, no int8 hand-offs"
AO_JIT, FI_JIT = "torch.ao, jit.trace + freeze", "fastinfer, jit.trace + freeze"


def traced(model: nn.Module, x: torch.Tensor, engine: Optional[str]) -> torch.jit.ScriptModule:
    """model traced on x and frozen: the forward as a TorchScript graph with its weights as constants."""
    if engine:
        torch.backends.quantized.engine = engine
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in the forwards
        return torch.jit.freeze(torch.jit.trace(model, x, check_trace=False).eval())


def build_impls(fp32: nn.Module, calib):
    """name -> (callable taking the NCHW batch, quantized engine or None). Each quantizes its own copy."""
    fp32_cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    impls = {FP32: (fp32, None),
             FP32_CL: (lambda x: fp32_cl(x.contiguous(memory_format=torch.channels_last)), None)}
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        impls[AO] = (torch_ao_static(fp32, calib), "x86")
    fi = fastinfer.quantize(fastinfer.fuse(fp32, example_inputs=calib[0]), scheme="w8a8_static", calib_data=calib)
    impls[FI] = (fi, None)
    fp32_res = fastinfer.quantize(fastinfer.fuse(fp32, example_inputs=calib[0]), scheme="w8a8_static",
                                  calib_data=calib, int8_residuals=False)
    impls[FI_FP32_RES] = (fp32_res, None)
    unchained = copy.deepcopy(fp32_res)
    for m in unchained.modules():
        if isinstance(m, fastinfer.nn.Int8Conv2d):
            m.out_scale = None
    impls[FI_UNCHAINED] = (unchained, None)
    return impls


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    print(f"# {args.model} at {args.image_size}x{args.image_size} | {info['cpu']} | fastinfer ISA {info['isa_active']} | "
          f"threads {args.threads} | torch {info['torch']} | {info['date']}")
    size = args.image_size
    fp32 = build_model(args.model, image_size=size)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, size, size, generator=g) for _ in range(args.calib_batches)]
    held_out = torch.randn(16, 3, size, size, generator=g)
    impls = build_impls(fp32, calib)
    fi_report = impls[FI][0].fastinfer_report
    print(f"# fastinfer: {len(fi_report.swapped)} layers int8, {len(fi_report.chained)} int8 hand-offs, "
          f"{len(fi_report.rewritten)} blocks rewritten (int8 residual adds, squeeze-excitation gates), "
          f"{len(fi_report.skipped)} skipped")

    def call(name, x):
        fn, engine = impls[name]
        if engine:
            torch.backends.quantized.engine = engine
        return fn(x)

    quality = {}
    with torch.inference_mode():
        ref = call(FP32, held_out)
        for name in (AO, FI, FI_FP32_RES, FI_UNCHAINED):
            out = call(name, held_out)
            cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=1)
            top1 = (out.argmax(1) == ref.argmax(1)).float().mean().item()
            quality[name] = {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(), "top1_agree": top1}
    rows = []
    names = list(impls) + ([AO_JIT, FI_JIT] if args.traced else [])
    traced_check = {}
    for n in args.batches:
        x = torch.randn(n, 3, size, size, generator=g)
        if args.traced:  # traced on this batch (a trace may hold its shapes)
            for jit_name, name in ((AO_JIT, AO), (FI_JIT, FI)):
                model, engine = impls[name]
                impls[jit_name] = (traced(model, x, engine), engine)
                with torch.inference_mode():
                    want, got = call(name, x), call(jit_name, x)
                # fastinfer's ops are deterministic: the graph gives the eager bits; torch.ao's close to them
                same = torch.equal(want, got) if name == FI else torch.allclose(want, got, rtol=1e-4, atol=1e-4)
                traced_check[f"{jit_name}, N={n}"] = same
                if not same:
                    raise SystemExit(f"{jit_name} at N={n} does not give the eager model's output")
        per_round = {name: [] for name in names}
        with torch.inference_mode():
            for r in range(args.repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    per_round[name].append(time_call(lambda: call(name, x), min_time_s=args.min_time,
                                                     min_iters=3, warmup=1)["median_ms"])
        for name in names:
            ms = per_round[name]
            rows.append({"model": args.model, "impl": name, "image_size": size, "N": n, "threads": args.threads,
                         "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                         "rounds_ms": ms, "images_per_s": n / (statistics.median(ms) * 1e-3)})
    print(f"\n{'impl':<33} {'N':>2} {'median ms':>10} {'min':>8} {'max':>8} {'img/s':>8} {'vs fp32*':>8} "
          f"{'vs ao':>6} {'vs ao jit':>9}  cos mean / min, top-1 agree")
    for n in args.batches:
        by = {r["impl"]: r for r in rows if r["N"] == n}
        best_fp32 = min(by[FP32]["median_ms"], by[FP32_CL]["median_ms"])
        for name in names:
            r = by[name]
            r["speedup_vs_best_fp32"] = best_fp32 / r["median_ms"]
            r["speedup_vs_torch_ao"] = by[AO]["median_ms"] / r["median_ms"]
            vs_jit = ""
            if AO_JIT in by:
                r["speedup_vs_torch_ao_traced"] = by[AO_JIT]["median_ms"] / r["median_ms"]
                vs_jit = f"{r['speedup_vs_torch_ao_traced']:.2f}x"
            q = quality.get(name)
            qs = f"{q['cos_mean']:.4f} / {q['cos_min']:.4f}, {q['top1_agree']:.2f}" if q else ""
            print(f"{name:<33} {n:>2} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['max_ms']:>8.2f} "
                  f"{r['images_per_s']:>8.1f} {r['speedup_vs_best_fp32']:>7.2f}x {r['speedup_vs_torch_ao']:>5.2f}x "
                  f"{vs_jit:>9}  {qs}")
    print("# fp32* = the faster fp32 layout of the same batch; quality on 16 held-out random images"
          + ("; the traced models give the eager models' outputs on the timed batches" if traced_check else ""))
    return {"machine": info, "rows": rows, "quality": quality, "traced_outputs_match": traced_check,
            "fastinfer_report": {"swapped": len(fi_report.swapped), "chained": fi_report.chained,
                                 "rewritten": fi_report.rewritten,
                                 "skipped": fi_report.skipped}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    p.add_argument("--image-size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds per batch (median over rounds)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per row and round")
    p.add_argument("--calib-batches", type=int, default=4, help="calibration batches of 8 random images")
    p.add_argument("--traced", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the torch.ao and fastinfer models as jit.trace + freeze graphs (default on)")
    p.add_argument("--json", help="write rows, quality and machine info here")
    args = p.parse_args(argv)
    args.batches = [int(v) for v in args.batches.split(",")]
    result = run(args)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
