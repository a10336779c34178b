//! diffusers' `ResnetBlock2D` (the residual block of the UNet and of the VAE) with its group
//! norms and SiLUs fused ([`super::fused`]), under candle's weight names and config.
//!
//! candle's block is the same arithmetic in separate operations; this one adds the timestep
//! embedding inside the second norm instead of in a broadcast pass of its own, adds the shortcut
//! while the second convolution writes its output, and skips the division by an output scale of 1.

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;

use super::conv::Conv2d;
pub use candle_transformers::models::stable_diffusion::resnet::ResnetBlock2DConfig;

use super::fused::GroupNormSilu;

/// diffusers' `ResnetBlock2D`: group norm + SiLU + 3×3 convolution twice, the timestep added between, and a 1×1 shortcut when the channels change.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNormSilu,
    conv1: Conv2d,
    norm2: GroupNormSilu,
    conv2: Conv2d,
    time_emb_proj: Option<nn::Linear>,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Builds the block from weights in diffusers' names.
    pub fn new(
        vb: nn::VarBuilder,
        in_channels: usize,
        config: ResnetBlock2DConfig,
    ) -> Result<Self> {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let conv = |cin, cout, k, padding, name: &str| {
            let cfg = nn::Conv2dConfig {
                padding,
                ..Default::default()
            };
            Conv2d::new(cin, cout, k, cfg, vb.pp(name))
        };
        let groups_out = config.groups_out.unwrap_or(config.groups);
        let shortcut = config
            .use_in_shortcut
            .unwrap_or(in_channels != out_channels);
        Ok(ResnetBlock2D {
            norm1: GroupNormSilu::new(
                config.groups,
                in_channels,
                config.eps,
                true,
                vb.pp("norm1"),
            )?,
            conv1: conv(in_channels, out_channels, 3, 1, "conv1")?,
            norm2: GroupNormSilu::new(groups_out, out_channels, config.eps, true, vb.pp("norm2"))?,
            conv2: conv(out_channels, out_channels, 3, 1, "conv2")?,
            time_emb_proj: match config.temb_channels {
                Some(t) => Some(nn::linear(t, out_channels, vb.pp("time_emb_proj"))?),
                None => None,
            },
            conv_shortcut: if shortcut {
                Some(conv(in_channels, out_channels, 1, 0, "conv_shortcut")?)
            } else {
                None
            },
            output_scale_factor: config.output_scale_factor,
        })
    }

    /// `xs` `[n, c, h, w]`; `temb` `[n, temb_channels]` when the block has a time projection.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let h = self.conv1.forward(&self.norm1.forward(xs, None)?)?;
        let shift = match (temb, &self.time_emb_proj) {
            (Some(temb), Some(proj)) => Some(proj.forward(&nn::ops::silu(temb)?)?),
            _ => None,
        };
        let out = self
            .conv2
            .forward_add(&self.norm2.forward(&h, shift.as_ref())?, &shortcut)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
