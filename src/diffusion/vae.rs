//! The Stable Diffusion VAE, built block by block so that encoding can be deterministic.
//!
//! candle's `AutoEncoderKL::encode` returns a `DiagonalGaussianDistribution` whose mean is private
//! and whose only method draws a random sample. GeNIe (like diffusers' `latent_dist.mode()`)
//! needs the mean. Rather than sampling and trying to undo the noise, we build the encoder and
//! decoder ourselves under diffusers' weight names, and take the first `latent_channels` channels
//! of the moments: exactly the distribution's mean. Building both halves here also means the
//! encoder weights are loaded once, not twice. The blocks are diffusers' `DownEncoderBlock2D` and
//! `UpDecoderBlock2D` (as candle's are) on genie's fused residual block and CPU convolution.
//!
//! The mid-block attention is our own: candle's `AttentionBlock` mixes up the images of a batch
//! larger than one (found by the parity test), and decoding a batch of chains at once matters.

use candle_core::{Module, Result, Tensor, D};
use candle_nn as nn;

use super::conv::Conv2d;

use super::resnet::{ResnetBlock2D, ResnetBlock2DConfig};

use super::config::VaeSpec;

const EPS: f64 = 1e-6;

fn conv3(vb: nn::VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    let cfg = nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    Conv2d::new(cin, cout, 3, cfg, vb)
}

/// Single-head self-attention over pixels with a residual (diffusers' VAE `Attention`).
#[derive(Debug)]
struct PixelAttention {
    norm: nn::GroupNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
}

impl PixelAttention {
    fn new(vb: nn::VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // Checkpoints converted before diffusers 0.14 name these query/key/value/proj_attn.
        let (q, k, v, out) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(PixelAttention {
            norm: nn::group_norm(groups, channels, EPS, vb.pp("group_norm"))?,
            q: nn::linear(channels, channels, vb.pp(q))?,
            k: nn::linear(channels, channels, vb.pp(k))?,
            v: nn::linear(channels, channels, vb.pp(v))?,
            out: nn::linear(channels, channels, vb.pp(out))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.q.forward(&tokens)?.to_dtype(candle_core::DType::F32)?;
        let k = self.k.forward(&tokens)?.to_dtype(candle_core::DType::F32)?;
        let v = self.v.forward(&tokens)?.to_dtype(candle_core::DType::F32)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (c as f64).sqrt())?;
        let probs = nn::ops::softmax_last_dim(&scores)?;
        let attended = probs.matmul(&v)?.to_dtype(xs.dtype())?;
        let out = self
            .out
            .forward(&attended)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, c, h, w))?;
        out + xs
    }
}

/// resnet → attention → resnet, at the lowest resolution of the encoder and the decoder.
#[derive(Debug)]
struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: PixelAttention,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: nn::VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let both = (channels, channels);
        Ok(MidBlock {
            resnet0: resnet(vb.pp("resnets.0"), both, groups)?,
            attention: PixelAttention::new(vb.pp("attentions.0"), channels, groups)?,
            resnet1: resnet(vb.pp("resnets.1"), both, groups)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.resnet0.forward(xs, None)?;
        let xs = self.attention.forward(&xs)?;
        self.resnet1.forward(&xs, None)
    }
}

/// Where a [`Block`] takes the resolution after its residual blocks.
#[derive(Clone, Copy, Debug)]
enum Resample {
    /// A stride-2 convolution with `downsample_padding = 0`: pad right and bottom by one, then
    /// convolve (diffusers' `DownEncoderBlock2D`).
    Down,
    /// Nearest-neighbour ×2, then a convolution (diffusers' `UpDecoderBlock2D`).
    Up,
}

/// Residual blocks, then (except in the last block of each half) a change of resolution: the
/// encoder's down blocks and the decoder's up blocks.
#[derive(Debug)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<(Resample, Conv2d)>,
}

