//! torchvision's ResNet-18/34/50 as a burn module whose parameter paths are torchvision's, so a
//! PyTorch state dict loads with one remapping rule (`downsample.0/1`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

/// Which torchvision ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResNetDepth {
    /// ResNet-18 (basic blocks 2-2-2-2).
    R18,
    /// ResNet-34 (basic blocks 3-4-6-3).
    R34,
    /// ResNet-50 (bottleneck blocks 3-4-6-3).
    R50,
}

impl ResNetDepth {
    /// Every depth, in order.
    pub const ALL: [ResNetDepth; 3] = [ResNetDepth::R18, ResNetDepth::R34, ResNetDepth::R50];

    /// Blocks per stage, as in torchvision.
    fn blocks(self) -> [usize; 4] {
        match self {
            ResNetDepth::R18 => [2, 2, 2, 2],
            ResNetDepth::R34 | ResNetDepth::R50 => [3, 4, 6, 3],
        }
    }

    /// Whether the stages use three-convolution bottleneck blocks (ResNet-50) or two-convolution
    /// basic blocks.
    fn bottleneck(self) -> bool {
        self == ResNetDepth::R50
    }

    /// Output channels of a stage's block per unit of its width.
    fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }

    /// The name users type: `resnet18`, `resnet34`, `resnet50`.
    pub fn name(self) -> &'static str {
        match self {
            ResNetDepth::R18 => "resnet18",
            ResNetDepth::R34 => "resnet34",
            ResNetDepth::R50 => "resnet50",
        }
    }
}

/// A backbone name that is not one of [`ResNetDepth::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backbone {0:?}: expected resnet18, resnet34 or resnet50")]
pub struct UnknownDepth(pub String);

impl std::str::FromStr for ResNetDepth {
    type Err = UnknownDepth;
    fn from_str(s: &str) -> Result<Self, UnknownDepth> {
        let wanted = s.to_ascii_lowercase().replace(['-', '_'], "");
        ResNetDepth::ALL
            .into_iter()
            .find(|d| d.name() == wanted)
            .ok_or_else(|| UnknownDepth(s.to_string()))
    }
}

impl std::fmt::Display for ResNetDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A ResNet's shape. `width` is the first stage's channels: 64 in torchvision; smaller widths
/// keep the same layout for tests with small fixtures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Which ResNet.
    pub depth: ResNetDepth,
    /// Channels of the first stage.
    pub width: usize,
}

impl ResNetConfig {
    /// torchvision's network of this depth.
    pub fn torchvision(depth: ResNetDepth) -> Self {
        ResNetConfig { depth, width: 64 }
    }

    /// Length of the pooled feature vector: 512 for ResNet-18/34, 2048 for ResNet-50.
    pub fn feature_dim(&self) -> usize {
        self.width * 8 * self.depth.expansion()
    }

    /// A network with freshly initialised weights (load real ones with
    /// [`load_resnet`](super::load_resnet)). Batch norm uses running statistics whenever the
    /// device is not an autodiff one, which is how the backbone is run: frozen.
    pub fn init(&self, device: &Device) -> ResNet {
        let w = self.width;
        let mut in_channels = w;
        let mut stages = Vec::with_capacity(4);
        for (stage, blocks) in self.depth.blocks().into_iter().enumerate() {
            let planes = w << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let mut layer = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if b == 0 { stride } else { 1 };
                layer.push(Block::new(self.depth, in_channels, planes, stride, device));
                in_channels = planes * self.depth.expansion();
            }
            stages.push(layer);
        }
        let [layer1, layer2, layer3, layer4] =
            <[Vec<Block>; 4]>::try_from(stages).unwrap_or_else(|_| unreachable!("four stages"));
        ResNet {
            conv1: conv(3, w, 7, 2, device),
            bn1: BatchNormConfig::new(w).init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            relu: Relu::new(),
        }
    }
}

/// A bias-free convolution padded to keep the size (at stride 1), as every ResNet convolution.
fn conv(inputs: usize, outputs: usize, kernel: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([inputs, outputs], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}

/// A residual block: basic (two 3×3 convolutions) or bottleneck (1×1, 3×3, 1×1). One struct
/// for both, with the third convolution optional, so the paths stay torchvision's
/// (`layer1.0.conv1.weight`) without enum variant names in them.
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Option<Conv2d>,
    bn3: Option<BatchNorm>,
    downsample: Option<Downsample>,
    relu: Relu,
}

/// The 1×1 projection of a block's input when its shape changes (torchvision's
/// `downsample.0` and `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

impl Block {
    fn new(
        depth: ResNetDepth,
        inputs: usize,
        planes: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        let outputs = planes * depth.expansion();
        let downsample = (stride != 1 || inputs != outputs).then(|| Downsample {
            conv: conv(inputs, outputs, 1, stride, device),
            bn: BatchNormConfig::new(outputs).init(device),
        });
        let bn = |c| BatchNormConfig::new(c).init(device);
        if depth.bottleneck() {
            // torchvision (v1.5) strides the 3×3 convolution, not the first 1×1.
            Block {
                conv1: conv(inputs, planes, 1, 1, device),
                bn1: bn(planes),
                conv2: conv(planes, planes, 3, stride, device),
                bn2: bn(planes),
                conv3: Some(conv(planes, outputs, 1, 1, device)),
                bn3: Some(bn(outputs)),
                downsample,
                relu: Relu::new(),
            }
        } else {
            Block {
                conv1: conv(inputs, planes, 3, stride, device),
                bn1: bn(planes),
                conv2: conv(planes, planes, 3, 1, device),
                bn2: bn(planes),
                conv3: None,
                bn3: None,
                downsample,
                relu: Relu::new(),
            }
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = self.relu.forward(self.bn1.forward(self.conv1.forward(x)));
        let mut out = self.bn2.forward(self.conv2.forward(out));
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            out = bn3.forward(conv3.forward(self.relu.forward(out)));
        }
        self.relu.forward(out + identity)
    }
}

/// torchvision's ResNet up to the global average pool (no classifier head: the evaluation
/// protocols fit their own probe on the pooled features).
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
    layer1: Vec<Block>,
    layer2: Vec<Block>,
    layer3: Vec<Block>,
    layer4: Vec<Block>,
    relu: Relu,
}

impl ResNet {
    /// `[n, 3, h, w]` normalised images → `[n, feature_dim]` pooled features.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self
            .relu
            .forward(self.bn1.forward(self.conv1.forward(images)));
        let mut x = self.maxpool.forward(x);
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        let [n, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([n, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_names_parse_or_are_typed_errors() {
        assert_eq!("ResNet-50".parse::<ResNetDepth>(), Ok(ResNetDepth::R50));
        assert_eq!("resnet_18".parse::<ResNetDepth>(), Ok(ResNetDepth::R18));
        assert_eq!(
            "vgg16".parse::<ResNetDepth>(),
            Err(UnknownDepth("vgg16".into()))
        );
    }
}