impl Block {
    fn new(
        vb: nn::VarBuilder,
        (c_in, c_out): (usize, usize),
        layers: usize,
        groups: usize,
        resample: Option<Resample>,
    ) -> Result<Self> {
        let resample = resample
            .map(|how| {
                let conv = match how {
                    Resample::Down => {
                        let cfg = nn::Conv2dConfig {
                            stride: 2,
                            ..Default::default()
                        };
                        Conv2d::new(c_out, c_out, 3, cfg, vb.pp("downsamplers.0.conv"))?
                    }
                    Resample::Up => conv3(vb.pp("upsamplers.0.conv"), c_out, c_out)?,
                };
                Result::Ok((how, conv))
            })
            .transpose()?;
        Ok(Block {
            resnets: resnets(vb.pp("resnets"), (c_in, c_out), layers, groups)?,
            resample,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.resample {
            None => Ok(xs),
            Some((Resample::Down, conv)) => conv.forward(
                &xs.pad_with_zeros(D::Minus1, 0, 1)?
                    .pad_with_zeros(D::Minus2, 0, 1)?,
            ),
            Some((Resample::Up, conv)) => {
                let (_, _, h, w) = xs.dims4()?;
                conv.forward(&xs.upsample_nearest2d(2 * h, 2 * w)?)
            }
        }
    }
}

/// The blocks of one half: block `i` goes from `channels[i - 1]` (`channels[0]` for the first) to
/// `channels[i]` and, unless it is the last, resamples as `resample` says.
fn blocks(
    vb: nn::VarBuilder,
    channels: &[usize],
    layers: usize,
    groups: usize,
    resample: Resample,
) -> Result<Vec<Block>> {
    (0..channels.len())
        .map(|i| {
            let c_in = channels[i.saturating_sub(1)];
            let resample = (i + 1 < channels.len()).then_some(resample);
            Block::new(vb.pp(i), (c_in, channels[i]), layers, groups, resample)
        })
        .collect()
}

/// `layers` residual blocks without a timestep embedding, the first from `c_in` channels.
fn resnets(
    vb: nn::VarBuilder,
    (c_in, c_out): (usize, usize),
    layers: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D>> {
    (0..layers)
        .map(|i| resnet(vb.pp(i), (if i == 0 { c_in } else { c_out }, c_out), groups))
        .collect()
}

/// A residual block without a timestep embedding, as every block of the VAE has.
fn resnet(
    vb: nn::VarBuilder,
    (c_in, c_out): (usize, usize),
    groups: usize,
) -> Result<ResnetBlock2D> {
    let cfg = ResnetBlock2DConfig {
        out_channels: Some(c_out),
        temb_channels: None,
        groups,
        groups_out: None,
        eps: EPS,
        use_in_shortcut: None,
        output_scale_factor: 1.0,
    };
    ResnetBlock2D::new(vb, c_in, cfg)
}

/// Encoder + decoder of diffusers' `AutoencoderKL`.
#[derive(Debug)]
pub struct Vae {
    enc_conv_in: Conv2d,
    enc_down: Vec<Block>,
    enc_mid: MidBlock,
    enc_norm_out: nn::GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_up: Vec<Block>,
    dec_norm_out: nn::GroupNorm,
    dec_conv_out: Conv2d,
    latent_channels: usize,
    scaling_factor: f64,
}

impl Vae {
    /// Builds the VAE from weights in diffusers' names.
    pub fn new(vb: nn::VarBuilder, spec: &VaeSpec) -> Result<Self> {
        let ch = &spec.block_out_channels;
        let last = *ch.last().expect("VaeSpec has at least one block");
        let groups = spec.norm_num_groups;
        let lat = spec.latent_channels;

        let e = vb.pp("encoder");
        let enc_conv_in = conv3(e.pp("conv_in"), spec.in_channels, ch[0])?;
        let enc_down = blocks(
            e.pp("down_blocks"),
            ch,
            spec.layers_per_block,
            groups,
            Resample::Down,
        )?;
        let enc_mid = MidBlock::new(e.pp("mid_block"), last, groups)?;
        let enc_norm_out = nn::group_norm(groups, last, EPS, e.pp("conv_norm_out"))?;
        let enc_conv_out = conv3(e.pp("conv_out"), last, 2 * lat)?;

        let quant_conv = spec
            .use_quant_conv
            .then(|| Conv2d::new(2 * lat, 2 * lat, 1, Default::default(), vb.pp("quant_conv")))
            .transpose()?;
        let post_quant_conv = spec
            .use_post_quant_conv
            .then(|| Conv2d::new(lat, lat, 1, Default::default(), vb.pp("post_quant_conv")))
            .transpose()?;

        let d = vb.pp("decoder");
        let dec_conv_in = conv3(d.pp("conv_in"), lat, last)?;
        let dec_mid = MidBlock::new(d.pp("mid_block"), last, groups)?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let layers = spec.layers_per_block + 1;
        let dec_up = blocks(d.pp("up_blocks"), &rev, layers, groups, Resample::Up)?;
        let dec_norm_out = nn::group_norm(groups, ch[0], EPS, d.pp("conv_norm_out"))?;
        let dec_conv_out = conv3(d.pp("conv_out"), ch[0], spec.out_channels)?;

        Ok(Vae {
            enc_conv_in,
            enc_down,
            enc_mid,
            enc_norm_out,
            enc_conv_out,
            quant_conv,
            post_quant_conv,
            dec_conv_in,
            dec_mid,
            dec_up,
            dec_norm_out,
            dec_conv_out,
            latent_channels: lat,
            scaling_factor: spec.scaling_factor,
        })
    }

    /// Images in [-1, 1] (`[B, 3, H, W]`) → scaled latents: the mean of the latent distribution
    /// (diffusers' `mode()`) times the config's `scaling_factor`.
    pub fn encode_mode_scaled(&self, images: &Tensor) -> Result<Tensor> {
        let mut xs = self.enc_conv_in.forward(images)?;
        for block in &self.enc_down {
            xs = block.forward(&xs)?;
        }
        let xs = self.enc_mid.forward(&xs)?;
        let xs = nn::ops::silu(&self.enc_norm_out.forward(&xs)?)?;
        let moments = self.enc_conv_out.forward(&xs)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&moments)?,
            None => moments,
        };
        // Moments are [mean, log-variance] along channels; the mode of a Gaussian is its mean.
        moments.narrow(1, 0, self.latent_channels)? * self.scaling_factor
    }

    /// Scaled latents → images in [-1, 1] (before diffusers' `(x/2 + 0.5).clamp(0, 1)`).
    pub fn decode_scaled(&self, latents: &Tensor) -> Result<Tensor> {
        let xs = (latents / self.scaling_factor)?;
        let xs = match &self.post_quant_conv {
            Some(p) => p.forward(&xs)?,
            None => xs,
        };
        let mut xs = self.dec_mid.forward(&self.dec_conv_in.forward(&xs)?)?;
        for block in &self.dec_up {
            xs = block.forward(&xs)?;
        }
        let xs = nn::ops::silu(&self.dec_norm_out.forward(&xs)?)?;
        self.dec_conv_out.forward(&xs)
    }
}
